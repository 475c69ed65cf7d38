//! `sluice bench e2e`: the windowed word count end to end, exactly as
//! `sluice run` runs it — a CSV file source (`ts,word`), a hash edge by
//! word, 1-second tumbling event-time windows counted by the
//! `window-count` Wasm aggregate, a JSON-lines file sink — over a file this
//! benchmark writes first with the Zipf generator (10,000 words, 100,000
//! events per event-time second). It prints the CPU time of the whole
//! process (every thread) per event, beside a plain-Rust single-threaded
//! loop that parses the same file and counts the same windows:
//!
//! ```text
//! bench=e2e events=N events_per_cpu_s=X native_events_per_cpu_s=Y ratio=X/Y events_per_wall_s=W
//!     rows=R peak_rss_mb=M native_peak_rss_mb=B
//! ```
//!
//! The peak RSS of each side is the process's high-water mark, reset
//! (`/proc/self/clear_refs`) before each side runs; the file is written
//! before either.

use std::collections::HashMap;
use std::io::{BufRead, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};

use super::process_cpu_seconds;
use crate::connectors::generator::{Generator, GeneratorConfig};
use crate::spec::Distribution;
use crate::wasm::WasmEngine;

/// Distinct words, and events per event-time second.
const WORDS: u64 = 10_000;
const EVENTS_PER_SECOND: u64 = 100_000;

/// What the benchmarks over the word file start from: the `window-count`
/// component and a fresh directory (`sluice-bench-<name>-<pid>`) holding
/// `words.csv` of `events` lines. `measure(dir, csv, component)` runs with
/// them; the directory is removed afterwards, whatever the outcome.
pub(super) fn with_words(
    udfs: &Path,
    name: &str,
    events: u64,
    runs: u32,
    measure: impl FnOnce(&Path, &Path, &Path) -> anyhow::Result<String>,
) -> anyhow::Result<String> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let component = udfs.join("window_count.wasm");
    let component =
        std::fs::canonicalize(&component).with_context(|| format!("{} is missing: run scripts/build-udfs first", component.display()))?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = (|| {
        let csv = dir.join("words.csv");
        write_csv(&csv, events)?;
        measure(&dir, &csv, &component)
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Run it over `events` lines.
pub fn run(engine: &Arc<WasmEngine>, events: u64, udfs: &Path, runs: u32) -> anyhow::Result<String> {
    with_words(udfs, "e2e", events, runs, |dir, csv, component| {
        // Alternately, keeping the best (least CPU) of each side.
        let (mut native, mut sluice) = (measure_native(csv)?, measure_sluice(engine, dir, csv, component, false)?);
        for _ in 1..runs {
            let n = measure_native(csv)?;
            if n.cpu < native.cpu {
                native = n;
            }
            let s = measure_sluice(engine, dir, csv, component, false)?;
            if s.cpu < sluice.cpu {
                sluice = s;
            }
        }
        if sluice.rows != native.rows {
            bail!(
                "the job wrote {} window results, the native loop counted {}",
                sluice.rows,
                native.rows
            );
        }
        let (x, y) = (events as f64 / sluice.cpu, events as f64 / native.cpu);
        Ok(format!(
            "bench=e2e events={events} runs={runs} events_per_cpu_s={x:.0} native_events_per_cpu_s={y:.0} ratio={:.3} events_per_wall_s={:.0} \
             rows={} peak_rss_mb={:.1} native_peak_rss_mb={:.1}",
            x / y,
            events as f64 / sluice.wall,
            sluice.rows,
            sluice.peak_mb,
            native.peak_mb
        ))
    })
}

/// What one side measured.
pub(super) struct Side {
    pub rows: u64,
    pub cpu: f64,
    pub wall: f64,
    pub peak_mb: f64,
}

/// The input: `ts,word` lines from the generator (its keys, `key-<k>`
/// drawn by Zipf, are the words), in event-time order.
fn write_csv(path: &Path, events: u64) -> anyhow::Result<()> {
    use crate::connectors::SourceReader;
    let config = GeneratorConfig {
        count: events,
        keys: Some(WORDS),
        distribution: Distribution::Zipf,
        value_size: 1,
        seed: 7,
        events_per_second: Some(EVENTS_PER_SECOND),
        start_time_ms: 0,
    };
    let mut generator = Generator::new(config, 0, 1);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    while let Some(batch) = generator.next_batch(4096)? {
        for r in batch.records() {
            write!(out, "{},", r.timestamp.unwrap_or(0))?;
            out.write_all(r.key.unwrap_or_default())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Reset the process's peak RSS to its current RSS (Linux).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The plain-Rust loop: read the lines, split each at its comma, count per
/// word in the current 1-second window, and close a window once the input
/// passes it (the file is in event-time order). The number of (word,
/// window) counts is what the job writes.
pub(super) fn measure_native(csv: &Path) -> anyhow::Result<Side> {
    reset_peak_rss();
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    let mut reader = std::io::BufReader::with_capacity(256 << 10, std::fs::File::open(csv)?);
    let mut line = Vec::new();
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    let (mut window, mut rows) = (i64::MIN, 0u64);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let comma = text.iter().position(|b| *b == b',').context("a line without a comma")?;
        let ts: i64 = std::str::from_utf8(&text[..comma])?.parse()?;
        let word = &text[comma + 1..];
        let start = ts.div_euclid(1000) * 1000;
        if start != window {
            rows += counts.len() as u64;
            counts.clear();
            window = start;
        }
        match counts.get_mut(word) {
            Some(c) => *c += 1,
            None => {
                counts.insert(word.to_vec(), 1);
            }
        }
    }
    rows += counts.len() as u64;
    let cpu = (process_cpu_seconds() - cpu0).max(1e-3);
    Ok(Side {
        rows,
        cpu,
        wall: wall0.elapsed().as_secs_f64().max(1e-3),
        peak_mb: super::peak_rss_mb(),
    })
}

/// The job, as `sluice run` would run it (in batch mode with `batch`).
pub(super) fn measure_sluice(engine: &Arc<WasmEngine>, dir: &Path, csv: &Path, component: &Path, batch: bool) -> anyhow::Result<Side> {
    let lit = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let toml = format!(
        r#"
name = "bench-e2e"
mode = "{mode}"
[[sources]]
name = "words"
kind = "file"
path = {csv}
format = "csv"
columns = ["ts", "word"]
key_field = "word"
timestamp_field = "ts"
watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 0, interval_ms = 200 }}
[[operators]]
name = "counts"
kind = "window"
component = {component}
window = {{ assigner = "tumbling", size_ms = 1000, allowed_lateness_ms = 0 }}
[[sinks]]
name = "out"
kind = "file"
path = "out.jsonl"
[[edges]]
from = "words"
to = "counts"
partition = "hash"
[[edges]]
from = "counts"
to = "out"
"#,
        csv = lit(csv),
        component = lit(component),
        mode = if batch { "batch" } else { "streaming" },
    );
    // A run before this one left its output.
    let _ = std::fs::remove_file(dir.join("out.jsonl"));
    let graph = crate::job::JobGraph::build(crate::job::JobSpec::from_toml(&toml)?, dir)?;
    reset_peak_rss();
    let (cpu0, wall0) = (process_cpu_seconds(), Instant::now());
    crate::cluster::run_job(&graph, engine, crate::cluster::RunOptions::default())?.wait()?;
    let cpu = (process_cpu_seconds() - cpu0).max(1e-3);
    let wall = wall0.elapsed().as_secs_f64().max(1e-3);
    let peak_mb = super::peak_rss_mb();
    let out = std::fs::File::open(dir.join("out.jsonl")).context("the job's output")?;
    let rows = std::io::BufReader::new(out).lines().count() as u64;
    Ok(Side { rows, cpu, wall, peak_mb })
}
