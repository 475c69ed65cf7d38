//! UDFs in Python, JavaScript and C, built from source by
//! `scripts/build-guests` (which `scripts/test` runs first): the same word
//! count, mixed-language jobs, keyed state that survives a savepoint, and
//! Flink's fraud detector with event-time timers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checkpoints::{committed, start, stop_with_savepoint_after, uninterrupted, wordcount_job};
use crate::harness::{lit, root, run_toml, temp_dir, udf};

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
    let sp = stop_with_savepoint_after(&wordcount_with("wc", 2000, 2, &tok, &count), &dir, 1000, Duration::from_secs(60));
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

/// One transaction of `examples/data/transactions.jsonl`: account, amount, ts.
type Transaction = (String, f64, i64);

/// The alerts `(account, ts, amount)` of Flink's fraud detector with
/// event-time timers, computed per account over the transactions in file
/// order, without the engine: a small transaction (< 1.00) arms the account
/// until its timer one minute of event time later; a large one (> 500.00)
/// while armed is an alert; any transaction while armed disarms it.
fn fraud_alerts(transactions: &[Transaction]) -> Vec<(String, i64, f64)> {
    let mut timers: HashMap<&str, i64> = HashMap::new();
    let mut alerts = Vec::new();
    for (account, amount, ts) in transactions {
        // A timer at or before this transaction's time has fired already.
        let armed = timers.remove(account.as_str()).is_some_and(|timer| *ts < timer);
        if armed && *amount > 500.0 {
            alerts.push((account.clone(), *ts, *amount));
        }
        if *amount < 1.0 {
            timers.insert(account, ts + 60_000);
        }
    }
    alerts.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    alerts
}

/// The engine reads `batch_size` records per source batch and emits a
/// watermark (highest timestamp − `bound` − 1) after each. Check that no
/// alert of the data depends on where those watermarks fall: the disorder
/// stays within the bound (so a timer never fires early), and when an
/// account's next transaction is past its timer, the records read at least
/// one batch before it already carried the watermark past the timer.
fn assert_fraud_data_is_unambiguous(transactions: &[Transaction], batch_size: usize, bound: i64) {
    let mut highest: Vec<i64> = Vec::with_capacity(transactions.len());
    for (i, (_, _, ts)) in transactions.iter().enumerate() {
        let before = if i == 0 { *ts } else { highest[i - 1] };
        assert!(before - ts <= bound, "transaction {i} is {} ms out of order", before - ts);
        highest.push(before.max(*ts));
    }
    let mut timers: HashMap<&str, i64> = HashMap::new();
    for (i, (account, amount, ts)) in transactions.iter().enumerate() {
        if let Some(timer) = timers.remove(account.as_str()) {
            let fired = i >= batch_size && highest[i - batch_size] - bound > timer;
            assert!(
                *ts < timer || fired,
                "transaction {i} may arrive before the watermark passes timer {timer}"
            );
        }
        if *amount < 1.0 {
            timers.insert(account, ts + 60_000);
        }
    }
}

/// `examples/fraud.toml` (Flink's fraud detection tutorial, with event-time
/// timers) with the Rust, Python and JavaScript operators: each emits the
/// same alerts, those of an independent computation over the input.
#[test]
fn the_fraud_detector_with_event_time_timers_alerts_alike_in_rust_python_and_javascript() {
    let spec = std::fs::read_to_string(root().join("examples/fraud.toml")).unwrap();
    let data = root().join("examples/data/transactions.jsonl");
    let transactions: Vec<Transaction> = std::fs::read_to_string(&data)
        .unwrap()
        .lines()
        .map(|l| {
            let t: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                t["account"].as_str().unwrap().to_owned(),
                t["amount"].as_f64().unwrap(),
                t["ts"].as_i64().unwrap(),
            )
        })
        .collect();
    let parsed = sluice::job::JobSpec::from_toml(&spec).unwrap();
    let watermarks = parsed.sources[0].watermarks.as_ref().expect("the example has watermarks");
    assert_eq!(watermarks.interval_ms, 0, "a watermark after every batch");
    assert_fraud_data_is_unambiguous(&transactions, parsed.batch_size, watermarks.max_out_of_orderness_ms);
    let expected = fraud_alerts(&transactions);
    assert!(expected.len() > 20, "{} alerts", expected.len());

    let component = "\"../udfs/target/wasm32-wasip2/release/fraud.wasm\"";
    let (input, output) = ("\"data/transactions.jsonl\"", "\"../out/fraud.jsonl\"");
    for s in [component, input, output] {
        assert!(spec.contains(s), "examples/fraud.toml no longer names {s}");
    }
    let mut outputs: Vec<(&str, Vec<String>)> = Vec::new();
    for (language, wasm) in [
        ("rust", udf("fraud")),
        ("python", guest("python", "fraud")),
        ("js", guest("js", "fraud")),
    ] {
        let dir = temp_dir(&format!("fraud-{language}"));
        let toml = spec
            .replace(component, &lit(&wasm))
            .replace(input, &lit(&data))
            .replace(output, "\"fraud.jsonl\"");
        let summary = run_toml(&toml, &dir).unwrap();
        assert_eq!(summary.restarts, 0, "{language}");
        let mut lines: Vec<String> = std::fs::read_to_string(dir.join("fraud.jsonl"))
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        lines.sort();
        let mut got: Vec<(String, i64, f64)> = lines
            .iter()
            .map(|l| {
                let a: serde_json::Value = serde_json::from_str(l).unwrap();
                let keys: Vec<&str> = a.as_object().unwrap().keys().map(String::as_str).collect();
                assert_eq!(keys.len(), 3, "{language}: {l}");
                (
                    a["account"].as_str().unwrap().to_owned(),
                    a["ts"].as_i64().unwrap(),
                    a["amount"].as_f64().unwrap(),
                )
            })
            .collect();
        got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        assert_eq!(got, expected, "{language}");
        outputs.push((language, lines));
    }
    for (language, lines) in &outputs[1..] {
        assert_eq!(lines, &outputs[0].1, "{language} writes the alerts as Rust does");
    }
}
