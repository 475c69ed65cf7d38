//! Checkpoints and exactly-once recovery: the process killed with SIGKILL at
//! random moments, a guest trap, rescaling through a savepoint, damaged
//! checkpoints (corrupted, a zstd bomb, huge, a FIFO, metadata without
//! operators, tampered key groups), repartitioning, at-least-once mode.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use sluice::checkpoint::format::{DEFAULT_MAX_PAYLOAD_BYTES, Item, encode_file, restore_keyed};
use sluice::checkpoint::requests::request_savepoint;
use sluice::checkpoint::storage::{DEFAULT_MAX_STATE_FILE_BYTES, StateFile};
use sluice::checkpoint::{CheckpointStorage, DecodedSnapshot, Metadata, SnapshotWriter};
use sluice::cluster::{Restore, RunOptions, run_job};
use sluice::job::{JobGraph, JobSpec};
use sluice::state::{HeapKeyedState, KeyGroup, KeyGroupRange};
use sluice::time::TimeDomain;

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

/// `(word, count)` of the JSON values `values`, sorted.
pub(crate) fn word_counts<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Vec<(String, i64)> {
    let mut rows: Vec<(String, i64)> = values
        .into_iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            (v["word"].as_str().unwrap().to_owned(), v["count"].as_i64().unwrap())
        })
        .collect();
    rows.sort();
    rows
}

/// The keyed word count: lines → tokenize (2) → count (`count_par`) → out.
pub(crate) fn wordcount_job(name: &str, rate: u64, count_par: u32, extra: &str) -> String {
    wordcount_pipeline(
        name,
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
        &format!("{extra}\n"),
        &format!(
            "kind = \"file\"\npath = {}\nrecords_per_second = {rate}",
            lit(&root().join("examples/data/wordcount.txt"))
        ),
        count_par,
        "kind = \"file\"\npath = \"out\"\nparallelism = 2",
    )
}

/// The keyed word count from the source `lines` (its fields after the
/// name) to the sink `out` (likewise), checkpointed every 100 ms into
/// `ckpt` (with `checkpoints` added to that table).
pub(crate) fn wordcount_pipeline(name: &str, restart: &str, checkpoints: &str, source: &str, count_par: u32, sink: &str) -> String {
    format!(
        r#"
name = "{name}"
restart = {restart}
[checkpoints]
interval_ms = 100
dir = "ckpt"
{checkpoints}
[[sources]]
name = "lines"
{source}
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
{sink}
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

/// A kill never damages a complete checkpoint (its metadata is written
/// last, atomically), so restoring one must never be refused.
fn no_fallback(stderr: &[u8]) {
    let stderr = String::from_utf8_lossy(stderr);
    assert!(!stderr.contains("falling back"), "an intact checkpoint was refused: {stderr}");
}

/// Kill `sluice run` at random moments until `kills` kills have landed on a
/// running process, restarting it with `--restore latest` each time; then
/// let it finish. Every round that finishes is checked against `expected`.
fn crash_loop(name: &str, toml: &str, outputs: &[(&str, &[String])], kills: u32) {
    kill_loop(
        name,
        toml,
        kills,
        || {},
        |dir| {
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
        },
    );
}

/// The kill loop: rounds of `sluice run` in a fresh directory, each killed
/// at random moments (100–700 ms apart) and restarted with `--restore
/// latest`, until `kills` kills have landed; `before_round` runs before a
/// round starts, `check` on its directory once its last run has finished.
pub(crate) fn kill_loop(name: &str, toml: &str, kills: u32, mut before_round: impl FnMut(), mut check: impl FnMut(&Path)) {
    let mut rng = Rng::new();
    let (mut landed, mut mid_checkpoint, mut rounds) = (0, 0, 0);
    while landed < kills {
        rounds += 1;
        assert!(rounds <= 5, "the job keeps finishing before it can be killed");
        before_round();
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
                no_fallback(&out.stderr);
                break;
            }
            std::thread::sleep(Duration::from_millis(100 + rng.below(600)));
            if child.try_wait().unwrap().is_some() {
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "run failed: {}", String::from_utf8_lossy(&out.stderr));
                no_fallback(&out.stderr);
                break;
            }
            child.kill().unwrap();
            no_fallback(&child.wait_with_output().unwrap().stderr);
            landed += 1;
            if newest_incomplete(&dir.join("ckpt")) {
                mid_checkpoint += 1;
            }
        }
        check(&dir);
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

/// Start `toml` in `dir`, wait (at most `patience`) until its first source
/// has sent `records`, then stop it with a savepoint, which is returned.
pub(crate) fn stop_with_savepoint_after(toml: &str, dir: &Path, records: u64, patience: Duration) -> PathBuf {
    let handle = start(toml, dir, None);
    let t = Instant::now();
    while handle.metrics[0].records_out() < records {
        assert!(t.elapsed() < patience, "the job made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sp = request_savepoint(&dir.join("ckpt"), true, patience).unwrap();
    handle.wait().unwrap();
    sp
}

pub(crate) fn start(toml: &str, dir: &Path, restore: Option<PathBuf>) -> sluice::cluster::JobHandle {
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

/// Open windows (their accumulators and timers) move with their key groups:
/// a windowed word count stopped with a savepoint at parallelism 2 and
/// restored at 3, then at 1, writes what an uninterrupted run writes.
#[test]
fn window_state_saved_at_parallelism_2_restores_at_3_and_1() {
    let expected = uninterrupted("wrescale-expected", &windowed_job(1_000_000), &["out", "late"]);
    assert!(expected[1].is_empty());
    for new_par in [3, 1] {
        let dir = temp_dir("wrescale");
        let sp = stop_with_savepoint_after(&windowed_job(4000), &dir, 4000, Duration::from_secs(30));
        let partial = committed(&dir.join("out"));
        assert!(partial.len() < expected[0].len(), "{}", partial.len());
        let rescaled = windowed_job(1_000_000).replace("parallelism = 2", &format!("parallelism = {new_par}"));
        start(&rescaled, &dir, Some(sp)).wait().unwrap();
        assert_eq!(committed(&dir.join("out")), expected[0], "restored at parallelism {new_par}");
        assert_eq!(committed(&dir.join("late")), expected[1]);
    }
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
    let complete = complete_checkpoints;
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

/// Complete checkpoint directories under `ckpt`, oldest first.
fn complete_checkpoints(ckpt: &Path) -> Vec<PathBuf> {
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
}

/// What a damage did to the newest checkpoint: the file the restore must
/// name, and the words it must use.
struct Damage {
    file: PathBuf,
    reason: String,
}

/// Run the word count until it has three complete checkpoints, kill it,
/// let `damage` spoil the newest (through the real storage API, so sizes
/// and checksums are valid where the damage wants them valid), then restore
/// with `--restore latest`, bounded in time. The restore must name the file
/// and the reason, fall back to the previous checkpoint, and commit exactly
/// the output of an uninterrupted run: no abort, no hang, no duplicate.
fn restore_falls_back_past(name: &str, damage: impl FnOnce(&CheckpointStorage, &str, &mut Metadata) -> Damage) {
    let expected = uninterrupted(
        &format!("{name}-expected"),
        &wordcount_job(name, 1_000_000, 2, "retain = 5"),
        &["out"],
    );
    let dir = temp_dir(name);
    let spec = dir.join("job.toml");
    std::fs::write(&spec, wordcount_job(name, 1500, 2, "retain = 5")).unwrap();
    let mut child = spawn(&spec, false);
    let ckpt = dir.join("ckpt");
    let t = Instant::now();
    while complete_checkpoints(&ckpt).len() < 3 {
        assert!(t.elapsed() < Duration::from_secs(30), "no checkpoints");
        assert!(child.try_wait().unwrap().is_none(), "the job ended before three checkpoints");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let newest = complete_checkpoints(&ckpt).pop().unwrap();
    let dir_name = newest.file_name().unwrap().to_string_lossy().into_owned();
    let mut meta: Metadata = serde_json::from_slice(&std::fs::read(newest.join("_metadata.json")).unwrap()).unwrap();
    let storage = CheckpointStorage::open(&ckpt).unwrap();
    let Damage { file, reason } = damage(&storage, &dir_name, &mut meta);

    // The rest of the input at full speed: the rate is no part of the state.
    std::fs::write(&spec, wordcount_job(name, 1_000_000, 2, "retain = 5")).unwrap();
    let mut child = Command::new(sluice_bin())
        .args(["run", "--quiet", "--restore", "latest"])
        .arg(&spec)
        .env("SLUICE_CACHE_DIR", root().join("target/test-component-cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut pipe, &mut text);
        text
    });
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("{name}: the restore hung: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert!(status.success(), "{name}: the restore failed ({status}): {stderr}");
    // Only the damaged checkpoint is refused: the one before it restores.
    assert_eq!(stderr.matches("falling back").count(), 1, "{name}: {stderr}");
    let id = dir_name.trim_start_matches("chk-").trim_start_matches('0');
    let line = stderr
        .lines()
        .find(|l| l.contains(&format!("restoring checkpoint {id}: ")))
        .unwrap_or_else(|| panic!("{name}: no error names checkpoint {id}: {stderr}"));
    assert!(
        line.contains(&format!("`{}`", file.display())) && line.contains(&reason) && line.contains("falling back"),
        "{name}: expected `{}` and {reason:?} in: {line}",
        file.display()
    );
    let got = committed(&dir.join("out"));
    assert_eq!(
        got.len(),
        expected[0].len(),
        "{name}: {} lines, expected {}",
        got.len(),
        expected[0].len()
    );
    assert!(got == expected[0], "{name}: the output differs from the uninterrupted run");
}

/// The entry of subtask `subtask` of the keyed `count` in `meta`.
fn count_file(meta: &mut Metadata, subtask: usize) -> &mut StateFile {
    let op = meta.operators.iter_mut().find(|o| o.name == "count").unwrap();
    &mut op.files[subtask]
}

/// Write `bytes` as subtask `subtask`'s state file of `count`, with the
/// metadata updated to match (a valid size and checksum).
fn forge_count_file(st: &CheckpointStorage, dir: &str, meta: &mut Metadata, subtask: usize, bytes: &[u8]) -> PathBuf {
    let f = count_file(meta, subtask);
    *f = st.write_state(dir, &f.file.clone(), subtask as u32, bytes).unwrap();
    let path = st.path().join(dir).join(&f.file);
    st.write_metadata(dir, meta).unwrap();
    path
}

/// A zstd frame of `blocks` RLE blocks of 128 KiB of zeros, which does not
/// declare its content size: 4 bytes of input for each 128 KiB of output.
fn rle_zstd_frame(blocks: u32) -> Vec<u8> {
    // Magic; frame header descriptor 0 (no content size, no checksum, no
    // dictionary, not single-segment); window descriptor 2^17 = 128 KiB.
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (128 * 1024) << 3 | 1 << 1 | last;
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
    }
    f
}

#[test]
fn a_zstd_bomb_with_a_valid_checksum_falls_back_to_the_previous_checkpoint() {
    restore_falls_back_past("restore-bomb", |st, dir, meta| {
        // Inflates to one 128 KiB block more than the payload limit.
        let blocks = (DEFAULT_MAX_PAYLOAD_BYTES / (128 * 1024)) as u32 + 1;
        let mut bomb = b"SLUICEST".to_vec();
        bomb.extend_from_slice(&1u32.to_le_bytes());
        bomb.extend_from_slice(&rle_zstd_frame(blocks));
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        Damage {
            file: forge_count_file(st, dir, meta, 0, &bomb),
            reason: format!("decompresses to more than {DEFAULT_MAX_PAYLOAD_BYTES} bytes"),
        }
    });
}

#[test]
fn a_huge_sparse_state_file_falls_back_without_being_read() {
    restore_falls_back_past("restore-sparse", |st, dir, meta| {
        let f = count_file(meta, 1);
        let path = st.path().join(dir).join(&f.file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        // Declared at its new size too, so only the cap can refuse it.
        f.bytes = 64 << 30;
        st.write_metadata(dir, meta).unwrap();
        Damage {
            file: path,
            reason: format!(
                "it has {} bytes, more than the limit of {DEFAULT_MAX_STATE_FILE_BYTES}",
                64u64 << 30
            ),
        }
    });
}

#[test]
fn a_fifo_in_place_of_a_state_file_falls_back_without_blocking() {
    restore_falls_back_past("restore-fifo", |st, dir, meta| {
        let path = st.path().join(dir).join(&count_file(meta, 0).file);
        std::fs::remove_file(&path).unwrap();
        let made = Command::new("mkfifo").arg(&path).status().expect("mkfifo");
        assert!(made.success());
        Damage {
            file: path,
            reason: "it is a FIFO, not a regular file".into(),
        }
    });
}

#[test]
fn metadata_that_lists_no_operators_falls_back_and_duplicates_nothing() {
    restore_falls_back_past("restore-no-operators", |st, dir, meta| {
        meta.operators.clear();
        st.write_metadata(dir, meta).unwrap();
        Damage {
            file: st.path().join(dir).join("_metadata.json"),
            reason: "it lists no operators".into(),
        }
    });
}

#[test]
fn state_files_holding_another_subtasks_key_groups_fall_back() {
    restore_falls_back_past("restore-swapped-groups", |st, dir, meta| {
        let read = |meta: &mut Metadata, s| std::fs::read(st.path().join(dir).join(&count_file(meta, s).file)).unwrap();
        let (zero, one) = (read(meta, 0), read(meta, 1));
        let file = forge_count_file(st, dir, meta, 0, &one);
        forge_count_file(st, dir, meta, 1, &zero);
        let range = KeyGroupRange::for_subtask(meta.max_parallelism, 2, 0);
        Damage {
            file,
            reason: format!("is outside the key groups {}..={} of its subtask", range.start, range.end),
        }
    });
}

/// Re-encode `snap` (by the documented format) with the entries of key
/// groups `a` and `b` swapped.
fn swap_groups(snap: &DecodedSnapshot, a: u32, b: u32) -> Vec<u8> {
    fn put(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(b);
    }
    let mut names: Vec<String> = Vec::new();
    let mut blocks = std::collections::BTreeMap::new();
    for g in snap.groups() {
        let mut block = Vec::new();
        for item in snap.items(g) {
            match item.unwrap() {
                Item::State {
                    index,
                    state,
                    key,
                    user_key,
                    value,
                } => {
                    if names.len() <= index {
                        names.resize(index + 1, String::new());
                    }
                    names[index] = state.to_owned();
                    block.push(0);
                    block.extend_from_slice(&(index as u32).to_le_bytes());
                    put(&mut block, key);
                    put(&mut block, user_key);
                    put(&mut block, value);
                }
                Item::Timer { domain, timer } => {
                    block.push(1);
                    block.push(u8::from(domain != TimeDomain::EventTime));
                    block.extend_from_slice(&timer.timestamp.to_le_bytes());
                    put(&mut block, &timer.key);
                    put(&mut block, &timer.namespace);
                }
            }
        }
        let label = if g == a {
            b
        } else if g == b {
            a
        } else {
            g
        };
        blocks.insert(label, block);
    }
    let mut payload = (names.len() as u32).to_le_bytes().to_vec();
    for (i, n) in names.iter().enumerate() {
        put(
            &mut payload,
            if n.is_empty() { format!("unused-{i}") } else { n.clone() }.as_bytes(),
        );
    }
    payload.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    for (g, block) in &blocks {
        payload.extend_from_slice(&g.to_le_bytes());
        payload.extend_from_slice(&(block.len() as u64).to_le_bytes());
        payload.extend_from_slice(block);
    }
    payload.extend_from_slice(&0u32.to_le_bytes());
    encode_file(&payload)
}

#[test]
fn key_groups_swapped_within_a_subtask_fall_back() {
    restore_falls_back_past("restore-swapped-within", |st, dir, meta| {
        let path = st.path().join(dir).join(&count_file(meta, 0).file);
        let snap = DecodedSnapshot::decode(&std::fs::read(&path).unwrap()).unwrap();
        let groups: Vec<u32> = snap.groups().collect();
        let (a, b) = (groups[0], groups[1]);
        let file = forge_count_file(st, dir, meta, 0, &swap_groups(&snap, a, b));
        Damage {
            file,
            reason: format!("key group {a} holds a key of key group {b}"),
        }
    });
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
                Arc::new(DecodedSnapshot::decode(&encode_file(&w.finish())).unwrap())
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
