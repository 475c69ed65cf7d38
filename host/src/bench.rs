//! `sluice bench NAME`: one line of figures per benchmark, with the same
//! logic in plain Rust measured in the same run as the baseline.
//!
//! ```text
//! bench=map events=N events_per_cpu_s=X native_events_per_cpu_s=Y ratio=X/Y peak_rss_mb=Z
//! ```
//!
//! Inputs are generated before timing starts (the same batches for both
//! sides), and time is the benchmark thread's CPU time, so the figures are
//! per core. Benchmarks:
//! - `map`: the `uppercase` map UDF over 100-byte records, batches of 1024;
//! - `keyed-count`: the `count` UDF with host state over a Zipf stream of
//!   10,000 distinct keys, through the real keyed operator (grouping into
//!   runs, host state, JSON output).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use sluice_guest::batch::BatchWriter;

use crate::connectors::generator::{Generator, GeneratorConfig};
use crate::job::ErrorPolicy;
use crate::job::spec::Distribution;
use crate::runtime::{Emit, Operator, OperatorMetrics, RecordBatch, TaskError};
use crate::runtime::{KeyedOperator, StatelessOperator};
use crate::state::{DEFAULT_MAX_PARALLELISM, HeapKeyedState, KeyGroupRange};
use crate::tenancy::InstanceLimits;
use crate::time::SystemClock;
use crate::wasm::{GuestInstance, WasmEngine, World};

const BATCH: usize = 1024;

/// Counts what an operator emits.
#[derive(Default)]
struct Sink {
    records: u64,
    bytes: u64,
}

impl Emit for Sink {
    fn emit(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        self.records += batch.len as u64;
        self.bytes += batch.bytes.len() as u64;
        Ok(())
    }
}

/// Push every input batch through `op`; the number of records it emitted.
fn drive(op: &mut dyn Operator, input: &[RecordBatch]) -> anyhow::Result<u64> {
    let mut sink = Sink::default();
    for b in input {
        op.process(b.clone(), &mut sink)?;
    }
    Ok(sink.records)
}

/// CPU time of the calling thread, in seconds (Linux), else wall time.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

fn measure(f: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<(u64, f64)> {
    let (cpu0, wall0) = (thread_cpu_seconds(), Instant::now());
    let n = f()?;
    let secs = match (cpu0, thread_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall0.elapsed().as_secs_f64(),
    };
    Ok((n, secs.max(1e-9)))
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn batches(config: &GeneratorConfig) -> anyhow::Result<Vec<RecordBatch>> {
    use crate::connectors::SourceReader;
    let mut g = Generator::new(config.clone(), 0, 1);
    let mut out = Vec::new();
    while let Some(b) = g.next_batch(BATCH)? {
        out.push(b);
    }
    Ok(out)
}

fn line(name: &str, events: u64, wasm: (u64, f64), native: (u64, f64)) -> anyhow::Result<String> {
    if wasm.0 != native.0 {
        bail!(
            "benchmark {name}: the Wasm path emitted {} records, the native one {}",
            wasm.0,
            native.0
        );
    }
    let x = events as f64 / wasm.1;
    let y = events as f64 / native.1;
    Ok(format!(
        "bench={name} events={events} events_per_cpu_s={x:.0} native_events_per_cpu_s={y:.0} ratio={:.3} peak_rss_mb={:.1}",
        x / y,
        peak_rss_mb()
    ))
}

fn guest(engine: &WasmEngine, udfs: &Path, name: &str, world: World, state: Option<HeapKeyedState>) -> anyhow::Result<GuestInstance> {
    let path = udfs.join(format!("{name}.wasm"));
    let c = engine
        .load_file(&path)
        .with_context(|| format!("loading {} (run scripts/build-udfs first)", path.display()))?;
    Ok(GuestInstance::new(
        &c,
        world,
        name,
        0,
        InstanceLimits::default(),
        Arc::new(SystemClock),
        state,
        "{}",
    )?)
}

/// Run benchmark `name` over `events` records (a default when none).
pub fn run(engine: &Arc<WasmEngine>, name: &str, events: Option<u64>, udfs: &Path) -> anyhow::Result<String> {
    match name {
        "map" => bench_map(engine, events.unwrap_or(5_000_000), udfs),
        "keyed-count" => bench_keyed_count(engine, events.unwrap_or(3_000_000), udfs),
        other => bail!("unknown benchmark `{other}`: choose map or keyed-count"),
    }
}

fn bench_map(engine: &WasmEngine, events: u64, udfs: &Path) -> anyhow::Result<String> {
    let input = batches(&GeneratorConfig {
        count: events,
        keys: None,
        distribution: Distribution::Uniform,
        value_size: 100,
        seed: 1,
    })?;
    let metrics = Arc::new(OperatorMetrics::default());
    let mut op = StatelessOperator::new(
        guest(engine, udfs, "uppercase", World::Stateless, None)?,
        "uppercase",
        0,
        ErrorPolicy::Fail,
        metrics,
    );
    // Warm up (first-call costs, page faults), then measure.
    op.process(input[0].clone(), &mut Sink::default())?;
    let wasm = measure(|| drive(&mut op, &input))?;
    let native = measure(|| {
        let mut sink = Sink::default();
        for b in &input {
            let mut w = BatchWriter::with_capacity(b.bytes.len());
            for r in b.records() {
                w.push(r.key, &r.value.to_ascii_uppercase(), r.timestamp);
            }
            let len = w.len();
            sink.emit(RecordBatch { bytes: w.finish(), len })?;
        }
        Ok(sink.records)
    })?;
    line("map", events, wasm, native)
}

fn bench_keyed_count(engine: &WasmEngine, events: u64, udfs: &Path) -> anyhow::Result<String> {
    let config = GeneratorConfig {
        count: events,
        keys: Some(10_000),
        distribution: Distribution::Zipf,
        value_size: 8,
        seed: 2,
    };
    let input = batches(&config)?;
    let state = HeapKeyedState::new(KeyGroupRange::for_subtask(DEFAULT_MAX_PARALLELISM, 1, 0));
    let metrics = Arc::new(OperatorMetrics::default());
    let g = guest(engine, udfs, "count", World::KeyedProcess, Some(state))?;
    let mut op = KeyedOperator::new(g, "count", 0, ErrorPolicy::Fail, metrics, DEFAULT_MAX_PARALLELISM);
    let wasm = measure(|| drive(&mut op, &input))?;
    let native = measure(|| {
        #[derive(serde::Serialize)]
        struct Update<'a> {
            word: &'a str,
            count: u64,
        }
        let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut sink = Sink::default();
        for b in &input {
            let mut w = BatchWriter::with_capacity(b.bytes.len() * 2);
            for r in b.records() {
                let key = r.key.unwrap_or_default();
                let c = match counts.get_mut(key) {
                    Some(c) => c,
                    None => counts.entry(key.to_vec()).or_insert(0),
                };
                *c += 1;
                let word = std::str::from_utf8(key)?;
                let count = *c;
                w.push_with(Some(key), r.timestamp, |buf| {
                    let _ = serde_json::to_writer(buf, &Update { word, count });
                });
            }
            let len = w.len();
            sink.emit(RecordBatch { bytes: w.finish(), len })?;
        }
        Ok(sink.records)
    })?;
    line("keyed-count", events, wasm, native)
}
