//! Checkpoints and exactly-once recovery: the process killed with SIGKILL at
//! random moments, a guest trap, rescaling through a savepoint, damaged
//! checkpoints, repartitioning, at-least-once mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice::checkpoint::coordinator::request_savepoint;
use sluice::checkpoint::format::restore_keyed;
use sluice::checkpoint::{DecodedSnapshot, SnapshotWriter};
use sluice::job::{JobGraph, JobSpec};
use sluice::runtime::{Restore, RunOptions, run_job};
use sluice::state::{HeapKeyedState, KeyGroup, KeyGroupRange};

use crate::harness::{engine, lit, root, run_toml, sluice_bin, temp_dir, udf};

/// Every committed line under `dir` (files named `part-*.jsonl`), sorted.
pub(crate) fn committed(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("part-") && name.ends_with(".jsonl") {
                let text = std::fs::read_to_string(e.path()).unwrap();
                lines.extend(text.lines().map(str::to_owned));
            }
        }
    }
    lines.sort();
    lines
}

/// The keyed word count: lines → tokenize (2) → count (`count_par`) → out.
pub(crate) fn wordcount_job(name: &str, rate: u64, count_par: u32, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
restart = {{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }}
[checkpoints]
interval_ms = 100
dir = "ckpt"
{extra}
[[sources]]
name = "lines"
kind = "file"
path = {data}
records_per_second = {rate}
[[operators]]
name = "tokenize"
kind = "flat-map"
component = {tokenize}
parallelism = 2
[[operators]]
name = "count"
kind = "keyed-process"
component = {count}
parallelism = {count_par}
[[sinks]]
name = "out"
kind = "file"
path = "out"
parallelism = 2
[[edges]]
from = "lines"
to = "tokenize"
partition = "rebalance"
[[edges]]
from = "tokenize"
to = "count"
partition = "hash"
[[edges]]
from = "count"
to = "out"
"#,
        data = lit(&root().join("examples/data/wordcount.txt")),
        tokenize = lit(&udf("tokenize")),
        count = lit(&udf("count")),
    )
}

/// The windowed word count of the examples, with checkpoints.
fn windowed_job(rate: u64) -> String {
    format!(
        r#"
name = "windowed-crash"
[checkpoints]
interval_ms = 100
dir = "ckpt"
[[sources]]
name = "words"
kind = "file"
path = {data}
format = "csv"
columns = ["ts", "word"]
key_field = "word"
timestamp_field = "ts"
records_per_second = {rate}
watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 500, interval_ms = 50 }}
[[operators]]
name = "counts"
kind = "window"
component = {window_count}
parallelism = 2
window = {{ assigner = "tumbling", size_ms = 1000 }}
[[sinks]]
name = "out"
kind = "file"
path = "out"
[[sinks]]
name = "late"
kind = "file"
path = "late"
format = "envelope"
[[edges]]
from = "words"
to = "counts"
partition = "hash"
[[edges]]
from = "counts"
to = "out"
[[edges]]
from = "counts"
to = "late"
output = "late"
"#,
        data = lit(&root().join("examples/data/timestamped-words.csv")),
        window_count = lit(&udf("window_count")),
    )
}

/// A small xorshift generator: the tests print their seed.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        eprintln!("random seed {seed}");
        Rng(seed)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn spawn(spec: &Path, restore: bool) -> Child {
    let mut cmd = Command::new(sluice_bin());
    cmd.arg("run").arg(spec).arg("--quiet");
    if restore {
        cmd.args(["--restore", "latest"]);
    }
    cmd.env("SLUICE_CACHE_DIR", root().join("target/test-component-cache"))
        // Stretch the time between state files and metadata, so kills land
        // mid-checkpoint often.
        .env("SLUICE_FAULT_CHECKPOINT_DELAY_MS", "10")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning sluice")
}

/// True if the newest checkpoint directory has no metadata yet.
fn newest_incomplete(ckpt: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(ckpt) else { return false };
    let newest = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("chk-"))
        .max();
    newest.is_some_and(|n| !ckpt.join(n).join("_metadata.json").exists())
}

/// Kill `sluice run` at random moments until `kills` kills have landed on a
/// running process, restarting it with `--restore latest` each time; then
/// let it finish. Every round that finishes is checked against `expected`.
fn crash_loop(name: &str, toml: &str, outputs: &[(&str, &[String])], kills: u32) {
    let mut rng = Rng::new();
    let (mut landed, mut mid_checkpoint, mut rounds) = (0, 0, 0);
    while landed < kills {
        rounds += 1;
        assert!(rounds <= 5, "the job keeps finishing before it can be killed");
        let dir = temp_dir(name);
        let spec = dir.join("job.toml");
        std::fs::write(&spec, toml).unwrap();
        let mut restore = false;
        loop {
            let mut child = spawn(&spec, restore);
            restore = true;
            if landed >= kills {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "final run failed: {}", String::from_utf8_lossy(&out.stderr));
                break;
            }
            std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
                break;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            landed += 1;
            if newest_incomplete(&dir.join("ckpt")) {
                mid_checkpoint += 1;
            }
        }
        for (sink, expected) in outputs {
            let got = committed(&dir.join(sink));
            assert_eq!(
                got.len(),
                expected.len(),
                "{name}: `{sink}` has {} lines, expected {}",
                got.len(),
                expected.len()
            );
            assert!(got == *expected, "{name}: `{sink}` differs from the uninterrupted run");
        }
    }
    eprintln!("{name}: {landed} kills ({mid_checkpoint} mid-checkpoint) in {rounds} rounds");
    assert!(mid_checkpoint >= 1, "no kill landed mid-checkpoint");
}

/// The output of an uninterrupted run of `toml`.
pub(crate) fn uninterrupted(name: &str, toml: &str, sinks: &[&str]) -> Vec<Vec<String>> {
    let dir = temp_dir(name);
    let summary = run_toml(toml, &dir).unwrap();
    assert_eq!(summary.restarts, 0);
    sinks.iter().map(|s| committed(&dir.join(s))).collect()
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    // Keyed word count: every update `(word, n)` exactly once.
    let fast = wordcount_job("wc", 1_000_000, 2, "");
    let expected = uninterrupted("wc-expected", &fast, &["out"]);
    assert_eq!(expected[0].len(), 37_835);
    crash_loop("wc-crash", &wordcount_job("wc", 1500, 2, ""), &[("out", &expected[0])], 12);

    // Windowed word count: every window result exactly once, none late.
    let expected = uninterrupted("ww-expected", &windowed_job(1_000_000), &["out", "late"]);
    assert!(expected[0].len() > 5000, "{}", expected[0].len());
    assert!(expected[1].is_empty());
    crash_loop("ww-crash", &windowed_job(6000), &[("out", &expected[0]), ("late", &[])], 12);
}

#[test]
fn a_guest_trap_restarts_the_job_from_the_last_checkpoint() {
    let dir = temp_dir("trap-restart");
    let data = dir.join("words.txt");
    let text: String = (0..3000)
        .map(|i| if i == 2000 { "boom\n".to_owned() } else { format!("w{}\n", i % 37) })
        .collect();
    std::fs::write(&data, text).unwrap();
    let job = |trap: &str| {
        format!(
            r#"
name = "trap-restart"
restart = {{ strategy = "fixed-delay", attempts = 2, delay_ms = 50 }}
[checkpoints]
interval_ms = 50
dir = "ckpt"
[[sources]]
name = "lines"
kind = "file"
path = {data}
records_per_second = 3000
[[operators]]
name = "tokenize"
kind = "flat-map"
component = {tokenize}
[[operators]]
name = "trap"
kind = "map"
component = {trap_udf}
config = {{ {trap} }}
[[operators]]
name = "count"
kind = "keyed-process"
component = {count}
parallelism = 2
[[sinks]]
name = "out"
kind = "file"
path = "out"
[[edges]]
from = "lines"
to = "tokenize"
[[edges]]
from = "tokenize"
to = "trap"
[[edges]]
from = "trap"
to = "count"
partition = "hash"
[[edges]]
from = "count"
to = "out"
"#,
            data = lit(&data),
            tokenize = lit(&udf("tokenize")),
            trap_udf = lit(&udf("test_trap")),
            count = lit(&udf("count")),
        )
    };
    let clean_dir = temp_dir("trap-restart-expected");
    run_toml(&job(""), &clean_dir).unwrap();
    let expected = committed(&clean_dir.join("out"));
    assert_eq!(expected.len(), 3000);

    let summary = run_toml(&job(r#"trap_on = "boom", only_attempt = 0"#), &dir).unwrap();
    assert_eq!(summary.restarts, 1, "the trap should cause exactly one restart");
    assert!(summary.checkpoints >= 2);
    assert_eq!(committed(&dir.join("out")), expected);

    // Trapping on every attempt exhausts the restart strategy and fails.
    let dir = temp_dir("trap-restart-always");
    let err = run_toml(&job(r#"trap_on = "boom""#), &dir).unwrap_err().to_string();
    assert!(err.contains("asked to trap"), "{err}");
}

pub(crate) fn start(toml: &str, dir: &Path, restore: Option<PathBuf>) -> sluice::runtime::JobHandle {
    let graph = JobGraph::build(JobSpec::from_toml(toml).unwrap(), dir).unwrap();
    run_job(
        &graph,
        &engine(),
        RunOptions {
            restore: restore.map(Restore::Path),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn savepoint_at_parallelism_2_restores_at_1_and_3() {
    let expected = uninterrupted("rescale-expected", &wordcount_job("rescale", 1_000_000, 2, ""), &["out"]);
    for new_par in [1, 3] {
        let dir = temp_dir("rescale");
        let handle = start(&wordcount_job("rescale", 3000, 2, ""), &dir, None);
        let t = Instant::now();
        while handle.metrics[0].records_out() < 1500 {
            assert!(t.elapsed() < Duration::from_secs(30), "the job made no progress");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sp = request_savepoint(&dir.join("ckpt"), true, Duration::from_secs(30)).unwrap();
        let summary = handle.wait().unwrap();
        assert_eq!(summary.savepoint.as_deref(), Some(&*sp));
        assert!(sp.join("_metadata.json").exists());
        let partial = committed(&dir.join("out"));
        assert!(!partial.is_empty() && partial.len() < expected[0].len(), "{}", partial.len());

        let summary = start(&wordcount_job("rescale", 1_000_000, new_par, ""), &dir, Some(sp.clone()))
            .wait()
            .unwrap();
        assert_eq!(summary.savepoint, None);
        assert_eq!(committed(&dir.join("out")), expected[0], "restored at parallelism {new_par}");
    }

    // State of an operator the job no longer has fails the restore, unless allowed.
    let dir = temp_dir("rescale-missing");
    let handle = start(&wordcount_job("rescale", 3000, 2, ""), &dir, None);
    std::thread::sleep(Duration::from_millis(300));
    let sp = request_savepoint(&dir.join("ckpt"), true, Duration::from_secs(30)).unwrap();
    handle.wait().unwrap();
    let renamed = wordcount_job("rescale", 1_000_000, 2, "").replace("\"count\"", "\"counter\"");
    let graph = JobGraph::build(JobSpec::from_toml(&renamed).unwrap(), &dir).unwrap();
    let options = |allow| RunOptions {
        restore: Some(Restore::Path(sp.clone())),
        allow_non_restored_state: allow,
        ..Default::default()
    };
    let err = run_job(&graph, &engine(), options(false))
        .err()
        .expect("restore must fail")
        .to_string();
    assert!(
        err.contains("operator `count`") && err.contains("--allow-non-restored-state"),
        "{err}"
    );
    run_job(&graph, &engine(), options(true)).unwrap().wait().unwrap();
}

#[test]
fn a_corrupted_state_file_falls_back_to_the_previous_checkpoint() {
    let expected = uninterrupted("corrupt-expected", &wordcount_job("corrupt", 1_000_000, 2, "retain = 5"), &["out"]);
    let dir = temp_dir("corrupt");
    let spec = dir.join("job.toml");
    std::fs::write(&spec, wordcount_job("corrupt", 1500, 2, "retain = 5")).unwrap();
    let mut child = spawn(&spec, false);
    let ckpt = dir.join("ckpt");
    let t = Instant::now();
    let complete = |ckpt: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(ckpt)
            .map(|e| {
                e.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("_metadata.json").exists())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    while complete(&ckpt).len() < 3 {
        assert!(t.elapsed() < Duration::from_secs(30), "no checkpoints");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let newest = complete(&ckpt).pop().unwrap();
    let victim = std::fs::read_dir(&newest)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("count-"))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let out = Command::new(sluice_bin())
        .args(["run", "--quiet", "--restore", "latest"])
        .arg(&spec)
        .env("SLUICE_CACHE_DIR", root().join("target/test-component-cache"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&victim.display().to_string()),
        "the log must name the damaged file: {stderr}"
    );
    assert!(stderr.contains("checksum mismatch") && stderr.contains("falling back"), "{stderr}");
    assert_eq!(committed(&dir.join("out")), expected[0]);
}

#[test]
fn at_least_once_mode_runs_unaligned_and_completes() {
    let toml = wordcount_job("alo", 1_000_000, 2, "mode = \"at-least-once\"");
    let dir = temp_dir("alo");
    let summary = run_toml(&toml, &dir).unwrap();
    assert!(summary.checkpoints >= 1);
    assert_eq!(committed(&dir.join("out")).len(), 37_835);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Snapshot every subtask at one parallelism, restore at another: every
    /// key ends up exactly once, in the subtask that owns its key group.
    #[test]
    fn repartitioning_a_snapshot_loses_and_duplicates_no_key(
        max in 1u32..=256,
        from in 1u32..=256,
        to in 1u32..=256,
        keys in proptest::collection::hash_set("[a-z0-9]{1,12}", 1..400),
    ) {
        let (from, to) = (from.min(max), to.min(max));
        let mut old: Vec<HeapKeyedState> = (0..from).map(|s| HeapKeyedState::new(KeyGroupRange::for_subtask(max, from, s))).collect();
        for k in &keys {
            let g = KeyGroup::of(k.as_bytes(), max);
            let b = &mut old[g.subtask(max, from) as usize];
            let id = b.declare("v").unwrap();
            b.put(g, k.as_bytes(), id, b"", k.as_bytes()).unwrap();
        }
        let snaps: Vec<Arc<DecodedSnapshot>> = old
            .iter()
            .map(|b| {
                let mut w = SnapshotWriter::new();
                w.keyed_state(b);
                Arc::new(DecodedSnapshot::decode(&sluice::checkpoint::format::encode_file(&w.finish())).unwrap())
            })
            .collect();
        let mut seen = std::collections::HashMap::new();
        for s in 0..to {
            let range = KeyGroupRange::for_subtask(max, to, s);
            let mut b = HeapKeyedState::new(range);
            restore_keyed(&snaps, range, &mut b, None).unwrap();
            for g in range.iter() {
                for e in b.entries_in_group(g) {
                    prop_assert_eq!(e.value, e.key);
                    prop_assert_eq!(KeyGroup::of(e.key, max).subtask(max, to), s);
                    *seen.entry(e.key.to_vec()).or_insert(0) += 1;
                }
            }
        }
        prop_assert_eq!(seen.len(), keys.len());
        prop_assert!(seen.values().all(|&n| n == 1));
    }
}
