//! `sluice bench NAME`: one line of figures per benchmark, with the same
//! logic in plain Rust measured in the same run as the baseline.
//!
//! ```text
//! bench=map events=N events_per_cpu_s=X native_events_per_cpu_s=Y ratio=X/Y events_per_wall_s=W peak_rss_mb=Z
//! ```
//!
//! Inputs are generated before timing starts (the same batches for both
//! sides), and time is the benchmark thread's CPU time, so the figures are
//! per core. Benchmarks:
//! - `map`: the `uppercase` map UDF over 100-byte records, batches of 1024;
//! - `keyed-count`: the `count` UDF with host state over a Zipf stream of
//!   10,000 distinct keys, through the real keyed operator (grouping into
//!   runs, host state, JSON output);
//! - `window-count`: 1-second tumbling event-time windows counting words
//!   with the `window-count` aggregate UDF (accumulators in host state,
//!   timers, firing on watermarks) over a Zipf stream of 10,000 distinct
//!   words, 100,000 per event-time second. Its input is generated on another
//!   thread while it runs, so memory shows the engine's, not the input's.
//! - `checkpoint`: snapshot size, time to take (the synchronous copy, then
//!   the asynchronous compress + write) and to restore (read, verify,
//!   decode, rebuild) 1,000,000 keys of keyed state; then the keyed count
//!   job (generator → `count` UDF → file sink) with a checkpoint every
//!   second and without, in events per CPU-second of the whole process.
//! - `shuffle`: a hash-partitioned keyed count at parallelism 2 in this
//!   process and across two TaskManager processes ([`shuffle`]).
//! - `kafka`: a Kafka source into a discard sink against a tansu broker,
//!   beside a plain rdkafka consumer loop ([`kafka`]).
//! - `e2e`: the windowed word count from a CSV file as `sluice run` runs it,
//!   CPU time of the whole process, beside a plain-Rust loop over the same
//!   file ([`e2e`]).
//! - `batch`: the same bounded job in streaming and in batch mode, events
//!   per CPU-second and peak RSS of each ([`batch`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use sluice_guest::batch::BatchWriter;

mod batch;
mod e2e;
mod kafka;
mod shuffle;

use crate::connectors::generator::{Generator, GeneratorConfig};
use crate::job::ErrorPolicy;
use crate::operator::GuestOutputs;
use crate::operator::{KeyedOperator, StatelessOperator, WindowFunction, WindowOperator};
use crate::runtime::{Emit, Operator, OperatorMetrics, RecordBatch, TaskError};
use crate::spec::{BuiltinAggregate, Distribution};
use crate::state::{DEFAULT_MAX_PARALLELISM, HeapKeyedState, KeyGroupRange};
use crate::tenancy::InstanceLimits;
use crate::time::{SystemClock, TimeDomain};
use crate::wasm::{GuestEnv, GuestInstance, WasmEngine, World};
use crate::window::{Assigner, Builtin, Trigger, TriggerKind, WindowConfig};

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

    fn emit_late(&mut self, _batch: RecordBatch) -> Result<(), TaskError> {
        Ok(())
    }

    fn has_late_output(&self) -> bool {
        false
    }

    fn watermark(&mut self, _watermark: i64) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Push every input batch through `op`; the number of records it emitted.
fn drive(op: &mut dyn Operator, input: &[RecordBatch]) -> anyhow::Result<u64> {
    let mut sink = Sink::default();
    for b in input {
        op.process(0, b.clone(), &mut sink)?;
    }
    Ok(sink.records)
}

/// Batches of `config` generated on another thread (so neither their cost
/// nor their memory counts), at most a few in flight.
fn stream(config: &GeneratorConfig) -> crossbeam_channel::Receiver<RecordBatch> {
    use crate::connectors::SourceReader;
    let (tx, rx) = crossbeam_channel::bounded(16);
    let mut g = Generator::new(config.clone(), 0, 1);
    std::thread::spawn(move || {
        while let Ok(Some(b)) = g.next_batch(BATCH) {
            if tx.send(b).is_err() {
                break;
            }
        }
    });
    rx
}

/// CPU time of the calling thread, in seconds (Linux), else wall time.
fn thread_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Run `f` (which returns how many records it emitted): the count, the
/// thread's CPU seconds, and wall seconds.
fn measure(f: impl FnOnce() -> anyhow::Result<u64>) -> anyhow::Result<(u64, f64, f64)> {
    let (cpu0, wall0) = (thread_cpu_seconds(), Instant::now());
    let n = f()?;
    let wall = wall0.elapsed().as_secs_f64();
    let secs = match (cpu0, thread_cpu_seconds()) {
        (Some(a), Some(b)) => b - a,
        _ => wall,
    };
    Ok((n, secs.max(1e-9), wall.max(1e-9)))
}

fn peak_rss_mb() -> f64 {
    crate::tenancy::process_status_kb("VmHWM").map_or(0.0, |kb| kb as f64 / 1024.0)
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

fn line(name: &str, events: u64, wasm: (u64, f64, f64), native: (u64, f64, f64)) -> anyhow::Result<String> {
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
        "bench={name} events={events} events_per_cpu_s={x:.0} native_events_per_cpu_s={y:.0} ratio={:.3} events_per_wall_s={:.0} peak_rss_mb={:.1}",
        x / y,
        events as f64 / wasm.2,
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
        &GuestEnv {
            limits: InstanceLimits::default(),
            clock: Arc::new(SystemClock),
            meter: None,
            logs: None,
        },
        state,
        "{}",
    )?)
}

/// Run benchmark `name` over `events` records (a default when none);
/// `runs`: how many times `e2e` runs each side (it reports the best).
pub fn run(engine: &Arc<WasmEngine>, name: &str, events: Option<u64>, udfs: &Path, runs: u32) -> anyhow::Result<String> {
    match name {
        "map" => bench_map(engine, events.unwrap_or(5_000_000), udfs),
        "keyed-count" => bench_keyed_count(engine, events.unwrap_or(3_000_000), udfs),
        "window-count" => bench_window_count(engine, events.unwrap_or(10_000_000), udfs),
        "checkpoint" => bench_checkpoint(engine, events.unwrap_or(3_000_000), udfs),
        "shuffle" => shuffle::run(engine, events.unwrap_or(3_000_000), udfs),
        "kafka" => kafka::run(engine, events.unwrap_or(1_000_000)),
        "e2e" => e2e::run(engine, events.unwrap_or(10_000_000), udfs, runs),
        "batch" => batch::run(engine, events.unwrap_or(5_000_000), udfs, runs),
        "nexmark" => bail!("`nexmark` takes `--query`: one of {}", crate::queries::QUERIES.join(", ")),
        other => {
            bail!("unknown benchmark `{other}`: choose map, keyed-count, window-count, checkpoint, shuffle, kafka, e2e, batch or nexmark")
        }
    }
}

fn bench_map(engine: &WasmEngine, events: u64, udfs: &Path) -> anyhow::Result<String> {
    let input = batches(&GeneratorConfig {
        count: events,
        keys: None,
        distribution: Distribution::Uniform,
        value_size: 100,
        seed: 1,
        events_per_second: None,
        start_time_ms: 0,
    })?;
    let metrics = Arc::new(OperatorMetrics::default());
    let mut op = StatelessOperator::new(
        guest(engine, udfs, "uppercase", World::Stateless, None)?,
        GuestOutputs::new("uppercase", 0, ErrorPolicy::Fail, metrics),
    );
    // Warm up (first-call costs, page faults), then measure.
    op.process(0, input[0].clone(), &mut Sink::default())?;
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
        events_per_second: None,
        start_time_ms: 0,
    };
    let input = batches(&config)?;
    let state = HeapKeyedState::new(KeyGroupRange::for_subtask(DEFAULT_MAX_PARALLELISM, 1, 0));
    let metrics = Arc::new(OperatorMetrics::default());
    let g = guest(engine, udfs, "count", World::KeyedProcess, Some(state))?;
    let mut op = KeyedOperator::new(
        g,
        GuestOutputs::new("count", 0, ErrorPolicy::Fail, metrics),
        DEFAULT_MAX_PARALLELISM,
    );
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

fn bench_window_count(engine: &WasmEngine, events: u64, udfs: &Path) -> anyhow::Result<String> {
    let config = GeneratorConfig {
        count: events,
        keys: Some(10_000),
        distribution: Distribution::Zipf,
        value_size: 1,
        seed: 3,
        events_per_second: Some(100_000),
        start_time_ms: 0,
    };
    let cfg = WindowConfig {
        assigner: Assigner::Tumbling { size: 1000, offset: 0 },
        time: TimeDomain::EventTime,
        trigger: Trigger {
            kind: TriggerKind::Time(TimeDomain::EventTime),
            purging: false,
        },
        allowed_lateness: 0,
    };
    let operator = |function| {
        WindowOperator::new(
            cfg,
            function,
            HeapKeyedState::new(KeyGroupRange::for_subtask(DEFAULT_MAX_PARALLELISM, 1, 0)),
            Arc::new(SystemClock),
            DEFAULT_MAX_PARALLELISM,
            GuestOutputs::new("window-count", 0, ErrorPolicy::Fail, Arc::new(OperatorMetrics::default())),
        )
    };
    // Watermarks as a monotonous source emits them: after each batch.
    let run = |op: &mut WindowOperator| {
        let input = stream(&config);
        measure(|| {
            let mut sink = Sink::default();
            for b in input {
                let max = b.records().filter_map(|r| r.timestamp).max();
                op.process(0, b, &mut sink)?;
                if let Some(m) = max {
                    op.on_watermark(m - 1, &mut sink)?;
                }
            }
            op.on_watermark(i64::MAX, &mut sink)?;
            Ok(sink.records)
        })
    };
    let g = guest(engine, udfs, "window_count", World::WindowAggregate, None)?;
    let wasm = run(&mut operator(WindowFunction::Aggregate(g))?)?;
    // The host's own share: the same operator with the built-in count.
    let builtin = run(&mut operator(WindowFunction::Builtin(Builtin {
        kind: BuiltinAggregate::Count,
        field: None,
    }))?)?;
    let input = stream(&config);
    let native = measure(|| {
        #[derive(serde::Serialize)]
        struct Count<'a> {
            word: &'a str,
            start: i64,
            end: i64,
            count: u64,
        }
        let mut windows: std::collections::BTreeMap<i64, HashMap<Vec<u8>, u64>> = Default::default();
        let mut sink = Sink::default();
        let fire = |windows: &mut std::collections::BTreeMap<i64, HashMap<Vec<u8>, u64>>, wm: i64, sink: &mut Sink| -> anyhow::Result<()> {
            while let Some(entry) = windows.first_entry() {
                let start = *entry.key();
                if start + 999 > wm {
                    break;
                }
                let counts = entry.remove();
                let mut w = BatchWriter::new();
                for (key, count) in &counts {
                    let word = std::str::from_utf8(key)?;
                    w.push_with(Some(key), Some(start + 999), |buf| {
                        let _ = serde_json::to_writer(
                            buf,
                            &Count {
                                word,
                                start,
                                end: start + 1000,
                                count: *count,
                            },
                        );
                    });
                }
                let len = w.len();
                sink.emit(RecordBatch { bytes: w.finish(), len })?;
            }
            Ok(())
        };
        for b in input {
            let mut max = None;
            for r in b.records() {
                let t = r.timestamp.unwrap_or_default();
                max = max.max(Some(t));
                let key = r.key.unwrap_or_default();
                let counts = windows.entry(t - t.rem_euclid(1000)).or_default();
                match counts.get_mut(key) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(key.to_vec(), 1);
                    }
                }
            }
            if let Some(m) = max {
                fire(&mut windows, m - 1, &mut sink)?;
            }
        }
        fire(&mut windows, i64::MAX - 1000, &mut sink)?;
        Ok(sink.records)
    })?;
    Ok(format!(
        "{} host_builtin_events_per_cpu_s={:.0}",
        line("window-count", events, wasm, native)?,
        events as f64 / builtin.1
    ))
}

/// CPU time of the whole process (all threads, also those that ended),
/// in seconds, to the microsecond (`getrusage`).
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn bench_checkpoint(engine: &Arc<WasmEngine>, events: u64, udfs: &Path) -> anyhow::Result<String> {
    use crate::checkpoint::format::{encode_file, restore_keyed};
    use crate::checkpoint::storage::{CheckpointStorage, state_file_name};
    use crate::checkpoint::{DecodedSnapshot, SnapshotWriter};
    use crate::state::KeyGroup;

    const KEYS: u64 = 1_000_000;
    let dir = std::env::temp_dir().join(format!("sluice-bench-checkpoint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let range = KeyGroupRange::for_subtask(DEFAULT_MAX_PARALLELISM, 1, 0);
    let mut state = HeapKeyedState::new(range);
    let id = state.declare("count")?;
    for i in 0..KEYS {
        let key = format!("key-{i}");
        state.put(
            KeyGroup::of(key.as_bytes(), DEFAULT_MAX_PARALLELISM),
            key.as_bytes(),
            id,
            b"",
            &i.to_le_bytes(),
        )?;
    }
    let t = Instant::now();
    let mut w = SnapshotWriter::new();
    w.keyed_state(&state);
    let payload = w.finish();
    let sync_ms = t.elapsed().as_secs_f64() * 1e3;
    let raw_bytes = payload.len();
    let t = Instant::now();
    let storage = CheckpointStorage::open(&dir)?;
    let file = encode_file(&payload);
    let handle = storage.write_state("chk-00000001", &state_file_name("count", 0), 0, &file)?;
    let async_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let bytes = std::fs::read(dir.join("chk-00000001").join(&handle.file))?;
    use sha2::Digest;
    if hex::encode(sha2::Sha256::digest(&bytes)) != handle.sha256 {
        bail!("checksum mismatch reading back the snapshot");
    }
    let decoded = Arc::new(DecodedSnapshot::decode(&bytes)?);
    let mut restored = HeapKeyedState::new(range);
    restore_keyed(&[decoded], range, &mut restored, None)?;
    let restore_ms = t.elapsed().as_secs_f64() * 1e3;
    if restored.key_count() as u64 != KEYS {
        bail!("restored {} keys of {KEYS}", restored.key_count());
    }
    drop((state, restored, payload, file, bytes));

    let count = std::path::absolute(udfs.join("count.wasm"))?;
    let job = |checkpoints: bool| {
        let ck = if checkpoints {
            format!(
                "[checkpoints]\ninterval_ms = 1000\ndir = {:?}\n",
                dir.join("job").display().to_string()
            )
        } else {
            String::new()
        };
        format!(
            r#"name = "bench-checkpoint"
{ck}
[[sources]]
name = "gen"
kind = "generator"
count = {events}
keys = 10000
distribution = "zipf"
value_size = 8
[[operators]]
name = "count"
kind = "keyed-process"
component = {count:?}
[[sinks]]
name = "out"
kind = "file"
path = {out:?}
[[edges]]
from = "gen"
to = "count"
partition = "hash"
[[edges]]
from = "count"
to = "out"
"#,
            count = count.display().to_string(),
            out = dir.join(if checkpoints { "out-ckpt" } else { "out.jsonl" }).display().to_string(),
        )
    };
    let rate = |checkpoints: bool| -> anyhow::Result<(f64, u64)> {
        let graph = crate::job::JobGraph::build(crate::job::JobSpec::from_toml(&job(checkpoints))?, &dir)?;
        let cpu = process_cpu_seconds();
        let summary = crate::cluster::run_job(&graph, engine, crate::cluster::RunOptions::default())?.wait()?;
        let secs = (process_cpu_seconds() - cpu).max(1e-3);
        let out = summary.metrics.iter().find(|m| m.name == "count").map_or(0, |m| m.records_out());
        if out != events {
            bail!("the keyed count emitted {out} updates for {events} events");
        }
        Ok((events as f64 / secs, summary.checkpoints))
    };
    let (plain, _) = rate(false)?;
    let (with, checkpoints) = rate(true)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(format!(
        "bench=checkpoint keys={KEYS} snapshot_bytes={} raw_bytes={} take_sync_ms={sync_ms:.0} take_async_ms={async_ms:.0} restore_ms={restore_ms:.0} \
         events={events} events_per_cpu_s_no_checkpoints={plain:.0} events_per_cpu_s_checkpoint_1s={with:.0} checkpoints={checkpoints} slowdown_pct={:.1} peak_rss_mb={:.1}",
        handle.bytes,
        raw_bytes,
        (1.0 - with / plain) * 100.0,
        peak_rss_mb()
    ))
}

/// `sluice bench nexmark --query Q`: the query's job (source, UDFs, a
/// discarding sink, all at parallelism 1) in events per CPU-second of the
/// whole process, generator included; then the reference implementation
/// over the same events, per CPU-second of its thread, generator included.
/// Both must produce the same number of rows. With `runs` > 1 they take
/// turns, and the best run of each counts.
pub fn nexmark(engine: &Arc<WasmEngine>, query: &str, events: u64, runs: u32, udfs: &Path) -> anyhow::Result<String> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("sluice-bench-nexmark-{}", std::process::id()));
    // The spec's paths are relative to its directory: give it absolute ones.
    let udfs = &std::path::absolute(udfs)?;
    let toml = crate::queries::job_toml(query, events, 1, udfs, "kind = \"discard\"")?;
    let graph = crate::job::JobGraph::build(crate::job::JobSpec::from_toml(&toml)?, &dir)?;
    // Compile (or load from the cache) before the clock starts.
    graph.load_components(engine).with_context(|| {
        format!(
            "loading the components of {query} from {} (run scripts/build-udfs first)",
            udfs.display()
        )
    })?;
    let settings = crate::connectors::NexmarkSettings {
        count: events,
        events_per_second: 10_000,
        start_time_ms: 0,
    };
    let (mut sluice_cpu, mut sluice_wall, mut reference_cpu) = (f64::MAX, f64::MAX, f64::MAX);
    let (mut rows, mut sluice_peak) = (0, 0.0);
    for run in 0..runs {
        let (cpu, wall) = (process_cpu_seconds(), Instant::now());
        let summary = crate::cluster::run_job(&graph, engine, crate::cluster::RunOptions::default())?.wait()?;
        sluice_cpu = sluice_cpu.min((process_cpu_seconds() - cpu).max(1e-3));
        sluice_wall = sluice_wall.min(wall.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&dir);
        rows = summary.metrics.iter().find(|m| m.name == "out").map_or(0, |m| m.records_in());
        if run == 0 {
            // The process's peak so far is the job's: the reference runs after it.
            sluice_peak = peak_rss_mb();
        }
        let (reference_rows, cpu, _) = measure(|| crate::queries::reference(query, &settings, &mut |_| {}))?;
        reference_cpu = reference_cpu.min(cpu);
        if rows != reference_rows {
            bail!("nexmark {query}: Sluice emitted {rows} rows, the reference {reference_rows}");
        }
    }
    let x = events as f64 / sluice_cpu;
    let y = events as f64 / reference_cpu;
    Ok(format!(
        "bench=nexmark query={query} events={events} runs={runs} rows={rows} events_per_cpu_s={x:.0} reference_events_per_cpu_s={y:.0} ratio={:.3} \
         sluice_cpu_s={sluice_cpu:.2} sluice_wall_s={sluice_wall:.2} sluice_peak_rss_mb={sluice_peak:.1} peak_rss_mb={:.1}",
        x / y,
        peak_rss_mb()
    ))
}
