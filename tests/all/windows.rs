//! Event time, watermarks, windows and timers, end to end through real jobs.
//! Every expected output is computed here, independently of the engine.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};
use sluice::cluster::{JobHandle, RunOptions, run_job};
use sluice::job::{JobGraph, JobSpec};
use sluice::time::ManualClock;

use crate::harness::{engine, lit, read_json_lines, run_toml, temp_dir, udf};

/// `ts,word[,n]` lines.
fn csv(rows: &[(i64, &str)]) -> String {
    rows.iter().map(|(t, w)| format!("{t},{w}\n")).collect()
}

/// A job: CSV file `ts,word` → hash → window `window` (TOML inline table,
/// plus extra operator lines) → file sink, with a bounded watermark.
fn window_job(dir: &Path, rows: &[(i64, &str)], bound: i64, batch: usize, window: &str, operator_extra: &str, extra: &str) -> String {
    let input = dir.join("in.csv");
    std::fs::write(&input, csv(rows)).unwrap();
    format!(
        r#"
        name = "windows"
        batch_size = {batch}
        [[sources]]
        name = "in"
        kind = "file"
        path = {input}
        format = "csv"
        columns = ["ts", "word"]
        key_field = "word"
        timestamp_field = "ts"
        watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = {bound}, interval_ms = 0 }}
        [[operators]]
        name = "win"
        kind = "window"
        window = {window}
        {operator_extra}
        [[sinks]]
        name = "out"
        kind = "file"
        path = "out.jsonl"
        [[edges]]
        from = "in"
        to = "win"
        [[edges]]
        from = "win"
        to = "out"
        {extra}
        "#,
        input = lit(&input)
    )
}

/// (key, start, end) → the result field, from JSON results.
fn results(lines: &[Value], field: &str) -> BTreeMap<(String, i64, i64), Value> {
    let mut m = BTreeMap::new();
    for l in lines {
        let key = l.get("key").or_else(|| l.get("word")).and_then(Value::as_str).unwrap().to_owned();
        let (s, e) = (l["start"].as_i64().unwrap(), l["end"].as_i64().unwrap());
        assert!(m.insert((key, s, e), l[field].clone()).is_none(), "window fired twice: {l}");
    }
    m
}

/// A deterministic, shuffled-within-`bound` stream of `n` words.
fn stream(n: usize, bound: i64, seed: u64) -> Vec<(i64, &'static str)> {
    const WORDS: [&str; 5] = ["apple", "kiwi", "fig", "plum", "pear"];
    let mut x = seed | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut rows: Vec<(i64, i64, &str)> = (0..n as i64)
        .map(|i| {
            let t = i * 37;
            let jitter = if bound > 0 { (next() % bound as u64) as i64 } else { 0 };
            (t + jitter, t, WORDS[(next() % 5) as usize])
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, t, w)| (t, w)).collect()
}

fn tumbling_expected(rows: &[(i64, &str)], size: i64) -> BTreeMap<(String, i64, i64), Value> {
    let mut m: BTreeMap<(String, i64, i64), u64> = BTreeMap::new();
    for (t, w) in rows {
        let s = t - t.rem_euclid(size);
        *m.entry((w.to_string(), s, s + size)).or_default() += 1;
    }
    m.into_iter().map(|(k, v)| (k, json!(v))).collect()
}

#[test]
fn tumbling_windows_with_out_of_order_input_match_an_independent_count() {
    let rows = stream(3000, 400, 7);
    let expected = tumbling_expected(&rows, 1000);
    // The aggregate as a Wasm UDF, and the built-in count: same results.
    for (window, operator_extra) in [
        (
            "{ assigner = \"tumbling\", size_ms = 1000 }".to_owned(),
            format!("component = {}", lit(&udf("window_count"))),
        ),
        (
            "{ assigner = \"tumbling\", size_ms = 1000, aggregate = \"count\" }".to_owned(),
            String::new(),
        ),
    ] {
        let dir = temp_dir("tumbling");
        run_toml(&window_job(&dir, &rows, 400, 64, &window, &operator_extra, ""), &dir).unwrap();
        let got = results(&read_json_lines(&dir.join("out.jsonl")), "count");
        assert_eq!(got, expected, "{window} {operator_extra}");
    }
}

#[test]
fn sliding_windows_sum_a_field() {
    let dir = temp_dir("sliding");
    let rows = stream(2000, 0, 11);
    let input = dir.join("in.csv");
    let lines: String = rows.iter().enumerate().map(|(i, (t, w))| format!("{t},{w},{}\n", i % 7)).collect();
    std::fs::write(&input, lines).unwrap();
    let toml = window_job(
        &dir,
        &rows,
        0,
        100,
        r#"{ assigner = "sliding", size_ms = 1000, slide_ms = 250, aggregate = "sum", field = "n" }"#,
        "",
        "",
    )
    .replace(r#"columns = ["ts", "word"]"#, r#"columns = ["ts", "word", "n"]"#);
    std::fs::write(
        &input,
        rows.iter()
            .enumerate()
            .map(|(i, (t, w))| format!("{t},{w},{}\n", i % 7))
            .collect::<String>(),
    )
    .unwrap();
    run_toml(&toml, &dir).unwrap();
    let mut expected: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    for (i, (t, w)) in rows.iter().enumerate() {
        // Every window [s, s + 1000) with s a multiple of 250 containing t.
        let mut s = t - t.rem_euclid(250);
        while s > t - 1000 {
            *expected.entry((w.to_string(), s, s + 1000)).or_default() += (i % 7) as i64;
            s -= 250;
        }
    }
    let expected: BTreeMap<_, _> = expected.into_iter().map(|(k, v)| (k, json!(v))).collect();
    assert_eq!(results(&read_json_lines(&dir.join("out.jsonl")), "sum"), expected);
}

#[test]
fn sliding_windows_counted_by_a_wasm_aggregate_match_an_independent_count() {
    // Out-of-order input in batches of 64: a record reaches four windows,
    // and one key's records alternate between windows within a batch.
    let dir = temp_dir("sliding-wasm");
    let rows = stream(3000, 700, 5);
    let window = r#"{ assigner = "sliding", size_ms = 1000, slide_ms = 250 }"#;
    let toml = window_job(
        &dir,
        &rows,
        700,
        64,
        window,
        &format!("component = {}", lit(&udf("window_count"))),
        "",
    );
    run_toml(&toml, &dir).unwrap();
    let mut expected: BTreeMap<(String, i64, i64), i64> = BTreeMap::new();
    for (t, w) in &rows {
        let mut s = t - t.rem_euclid(250);
        while s > t - 1000 {
            *expected.entry((w.to_string(), s, s + 1000)).or_default() += 1;
            s -= 250;
        }
    }
    let expected: BTreeMap<_, _> = expected.into_iter().map(|(k, v)| (k, json!(v))).collect();
    assert_eq!(results(&read_json_lines(&dir.join("out.jsonl")), "count"), expected);
}

#[test]
fn session_windows_merge_three_sessions_into_one() {
    let dir = temp_dir("session");
    // Key a: three separate sessions (0, 1500, 3000), then 900 bridges the
    // first two and 2400 bridges that with the third: one session [0, 4000).
    // Key b: two sessions that never touch.
    let rows = [(0, "a"), (1500, "a"), (3000, "a"), (100, "b"), (900, "a"), (2400, "a"), (5000, "b")];
    let toml = window_job(
        &dir,
        &rows,
        10_000,
        1,
        r#"{ assigner = "session", gap_ms = 1000 }"#,
        &format!("component = {}", lit(&udf("test_window_collect"))),
        "",
    );
    run_toml(&toml, &dir).unwrap();
    // Independently: per key, sort times; a gap above 1000 starts a session.
    let mut by_key: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (t, w) in rows {
        by_key.entry(w).or_default().push(t);
    }
    let mut expected = BTreeMap::new();
    for (k, mut ts) in by_key {
        ts.sort();
        let mut start = 0;
        for i in 0..ts.len() {
            if i + 1 == ts.len() || ts[i + 1] - ts[i] > 1000 {
                let session: Vec<i64> = ts[start..=i].to_vec();
                expected.insert((k.to_owned(), session[0], session[session.len() - 1] + 1000), session.len());
                start = i + 1;
            }
        }
    }
    let got: BTreeMap<(String, i64, i64), usize> = results(&read_json_lines(&dir.join("out.jsonl")), "values")
        .into_iter()
        .map(|(k, v)| (k, v.as_array().unwrap().len()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(got.get(&("a".to_owned(), 0, 4000)), Some(&5));
}

#[test]
fn count_windows_fire_every_n_records_of_a_key() {
    let dir = temp_dir("count");
    let rows = stream(100, 0, 5);
    let toml = window_job(
        &dir,
        &rows,
        0,
        7,
        r#"{ assigner = "count", size = 3 }"#,
        &format!("component = {}", lit(&udf("test_window_collect"))),
        "",
    );
    run_toml(&toml, &dir).unwrap();
    let mut per_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (t, w) in &rows {
        per_key.entry(w).or_default().push(json!({"ts": t, "word": w}).to_string());
    }
    let mut expected: Vec<(String, Vec<String>)> = Vec::new();
    for (k, vals) in per_key {
        for chunk in vals.chunks_exact(3) {
            expected.push((k.to_owned(), chunk.to_vec()));
        }
    }
    expected.sort();
    let mut got: Vec<(String, Vec<String>)> = read_json_lines(&dir.join("out.jsonl"))
        .into_iter()
        .map(|l| {
            assert!(l["start"].is_i64() || l["start"].is_null());
            let vals = l["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            (l["key"].as_str().unwrap().to_owned(), vals)
        })
        .collect();
    got.sort();
    assert_eq!(got, expected);
}

/// `toml` (a [`window_job`]) with its late output into `late.jsonl`.
fn with_late_sink(toml: &str) -> String {
    let late_sink = r#"
        [[sinks]]
        name = "late"
        kind = "file"
        path = "late.jsonl"
        format = "envelope"
        [[edges]]
        from = "win"
        to = "late"
        output = "late"
    "#;
    toml.replace("[[sinks]]", &format!("{late_sink}\n[[sinks]]"))
}

#[test]
fn allowed_lateness_refires_and_later_records_reach_the_late_output() {
    let rows = [(100, "a"), (1500, "a"), (200, "a"), (2500, "a"), (300, "a")];
    let window = r#"{ assigner = "tumbling", size_ms = 1000, allowed_lateness_ms = 1000, aggregate = "count" }"#;
    let dir = temp_dir("lateness");
    // Monotonous-style watermarks (bound 0) after every record.
    let toml = with_late_sink(&window_job(&dir, &rows, 0, 1, window, "", ""));
    let summary = run_toml(&toml, &dir).unwrap();
    let got: Vec<(i64, u64)> = read_json_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|l| (l["start"].as_i64().unwrap(), l["count"].as_u64().unwrap()))
        .collect();
    // [0,1000) fires at watermark 1499 with 1; 200 is late but within the
    // lateness: it re-fires with 2; watermark 2499 fires [1000,2000) and
    // purges [0,1000), so 300 is too late; the end fires [2000,3000).
    assert_eq!(got, [(0, 1), (0, 2), (1000, 1), (2000, 1)]);
    let late = read_json_lines(&dir.join("late.jsonl"));
    assert_eq!(late.len(), 1);
    assert_eq!(late[0]["timestamp"], json!(300));
    let win = summary.metrics.iter().find(|m| m.name == "win").unwrap();
    assert_eq!((win.records_late(), win.records_late_dropped()), (1, 0));

    // Without a late edge the record is dropped and counted, never silently.
    let dir = temp_dir("lateness-dropped");
    let summary = run_toml(&window_job(&dir, &rows, 0, 1, window, "", ""), &dir).unwrap();
    let win = summary.metrics.iter().find(|m| m.name == "win").unwrap();
    assert_eq!((win.records_late(), win.records_late_dropped()), (1, 1));
}

/// A window's (start, end, count).
type Row = (i64, i64, u64);
/// Every emitted row, per key in emission order.
type RowsPerKey = BTreeMap<String, Vec<Row>>;

/// Every emitted (start, end, count) row, per key in emission order.
fn rows_per_key(lines: &[Value]) -> RowsPerKey {
    let mut m = RowsPerKey::new();
    for l in lines {
        let key = l["key"].as_str().or_else(|| l["word"].as_str()).unwrap().to_owned();
        let row = (
            l["start"].as_i64().unwrap(),
            l["end"].as_i64().unwrap(),
            l["count"].as_u64().unwrap(),
        );
        m.entry(key).or_default().push(row);
    }
    m
}

/// Runs `rows` (one watermark, `max - 1`, after every record) through a
/// built-in count over `window`; returns the rows and the late side output.
fn run_counted(name: &str, rows: &[(i64, &str)], window: &str) -> (RowsPerKey, Vec<i64>) {
    let dir = temp_dir(name);
    let toml = with_late_sink(&window_job(&dir, rows, 0, 1, window, "", ""));
    run_toml(&toml, &dir).unwrap();
    let late = lines_of(&dir.join("late.jsonl"))
        .iter()
        .map(|l| l["timestamp"].as_i64().unwrap())
        .collect();
    (rows_per_key(&read_json_lines(&dir.join("out.jsonl"))), late)
}

fn expect(rows: &[(&str, &[Row])]) -> RowsPerKey {
    rows.iter().map(|(k, r)| (k.to_string(), r.to_vec())).collect()
}

// The three cases below are Flink's documented window semantics (its
// `WindowOperator` with `EventTimeTrigger`), worked by hand: the trigger
// fires at once for an element whose window end the watermark has passed,
// and registers an end-of-window timer only while that end is ahead; merging
// windows are tested for lateness after the merge.

#[test]
fn a_late_window_created_within_the_lateness_fires_once() {
    // 100 → [0,1000); 6500 → watermark 6499 fires [0,1000) with 1 (its
    // cleanup, 2999, is due too); 4200 opens [4000,5000), whose end passed but
    // whose cleanup (6999) has not: it fires at once with 1, and never again
    // by a timer; 4300 reaches the existing window: a re-firing with 2 (that
    // stays); 7500 → watermark 7499 fires [6000,7000) and purges
    // [4000,5000); the end fires [7000,8000).
    let rows = [(100, "a"), (6500, "a"), (4200, "a"), (4300, "a"), (7500, "a")];
    let window = r#"{ assigner = "tumbling", size_ms = 1000, allowed_lateness_ms = 2000, aggregate = "count" }"#;
    let (got, late) = run_counted("late-window", &rows, window);
    assert_eq!(
        got,
        expect(&[(
            "a",
            &[(0, 1000, 1), (4000, 5000, 1), (4000, 5000, 2), (6000, 7000, 1), (7000, 8000, 1)]
        )])
    );
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn a_session_takes_a_record_whose_own_window_is_late() {
    // Gap 1 s, no lateness. Key a: 22100 and 22500 make [22100,23500); b at
    // 22951 moves the watermark to 22950; a at 21900 has its own window
    // [21900,22900) behind the watermark, but it touches the live session:
    // merged first, [21900,23500) is not late, so it takes the record.
    let rows = [(22_100, "a"), (22_500, "a"), (22_951, "b"), (21_900, "a")];
    let (got, late) = run_counted(
        "session-late-own",
        &rows,
        r#"{ assigner = "session", gap_ms = 1000, aggregate = "count" }"#,
    );
    assert_eq!(got, expect(&[("a", &[(21_900, 23_500, 3)]), ("b", &[(22_951, 23_951, 1)])]));
    assert!(late.is_empty(), "{late:?}");
    // A record that touches no session and whose window is late still is.
    let rows = [(22_100, "a"), (22_500, "a"), (22_951, "b"), (20_000, "a")];
    let (got, late) = run_counted(
        "session-late-alone",
        &rows,
        r#"{ assigner = "session", gap_ms = 1000, aggregate = "count" }"#,
    );
    assert_eq!(got, expect(&[("a", &[(22_100, 23_500, 2)]), ("b", &[(22_951, 23_951, 1)])]));
    assert_eq!(late, [20_000]);
}

#[test]
fn a_late_record_merging_two_fired_sessions_fires_the_merge_once() {
    // Gap 1 s, lateness 5 s. a: [1000,2000) and [2500,3500) fire at
    // watermarks 2499 and 3999 (b at 4000 moves it); a at 1800 bridges both:
    // [1000,3500) with 3, whose end passed: it fires at once, and no timer
    // fires it again; a at 2000 re-fires it with 4; b at 9000 (watermark 8999)
    // fires b's first session and purges a's (cleanup 8499); the end fires
    // b's second.
    let rows = [(1000, "a"), (2500, "a"), (4000, "b"), (1800, "a"), (2000, "a"), (9000, "b")];
    let window = r#"{ assigner = "session", gap_ms = 1000, allowed_lateness_ms = 5000, aggregate = "count" }"#;
    let (got, late) = run_counted("session-merge-fired", &rows, window);
    let a: &[Row] = &[(1000, 2000, 1), (2500, 3500, 1), (1000, 3500, 3), (1000, 3500, 4)];
    assert_eq!(got, expect(&[("a", a), ("b", &[(4000, 5000, 1), (9000, 10_000, 1)])]));
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn sluice_run_reports_dropped_late_records_in_plain_text() {
    // The lateness job without a late edge: 300 is dropped.
    let rows = [(100, "a"), (1500, "a"), (200, "a"), (2500, "a"), (300, "a")];
    let window = r#"{ assigner = "tumbling", size_ms = 1000, allowed_lateness_ms = 1000, aggregate = "count" }"#;
    let dir = temp_dir("late-cli");
    std::fs::write(dir.join("job.toml"), window_job(&dir, &rows, 0, 1, window, "", "")).unwrap();
    let out = std::process::Command::new(crate::harness::sluice_bin())
        .arg("run")
        .arg(dir.join("job.toml"))
        .env("SLUICE_LOG", "warn")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let summary = stderr.lines().last().unwrap_or_default();
    assert!(
        summary.contains("(1 late records dropped)"),
        "the summary line counts them: {stderr}"
    );
    assert!(
        stderr.contains("win in=5 out=4 late=1 (dropped 1)"),
        "the final progress line too: {stderr}"
    );
    assert!(stderr.contains("late records are dropped"), "and the warning says why: {stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no colour codes when stderr is not a terminal: {stderr:?}"
    );
}

fn start(toml: &str, dir: &Path, clock: &ManualClock) -> JobHandle {
    let graph = JobGraph::build(JobSpec::from_toml(toml).unwrap(), dir).unwrap();
    run_job(
        &graph,
        &engine(),
        RunOptions {
            clock: Arc::new(clock.clone()),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Wait until `f` holds (the job runs on its own threads).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn lines_of(path: &Path) -> Vec<Value> {
    if path.exists() { read_json_lines(path) } else { Vec::new() }
}

#[test]
fn an_idle_source_does_not_hold_back_windows() {
    let dir = temp_dir("idle");
    let rows = [(100, "a"), (700, "b"), (1200, "a"), (2100, "a")];
    let quiet = dir.join("quiet.csv");
    std::fs::write(&quiet, "").unwrap();
    let toml = window_job(
        &dir,
        &rows,
        0,
        10,
        r#"{ assigner = "tumbling", size_ms = 1000, aggregate = "count" }"#,
        "",
        "",
    )
    .replace(
        "[[operators]]",
        &format!(
            r#"
            [[sources]]
            name = "quiet"
            kind = "file"
            path = {}
            format = "csv"
            columns = ["ts", "word"]
            key_field = "word"
            timestamp_field = "ts"
            follow = true
            watermarks = {{ strategy = "bounded", interval_ms = 0, idle_timeout_ms = 500 }}
            [[edges]]
            from = "quiet"
            to = "win"
            [[operators]]"#,
            lit(&quiet)
        ),
    );
    let clock = ManualClock::new(0);
    let job = start(&toml, &dir, &clock);
    let out = dir.join("out.jsonl");
    std::thread::sleep(Duration::from_millis(300));
    assert!(lines_of(&out).is_empty(), "the quiet source holds the watermark back while active");
    clock.advance(1000);
    eventually("windows after the quiet source went idle", || lines_of(&out).len() == 4);
    let got = results(&lines_of(&out), "count");
    let expected: BTreeMap<_, _> = [(("a", 0), 1), (("b", 0), 1), (("a", 1000), 1), (("a", 2000), 1)]
        .into_iter()
        .map(|((k, s), c)| ((k.to_owned(), s, s + 1000), json!(c)))
        .collect();
    assert_eq!(got, expected);
    assert!(!job.is_finished(), "the follow source keeps the job running");
    job.cancel();
    let _ = job.wait();
}

#[test]
fn processing_time_windows_follow_the_test_clock() {
    let dir = temp_dir("proctime");
    let input = dir.join("in.csv");
    std::fs::write(&input, "").unwrap();
    let toml = format!(
        r#"
        name = "proc"
        [[sources]]
        name = "in"
        kind = "file"
        path = {}
        format = "csv"
        columns = ["word"]
        key_field = "word"
        follow = true
        [[operators]]
        name = "win"
        kind = "window"
        window = {{ assigner = "tumbling", size_ms = 1000, time = "processing", aggregate = "count" }}
        [[sinks]]
        name = "out"
        kind = "file"
        path = "out.jsonl"
        [[edges]]
        from = "in"
        to = "win"
        [[edges]]
        from = "win"
        to = "out"
        "#,
        lit(&input)
    );
    let clock = ManualClock::new(10_000);
    let job = start(&toml, &dir, &clock);
    let win = job.metrics.iter().find(|m| m.name == "win").unwrap().clone();
    let append = |s: &str| {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(&input).unwrap();
        f.write_all(s.as_bytes()).unwrap();
    };
    append("a\nb\na\n");
    eventually("3 records in the window", || win.records_in() == 3);
    let out = dir.join("out.jsonl");
    std::thread::sleep(Duration::from_millis(100));
    assert!(lines_of(&out).is_empty(), "nothing fires before the clock passes the window");
    clock.advance(1000);
    eventually("the first window", || lines_of(&out).len() == 2);
    append("b\n");
    eventually("4 records in the window", || win.records_in() == 4);
    clock.advance(1000);
    eventually("the second window", || lines_of(&out).len() == 3);
    job.cancel();
    let _ = job.wait();
    let got = results(&lines_of(&out), "count");
    let expected: BTreeMap<_, _> = [(("a", 10_000), 2), (("b", 10_000), 1), (("b", 11_000), 1)]
        .into_iter()
        .map(|((k, s), c)| ((k.to_owned(), s, s + 1000), json!(c)))
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn event_time_timers_fire_in_timestamp_order() {
    let dir = temp_dir("timers");
    let rows = [
        (1000, "a"),
        (500, "b"),
        (3000, "a"),
        (200, "c"),
        (1000, "b"),
        (2000, "c"),
        (2500, "b"),
    ];
    let mut toml = window_job(&dir, &rows, 10_000, 2, "{}", "", "")
        .replace(r#"kind = "window""#, r#"kind = "keyed-process""#)
        .replace(
            "window = {}",
            &format!("component = {}\nconfig = {{ delay = 100 }}", lit(&udf("test_timer_probe"))),
        );
    toml = toml
        .replace("name = \"win\"", "name = \"timers\"")
        .replace("to = \"win\"", "to = \"timers\"")
        .replace("from = \"win\"", "from = \"timers\"");
    run_toml(&toml, &dir).unwrap();
    let got: Vec<(i64, String)> = read_json_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|l| {
            assert!(l["watermark"].as_i64().unwrap() >= l["timer"].as_i64().unwrap(), "{l}");
            (l["timer"].as_i64().unwrap(), l["key"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut expected: Vec<(i64, String)> = rows
        .iter()
        .map(|(t, k)| (t + 100, k.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn connected_keyed_streams_join_in_one_two_input_udf() {
    let dir = temp_dir("connect");
    std::fs::write(dir.join("left.csv"), "o1,a\no2,b\no3,a\no4,z\no5,b\n").unwrap();
    std::fs::write(dir.join("right.csv"), "a,1.5\nb,2.5\n").unwrap();
    let toml = format!(
        r#"
        name = "connect"
        [[sources]]
        name = "left"
        kind = "file"
        path = "left.csv"
        format = "csv"
        columns = ["order", "item"]
        key_field = "item"
        [[sources]]
        name = "right"
        kind = "file"
        path = "right.csv"
        format = "csv"
        columns = ["item", "price"]
        key_field = "item"
        [[operators]]
        name = "join"
        kind = "keyed-process"
        component = {}
        parallelism = 2
        [[sinks]]
        name = "out"
        kind = "file"
        path = "out.jsonl"
        [[edges]]
        from = "left"
        to = "join"
        [[edges]]
        from = "right"
        to = "join"
        input = 1
        [[edges]]
        from = "join"
        to = "out"
        partition = "rebalance"
        "#,
        lit(&udf("test_co_join"))
    );
    run_toml(&toml, &dir).unwrap();
    let mut got: Vec<(String, String)> = read_json_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|l| {
            let left: Value = serde_json::from_str(l["left"].as_str().unwrap()).unwrap();
            let right: Value = serde_json::from_str(l["right"].as_str().unwrap()).unwrap();
            assert_eq!(left["item"], right["item"]);
            (left["order"].as_str().unwrap().to_owned(), right["price"].to_string())
        })
        .collect();
    got.sort();
    let prices: HashMap<&str, &str> = [("a", "1.5"), ("b", "2.5")].into();
    let mut expected: Vec<(String, String)> = [("o1", "a"), ("o2", "b"), ("o3", "a"), ("o4", "z"), ("o5", "b")]
        .into_iter()
        .filter_map(|(o, i)| prices.get(i).map(|p| (o.to_owned(), p.to_string())))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}

#[test]
fn punctuated_watermarks_come_from_a_udf() {
    let dir = temp_dir("punctuated");
    // Without the `!` records nothing could fire before the end; the
    // punctuation lets [0,1000) fire before the late record arrives.
    let rows = [(100, "a"), (1200, "!"), (300, "a"), (1500, "a"), (2500, "!")];
    let toml = window_job(
        &dir,
        &rows,
        0,
        10,
        r#"{ assigner = "tumbling", size_ms = 1000, aggregate = "count" }"#,
        "",
        "",
    )
    .replace(
        r#"watermarks = { strategy = "bounded", max_out_of_orderness_ms = 0, interval_ms = 0 }"#,
        &format!(
            r#"watermarks = {{ strategy = "punctuated", component = {} }}"#,
            lit(&udf("test_punctuator"))
        ),
    );
    let summary = run_toml(&toml, &dir).unwrap();
    let got = results(&read_json_lines(&dir.join("out.jsonl")), "count");
    let a: Vec<(i64, Value)> = got.iter().filter(|(k, _)| k.0 == "a").map(|(k, v)| (k.1, v.clone())).collect();
    assert_eq!(a, [(0, json!(1)), (1000, json!(1))], "300 came after watermark 1200 and is late");
    let win = summary.metrics.iter().find(|m| m.name == "win").unwrap();
    assert_eq!(win.records_late_dropped(), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Any permutation of the input within the out-of-orderness bound gives
    /// the same tumbling-window results.
    #[test]
    fn tumbling_results_do_not_depend_on_order_within_the_bound(seed in 1u64..u64::MAX, batch in 1usize..64) {
        let rows = stream(600, 300, seed);
        let dir = temp_dir("perm");
        let toml = window_job(
            &dir,
            &rows,
            300,
            batch,
            r#"{ assigner = "tumbling", size_ms = 500 }"#,
            &format!("component = {}", lit(&udf("window_count"))),
            "",
        );
        run_toml(&toml, &dir).unwrap();
        let got = results(&read_json_lines(&dir.join("out.jsonl")), "count");
        prop_assert_eq!(got, tumbling_expected(&rows, 500));
    }
}

#[test]
fn the_windowed_word_count_example_matches_an_independent_count() {
    let root = crate::harness::root();
    let spec = std::fs::read_to_string(root.join("examples/windowed-wordcount.toml")).unwrap();
    let data = std::fs::read_to_string(root.join("examples/data/timestamped-words.csv")).unwrap();
    let rows: Vec<(i64, &str)> = data
        .lines()
        .map(|l| {
            let (t, w) = l.split_once(',').unwrap();
            (t.parse().unwrap(), w)
        })
        .collect();
    let dir = temp_dir("windowed-example");
    let toml = spec
        .replace("data/", &format!("{}/examples/data/", root.display()))
        .replace("../udfs/", &format!("{}/udfs/", root.display()))
        .replace("../out/", "");
    let summary = run_toml(&toml, &dir).unwrap();
    let got = results(&read_json_lines(&dir.join("windowed-wordcount.jsonl")), "count");
    assert!(got.len() > 5000, "{} windows", got.len());
    assert_eq!(got, tumbling_expected(&rows, 1000));
    let counts = summary.metrics.iter().find(|m| m.name == "counts").unwrap();
    assert_eq!(counts.records_late(), 0, "the watermark bound covers the disorder");
}

#[test]
fn an_operator_can_generate_the_watermarks_of_its_output() {
    let dir = temp_dir("operator-watermarks");
    let rows = [(100, "a"), (1500, "a"), (200, "a")];
    // The source has no watermark strategy; the map after it has one.
    let toml = window_job(
        &dir,
        &rows,
        0,
        1,
        r#"{ assigner = "tumbling", size_ms = 1000, aggregate = "count" }"#,
        "",
        "",
    )
    .replace(
        r#"watermarks = { strategy = "bounded", max_out_of_orderness_ms = 0, interval_ms = 0 }"#,
        "",
    )
    .replace(
        "[[operators]]",
        &format!(
            r#"[[operators]]
                name = "upper"
                kind = "map"
                component = {}
                watermarks = {{ strategy = "monotonous", interval_ms = 0 }}
                [[edges]]
                from = "in"
                to = "upper"
                [[operators]]"#,
            lit(&udf("uppercase"))
        ),
    )
    .replace("from = \"in\"\n        to = \"win\"", "from = \"upper\"\n        to = \"win\"");
    let summary = run_toml(&toml, &dir).unwrap();
    let got: Vec<(i64, u64)> = read_json_lines(&dir.join("out.jsonl"))
        .iter()
        .map(|l| (l["start"].as_i64().unwrap(), l["count"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        got,
        [(0, 1), (1000, 1)],
        "watermark 1499 from the map fired [0,1000) before 200 arrived"
    );
    let win = summary.metrics.iter().find(|m| m.name == "win").unwrap();
    assert_eq!(win.records_late_dropped(), 1);
}
