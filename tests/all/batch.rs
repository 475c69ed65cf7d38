//! Batch mode: bounded jobs run stage by stage over blocking exchanges.
//! Every result is compared with streaming mode's and with a count made
//! here, independently of the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::harness::{lit, read_json_lines, run_toml, sluice_bin, temp_dir, udf};
use crate::wordcount::{expected_counts, job as wordcount_job};

/// Words with a skew, `n` of them, as lines of text.
fn text(n: usize, distinct: u64, seed: u64) -> String {
    let mut x = seed | 1;
    let mut out = String::new();
    for i in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Squaring a uniform draw skews towards small word numbers.
        let u = (x % 10_000) as f64 / 10_000.0;
        out.push_str(&format!("w{}", (u * u * distinct as f64) as u64));
        out.push(if i % 12 == 11 { '\n' } else { ' ' });
    }
    out
}

/// (word, count) of every update line, sorted.
fn updates(lines: &[Value]) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = lines
        .iter()
        .map(|l| (l["word"].as_str().unwrap().to_owned(), l["count"].as_u64().unwrap()))
        .collect();
    v.sort();
    v
}

/// Every word's updates are exactly 1..=n, n its count in `expected`.
fn assert_exact_updates(got: &[(String, u64)], expected: &HashMap<String, u64>) {
    let mut by_word: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (w, c) in got {
        by_word.entry(w).or_default().push(*c);
    }
    assert_eq!(by_word.len(), expected.len(), "words");
    for (w, counts) in by_word {
        let n = expected[w];
        assert_eq!(counts, (1..=n).collect::<Vec<_>>(), "updates of {w}");
    }
}

#[test]
fn batch_word_count_equals_streaming_and_an_independent_count() {
    let dir = temp_dir("batch-wordcount");
    let input = dir.join("words.txt");
    let words = text(60_000, 3_000, 11);
    std::fs::write(&input, &words).unwrap();
    let expected = expected_counts(&words);
    let streaming_out = dir.join("streaming.jsonl");
    let batch_out = dir.join("batch.jsonl");
    run_toml(&wordcount_job(&input, &streaming_out, 2, 256), &dir).unwrap();
    let batch = format!("mode = \"batch\"\n{}", wordcount_job(&input, &batch_out, 2, 256));
    let summary = run_toml(&batch, &dir).unwrap();
    assert_eq!(summary.restarts, 0);
    let (s, b) = (updates(&read_json_lines(&streaming_out)), updates(&read_json_lines(&batch_out)));
    assert_exact_updates(&b, &expected);
    assert_eq!(b, s, "batch mode emits exactly streaming mode's updates");
    // The final result: the last value per key.
    let last: HashMap<String, u64> = b.iter().cloned().fold(HashMap::new(), |mut m, (w, c)| {
        let e = m.entry(w).or_insert(0);
        *e = (*e).max(c);
        m
    });
    assert_eq!(last, expected);
}

/// `ts,word` rows in time order, `per_second` a second.
fn timed_rows(n: usize, per_second: usize, seed: u64) -> Vec<(i64, String)> {
    let words = text(n, 400, seed);
    words
        .split_whitespace()
        .enumerate()
        .map(|(i, w)| ((i * 1000 / per_second) as i64, w.to_owned()))
        .collect()
}

fn window_job(input: &Path, out: &str, window: &str, mode: &str) -> String {
    format!(
        r#"
        name = "batch-windows"
        {mode}
        batch_size = 300
        [[sources]]
        name = "in"
        kind = "file"
        path = {input}
        format = "csv"
        columns = ["ts", "word"]
        key_field = "word"
        timestamp_field = "ts"
        watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 100, interval_ms = 50 }}
        [[operators]]
        name = "win"
        kind = "window"
        component = {udf}
        parallelism = 2
        window = {window}
        [[sinks]]
        name = "out"
        kind = "file"
        path = "{out}"
        [[edges]]
        from = "in"
        to = "win"
        [[edges]]
        from = "win"
        to = "out"
        partition = "rebalance"
        "#,
        input = lit(input),
        udf = lit(&udf("window_count")),
    )
}

/// Equal maps, or a panic naming the first few differences.
fn assert_same(got: &BTreeMap<(String, i64, i64), u64>, want: &BTreeMap<(String, i64, i64), u64>, what: &str) {
    let diff: Vec<String> = got
        .iter()
        .filter(|(k, v)| want.get(*k) != Some(v))
        .map(|(k, v)| format!("got {k:?}={v} want {:?}", want.get(k)))
        .chain(
            want.iter()
                .filter(|(k, _)| !got.contains_key(*k))
                .map(|(k, v)| format!("missing {k:?}={v}")),
        )
        .take(8)
        .collect();
    assert!(diff.is_empty(), "{what}: {} vs {} windows; {diff:#?}", got.len(), want.len());
}

/// (word, start, end) → count.
fn windows(lines: &[Value]) -> BTreeMap<(String, i64, i64), u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let k = (
            l["word"].as_str().unwrap().to_owned(),
            l["start"].as_i64().unwrap(),
            l["end"].as_i64().unwrap(),
        );
        assert!(m.insert(k, l["count"].as_u64().unwrap()).is_none(), "a window fired twice: {l}");
    }
    m
}

#[test]
fn batch_windows_equal_streaming_and_an_independent_count() {
    let dir = temp_dir("batch-windows");
    let rows = timed_rows(40_000, 5_000, 5);
    let input = dir.join("in.csv");
    std::fs::write(&input, rows.iter().map(|(t, w)| format!("{t},{w}\n")).collect::<String>()).unwrap();
    // Tumbling windows: the count per word and second, computed here.
    let mut expected = BTreeMap::new();
    for (t, w) in &rows {
        let start = t - t % 1000;
        *expected.entry((w.clone(), start, start + 1000)).or_insert(0u64) += 1;
    }
    let tumbling = r#"{ assigner = "tumbling", size_ms = 1000 }"#;
    run_toml(&window_job(&input, "tumbling-streaming.jsonl", tumbling, ""), &dir).unwrap();
    run_toml(&window_job(&input, "tumbling-batch.jsonl", tumbling, "mode = \"batch\""), &dir).unwrap();
    let streaming = windows(&read_json_lines(&dir.join("tumbling-streaming.jsonl")));
    let batch = windows(&read_json_lines(&dir.join("tumbling-batch.jsonl")));
    assert_same(&batch, &expected, "tumbling, batch vs the count here");
    assert_same(&batch, &streaming, "tumbling, batch vs streaming");
    // Sessions merge windows: batch fires each key's sessions at the key's end.
    let sessions = r#"{ assigner = "session", gap_ms = 40 }"#;
    run_toml(&window_job(&input, "sessions-streaming.jsonl", sessions, ""), &dir).unwrap();
    run_toml(&window_job(&input, "sessions-batch.jsonl", sessions, "mode = \"batch\""), &dir).unwrap();
    let streaming = windows(&read_json_lines(&dir.join("sessions-streaming.jsonl")));
    let batch = windows(&read_json_lines(&dir.join("sessions-batch.jsonl")));
    let mut expected = BTreeMap::new();
    let mut by_word: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (t, w) in &rows {
        by_word.entry(w).or_default().push(*t);
    }
    for (w, times) in by_word {
        let (mut start, mut last, mut n) = (times[0], times[0], 0u64);
        for &t in &times {
            // Windows that touch merge, as in Flink.
            if t > last + 40 {
                expected.insert((w.to_owned(), start, last + 40), n);
                (start, n) = (t, 0);
            }
            last = t;
            n += 1;
        }
        expected.insert((w.to_owned(), start, last + 40), n);
    }
    assert_same(&streaming, &expected, "sessions, streaming vs the count here");
    assert_same(&batch, &expected, "sessions, batch vs the count here");
    assert_eq!(batch, streaming);
}

#[test]
fn a_batch_job_whose_input_is_over_its_sort_memory_spills_and_counts_right() {
    let dir = temp_dir("batch-spill");
    // 400,000 words over 100,000 distinct ones: ~25 MB to sort, 1 MiB to sort in.
    let rows = text(400_000, 100_000, 3);
    let input = dir.join("in.csv");
    let mut csv = String::new();
    for (i, w) in rows.split_whitespace().enumerate() {
        csv.push_str(&format!("{i},{w}\n"));
    }
    std::fs::write(&input, &csv).unwrap();
    let expected = expected_counts(&rows);
    let spec = |budget_mb: u32| {
        format!(
            r#"
            name = "batch-spill"
            mode = "batch"
            [batch]
            sort_memory_mb = {budget_mb}
            spill_dir = "spill"
            [[sources]]
            name = "in"
            kind = "file"
            path = {input}
            format = "csv"
            columns = ["ts", "word"]
            key_field = "word"
            timestamp_field = "ts"
            [[operators]]
            name = "count"
            kind = "keyed-process"
            component = {count}
            [[sinks]]
            name = "out"
            kind = "file"
            path = "out.jsonl"
            [[edges]]
            from = "in"
            to = "count"
            [[edges]]
            from = "count"
            to = "out"
            "#,
            input = lit(&input),
            count = lit(&udf("count")),
        )
    };
    // Run the job with a sort budget; (sorted runs written, peak RSS in MB).
    let run = |budget_mb: u32| -> (u32, f64) {
        let spec_path = dir.join("spill.toml");
        std::fs::write(&spec_path, spec(budget_mb)).unwrap();
        let out = Command::new(sluice_bin())
            .args(["run", spec_path.to_str().unwrap()])
            .env("SLUICE_LOG", "sluice=info")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let sorted = stderr
            .lines()
            .find(|l| l.contains("sorted the task's input by key"))
            .unwrap_or_else(|| panic!("no sort line in {stderr}"));
        let runs: u32 = sorted
            .split("runs=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(sorted.contains("spilled past its memory budget"), runs > 0, "{sorted}");
        let rss: f64 = stderr
            .split("peak RSS ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no peak RSS in {stderr}"))
            .parse()
            .unwrap();
        assert_exact_updates(&updates(&read_json_lines(&dir.join("out.jsonl"))), &expected);
        // The spill directory is left empty.
        let left: Vec<_> = std::fs::read_dir(dir.join("spill")).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        (runs, rss)
    };
    let (runs, spilled_rss) = run(1);
    assert!(runs >= 10, "{runs} runs");
    let (none, memory_rss) = run(512);
    assert_eq!(none, 0, "512 MiB holds the whole input");
    // Spilling is what keeps the memory down: the sort's ~25 MB stay on disk.
    assert!(
        spilled_rss + 10.0 < memory_rss,
        "peak RSS {spilled_rss} MB spilled, {memory_rss} MB in memory"
    );
    eprintln!("batch spill: {runs} sorted runs, peak RSS {spilled_rss} MB; sorted in memory: peak RSS {memory_rss} MB");
}

#[test]
fn a_failed_task_of_a_batch_job_runs_again_alone_from_its_inputs() {
    let dir = temp_dir("batch-region");
    let input = dir.join("words.txt");
    let words = text(30_000, 500, 21);
    std::fs::write(&input, &words).unwrap();
    let expected = expected_counts(&words);
    let word = "w3";
    assert!(expected[word] >= 5);
    // `count` traps on w3's third update in its first attempt only.
    let trap = format!(r#"{{"word":"{word}","count":3}}"#);
    let spec = format!(
        r#"
        name = "batch-region"
        mode = "batch"
        batch_size = 200
        restart = {{ strategy = "fixed-delay", attempts = 2, delay_ms = 10 }}
        [[sources]]
        name = "lines"
        kind = "file"
        path = {input}
        [[operators]]
        name = "tokenize"
        kind = "flat-map"
        component = {tokenize}
        parallelism = 2
        [[operators]]
        name = "count"
        kind = "keyed-process"
        component = {count}
        parallelism = 2
        [[operators]]
        name = "check"
        kind = "map"
        component = {trap}
        parallelism = 2
        config = {{ trap_on = {trap_on}, only_attempt = 0 }}
        [[sinks]]
        name = "out"
        kind = "file"
        path = "out.jsonl"
        [[edges]]
        from = "lines"
        to = "tokenize"
        partition = "rebalance"
        [[edges]]
        from = "tokenize"
        to = "count"
        [[edges]]
        from = "count"
        to = "check"
        [[edges]]
        from = "check"
        to = "out"
        partition = "rebalance"
        "#,
        input = lit(&input),
        tokenize = lit(&udf("tokenize")),
        count = lit(&udf("count")),
        trap = lit(&udf("test_trap")),
        trap_on = lit(Path::new(&trap)),
    );
    let summary = run_toml(&spec, &dir).unwrap();
    assert_eq!(summary.restarts, 1, "one task ran again");
    assert_exact_updates(&updates(&read_json_lines(&dir.join("out.jsonl"))), &expected);
    let node = |name: &str| summary.metrics.iter().find(|m| m.name == name).unwrap();
    let lines = words.lines().count() as u64;
    let total: u64 = expected.values().sum();
    // The source and the tokenizer ran once: their results were kept.
    assert_eq!(node("lines").records_out(), lines);
    assert_eq!(node("tokenize").records_in(), lines);
    assert_eq!(node("tokenize").records_out(), total);
    // A `count` subtask ran twice: it read its input again.
    let subtasks: Vec<u64> = node("count").subtasks().iter().map(|s| s.records_in).collect();
    let again = subtasks.iter().sum::<u64>() - total;
    assert!(again > 0 && again <= *subtasks.iter().max().unwrap(), "{subtasks:?}");
    assert_eq!(node("out").records_in(), total, "the sink ran once, after the re-run");
    assert!(!dir.join("out.jsonl.inprogress").exists(), "the finished sink renamed its file");
    eprintln!("batch region failover: count subtasks read {subtasks:?} records ({again} again), {total} words");
}

#[test]
fn a_server_runs_a_batch_job_and_chooses_where_it_spills() {
    use crate::server::{TestServer, committed_lines, expect, expected_wordcount, put_input, upload, wait_for, wordcount};
    let server = TestServer::start("api-batch", &[("acme", "max_state_mb = 32")]);
    let c = server.client("acme");
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in/words.txt");
    let mut spec = wordcount(&tokenize, &count, "in/words.txt", "out", None, false);
    spec["mode"] = "batch".into();
    // A tenant does not choose where the server writes.
    spec["batch"] = serde_json::json!({"spill_dir": "/tmp/elsewhere"});
    let r = c.post_json("/v1/jobs", &serde_json::json!({ "spec": spec })).unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("batch.spill_dir"), "{}", r.text());
    spec["batch"] = serde_json::json!({"sort_memory_mb": 1024});
    let job = expect(
        c.post_json("/v1/jobs", &serde_json::json!({ "spec": spec })).unwrap(),
        201,
        "submitting the batch job",
    );
    let id = job["id"].as_str().unwrap();
    let done = wait_for(&c, id, &["finished", "failed"], std::time::Duration::from_secs(60));
    assert_eq!(done["state"], "finished", "{done}");
    assert_eq!(committed_lines(&c, "out"), expected_wordcount());
}

#[test]
fn the_batch_example_runs_from_the_cli_and_its_plan_says_batch() {
    let examples = crate::harness::root().join("examples");
    let out = Command::new(sluice_bin())
        .current_dir(&examples)
        .args(["plan", "wordcount-batch.toml"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(plan.contains("batch mode: every exchange between tasks is blocking"), "{plan}");
    // Run it into a test directory (its own sink path is under out/).
    let dir = temp_dir("batch-example");
    let spec = std::fs::read_to_string(examples.join("wordcount-batch.toml"))
        .unwrap()
        .replace("data/wordcount.txt", &examples.join("data/wordcount.txt").display().to_string())
        .replace("../udfs/", &format!("{}/", crate::harness::root().join("udfs").display()))
        .replace("../out/wordcount-batch.jsonl", "out.jsonl");
    std::fs::write(dir.join("job.toml"), spec).unwrap();
    let run = Command::new(sluice_bin())
        .current_dir(&dir)
        .args(["run", "job.toml"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("batch mode, 0 task re-runs, peak RSS"), "{stderr}");
    let text = std::fs::read_to_string(examples.join("data/wordcount.txt")).unwrap();
    assert_exact_updates(&updates(&read_json_lines(&dir.join("out.jsonl"))), &expected_counts(&text));
}

#[test]
fn a_failed_batch_job_leaves_no_partial_output_and_the_previous_output_stands() {
    let dir = temp_dir("batch-whole");
    let input = dir.join("words.txt");
    let words = text(20_000, 300, 8);
    std::fs::write(&input, &words).unwrap();
    let expected = expected_counts(&words);
    // `check` and the sink are chained into the `count` tasks: a trap in
    // `check` fails a task that has already written part of its file.
    let spec = |trap_on: &str| {
        format!(
            r#"
            name = "batch-whole"
            mode = "batch"
            batch_size = 100
            [[sources]]
            name = "lines"
            kind = "file"
            path = {input}
            [[operators]]
            name = "count"
            kind = "keyed-process"
            component = {count}
            parallelism = 2
            [[operators]]
            name = "check"
            kind = "map"
            component = {trap}
            parallelism = 2
            config = {{ trap_on = {trap_on} }}
            [[operators]]
            name = "tokenize"
            kind = "flat-map"
            component = {tokenize}
            [[sinks]]
            name = "out"
            kind = "file"
            path = "out"
            parallelism = 2
            [[edges]]
            from = "lines"
            to = "tokenize"
            [[edges]]
            from = "tokenize"
            to = "count"
            [[edges]]
            from = "count"
            to = "check"
            [[edges]]
            from = "check"
            to = "out"
            "#,
            input = lit(&input),
            count = lit(&udf("count")),
            trap = lit(&udf("test_trap")),
            tokenize = lit(&udf("tokenize")),
            trap_on = lit(Path::new(trap_on)),
        )
    };
    let parts = |d: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    run_toml(&spec("never"), &dir).unwrap();
    assert_eq!(parts(&dir.join("out")), ["part-0.jsonl", "part-1.jsonl"]);
    let lines = |d: &Path| {
        let mut v = read_json_lines(&d.join("part-0.jsonl"));
        v.extend(read_json_lines(&d.join("part-1.jsonl")));
        v
    };
    assert_exact_updates(&updates(&lines(&dir.join("out"))), &expected);
    let before = (
        std::fs::read(dir.join("out/part-0.jsonl")).unwrap(),
        std::fs::read(dir.join("out/part-1.jsonl")).unwrap(),
    );
    // The default strategy runs a failed task 3 more times; this trap fails every attempt.
    let trap = r#"{"word":"w2","count":40}"#;
    assert!(expected["w2"] >= 40);
    let e = run_toml(&spec(trap), &dir).unwrap_err();
    assert!(e.to_string().contains("asked to trap"), "{e}");
    // The finished files are the first run's, untouched; the failed run's are in progress only.
    let after = (
        std::fs::read(dir.join("out/part-0.jsonl")).unwrap(),
        std::fs::read(dir.join("out/part-1.jsonl")).unwrap(),
    );
    assert!(before == after, "the previous output was changed");
    assert!(
        parts(&dir.join("out")).iter().any(|n| n.ends_with(".inprogress")),
        "{:?}",
        parts(&dir.join("out"))
    );
}
