//! UDFs in other languages than Rust, built from source by
//! `scripts/build-guests` (which `scripts/test` runs first): the same word
//! count, mixed-language jobs, and keyed state that survives a savepoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::checkpoint::coordinator::request_savepoint;

use crate::checkpoints::{committed, start, uninterrupted, wordcount_job};
use crate::harness::{lit, root, temp_dir, udf};

/// A component built from `examples/<language>/<name>`.
fn guest(language: &str, name: &str) -> PathBuf {
    let p = root().join("target/guests").join(language).join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-guests (scripts/test does)",
        p.display()
    );
    p
}

/// The checkpointed word count with the given tokenize and count components.
fn wordcount_with(name: &str, rate: u64, count_par: u32, tokenize: &Path, count: &Path) -> String {
    wordcount_job(name, rate, count_par, "")
        .replace(&lit(&udf("tokenize")), &lit(tokenize))
        .replace(&lit(&udf("count")), &lit(count))
}

#[test]
fn the_python_word_count_and_a_mixed_job_equal_the_rust_one() {
    let expected = uninterrupted("lang-rust", &wordcount_job("wc", 1_000_000, 2, ""), &["out"]);
    assert_eq!(expected[0].len(), 37_835);
    let (py_tok, py_count) = (guest("python", "tokenize"), guest("python", "count"));
    let python = wordcount_with("wc", 1_000_000, 2, &py_tok, &py_count);
    assert_eq!(uninterrupted("lang-python", &python, &["out"]), expected, "Python tokenize + count");
    let mixed = wordcount_with("wc", 1_000_000, 2, &py_tok, &udf("count"));
    assert_eq!(
        uninterrupted("lang-py-rust", &mixed, &["out"]),
        expected,
        "Python tokenize → Rust count"
    );
    let mixed = wordcount_with("wc", 1_000_000, 2, &udf("tokenize"), &py_count);
    assert_eq!(
        uninterrupted("lang-rust-py", &mixed, &["out"]),
        expected,
        "Rust tokenize → Python count"
    );
}

#[test]
fn keyed_state_written_by_a_python_udf_survives_a_savepoint_and_rescaling() {
    let expected = uninterrupted("lang-sp-expected", &wordcount_job("wc", 1_000_000, 2, ""), &["out"]);
    let (tok, count) = (guest("python", "tokenize"), guest("python", "count"));
    let dir = temp_dir("lang-sp");
    let handle = start(&wordcount_with("wc", 2000, 2, &tok, &count), &dir, None);
    let t = Instant::now();
    while handle.metrics[0].records_out() < 1000 {
        assert!(t.elapsed() < Duration::from_secs(60), "the job made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sp = request_savepoint(&dir.join("ckpt"), true, Duration::from_secs(60)).unwrap();
    handle.wait().unwrap();
    let partial = committed(&dir.join("out"));
    assert!(!partial.is_empty() && partial.len() < expected[0].len(), "{}", partial.len());
    // Restored at parallelism 3: the Python counts continue from the host state.
    start(&wordcount_with("wc", 1_000_000, 3, &tok, &count), &dir, Some(sp))
        .wait()
        .unwrap();
    assert_eq!(committed(&dir.join("out")), expected[0]);
}
