//! Nexmark: every query's job, on the first 1,000,000 events at parallelism
//! 2, produces the rows of its plain-Rust reference implementation over the
//! same events (compared as sorted, canonical JSON: order-insensitive).

use sluice::connectors::NexmarkSettings;
use sluice::queries::{final_rows, job_toml, reference};

use crate::checkpoints::committed;
use crate::harness::{root, run_toml, temp_dir};

const EVENTS: u64 = 1_000_000;

/// A JSON row with its keys sorted, numbers as serde_json writes them.
fn canonical(row: &str) -> String {
    serde_json::from_str::<serde_json::Value>(row)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {row}"))
        .to_string()
}

fn check(query: &str) {
    check_in(query, "")
}

/// The query in batch mode: the same rows (no record is ever late).
fn check_batch(query: &str) {
    check_in(query, "mode = \"batch\"\n")
}

fn check_in(query: &str, mode: &str) {
    let dir = temp_dir(&format!("nexmark-{query}"));
    let udfs = root().join("udfs/target/wasm32-wasip2/release");
    let toml = format!(
        "{mode}{}",
        job_toml(query, EVENTS, 2, &udfs, "kind = \"file\"\npath = \"out\"").unwrap()
    );
    run_toml(&toml, &dir).unwrap();
    let mut got: Vec<String> = final_rows(query, committed(&dir.join("out")))
        .iter()
        .map(|l| canonical(l))
        .collect();
    got.sort_unstable();
    let settings = NexmarkSettings {
        count: EVENTS,
        events_per_second: 10_000,
        start_time_ms: 0,
    };
    let mut expected = Vec::new();
    let rows = reference(query, &settings, &mut |row| {
        expected.push(std::str::from_utf8(row).unwrap().to_owned())
    })
    .unwrap();
    let mut expected: Vec<String> = final_rows(query, expected).iter().map(|l| canonical(l)).collect();
    expected.sort_unstable();
    assert!(rows > 0, "{query}: the reference has no rows");
    assert_eq!(got.len(), expected.len(), "{query}: rows");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != expected[i]) {
        panic!(
            "{query}: row {i} of the sorted output differs:\n  sluice:    {}\n  reference: {}",
            got[i], expected[i]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn q0_pass_through_equals_the_reference() {
    check("q0");
}

#[test]
fn q1_currency_conversion_equals_the_reference() {
    check("q1");
}

#[test]
fn q2_selection_equals_the_reference() {
    check("q2");
}

#[test]
fn q3_local_item_suggestion_a_regular_join_equals_the_reference() {
    check("q3");
}

#[test]
fn q8_new_users_a_window_join_equals_the_reference() {
    check("q8");
}

#[test]
fn q4_average_price_per_category_equals_the_reference() {
    check("q4");
}

#[test]
fn q5_hot_items_equals_the_reference() {
    check("q5");
}

#[test]
fn q7_highest_bid_equals_the_reference() {
    check("q7");
}

#[test]
fn in_batch_mode_the_joins_windows_and_timers_of_q3_q4_q5_q7_q8_equal_the_reference() {
    for q in ["q3", "q4", "q5", "q7", "q8"] {
        check_batch(q);
    }
}
