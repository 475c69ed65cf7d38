//! UDFs in Python, JavaScript and C, built from source by
//! `scripts/build-guests` (which `scripts/test` runs first): the same word
//! count, mixed-language jobs, and keyed state that survives a savepoint.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::checkpoint::requests::request_savepoint;

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

/// The word count with `language`'s tokenize and count, then jobs mixing
/// languages (`(tokenize, count)`): each must equal the Rust word count.
fn word_count_in(language: &str, mixed: &[(&str, &str)]) {
    let expected = uninterrupted("lang-rust", &wordcount_job("wc", 1_000_000, 2, ""), &["out"]);
    assert_eq!(expected[0].len(), 37_835);
    let component = |lang: &str, name: &str| if lang == "rust" { udf(name) } else { guest(lang, name) };
    let own = wordcount_with("wc", 1_000_000, 2, &guest(language, "tokenize"), &guest(language, "count"));
    assert_eq!(
        uninterrupted(&format!("lang-{language}"), &own, &["out"]),
        expected,
        "{language} tokenize + count"
    );
    for (tok, count) in mixed {
        let job = wordcount_with("wc", 1_000_000, 2, &component(tok, "tokenize"), &component(count, "count"));
        assert_eq!(
            uninterrupted(&format!("lang-{tok}-{count}"), &job, &["out"]),
            expected,
            "{tok} tokenize → {count} count"
        );
    }
}

#[test]
fn the_python_word_count_and_a_mixed_job_equal_the_rust_one() {
    word_count_in("python", &[("python", "rust"), ("rust", "python")]);
}

#[test]
fn the_javascript_word_count_and_a_mixed_job_equal_the_rust_one() {
    word_count_in("js", &[("js", "python")]);
}

#[test]
fn the_c_word_count_and_a_mixed_job_equal_the_rust_one() {
    word_count_in("c", &[("c", "js")]);
}

/// Stop `language`'s word count with a savepoint part-way, restore it at
/// parallelism 3: the counts continue from the state the guest wrote.
fn keyed_state_survives_a_savepoint(language: &str) {
    let expected = uninterrupted("lang-sp-expected", &wordcount_job("wc", 1_000_000, 2, ""), &["out"]);
    let (tok, count) = (guest(language, "tokenize"), guest(language, "count"));
    let dir = temp_dir(&format!("lang-sp-{language}"));
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
    start(&wordcount_with("wc", 1_000_000, 3, &tok, &count), &dir, Some(sp))
        .wait()
        .unwrap();
    assert_eq!(committed(&dir.join("out")), expected[0], "{language}");
}

#[test]
fn keyed_state_written_by_a_python_udf_survives_a_savepoint_and_rescaling() {
    keyed_state_survives_a_savepoint("python");
}

#[test]
fn keyed_state_written_by_a_javascript_udf_survives_a_savepoint_and_rescaling() {
    keyed_state_survives_a_savepoint("js");
}

#[test]
fn keyed_state_written_by_a_c_udf_survives_a_savepoint_and_rescaling() {
    keyed_state_survives_a_savepoint("c");
}
