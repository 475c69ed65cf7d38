//! The word count: golden output against an independent count.

use std::collections::HashMap;

use crate::harness::{lit, read_json_lines, root, run_toml, temp_dir, udf};

/// The reference tokenizer, written independently of the UDF.
pub(crate) fn expected_counts(text: &str) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    let mut word = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_alphanumeric() {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            *counts.entry(std::mem::take(&mut word)).or_insert(0) += 1;
        }
    }
    counts
}

/// The word count job over `input` into `out`.
pub(crate) fn job(input: &std::path::Path, out: &std::path::Path, parallelism: u32, batch_size: usize) -> String {
    format!(
        r#"
        name = "wordcount"
        batch_size = {batch_size}
        [[sources]]
        name = "lines"
        kind = "file"
        path = {input}
        [[operators]]
        name = "tokenize"
        kind = "flat-map"
        component = {tokenize}
        parallelism = {parallelism}
        [[operators]]
        name = "count"
        kind = "keyed-process"
        component = {count}
        parallelism = {parallelism}
        [[sinks]]
        name = "out"
        kind = "file"
        path = {out}
        [[edges]]
        from = "lines"
        to = "tokenize"
        partition = "rebalance"
        [[edges]]
        from = "tokenize"
        to = "count"
        [[edges]]
        from = "count"
        to = "out"
        partition = "rebalance"
        "#,
        input = lit(input),
        out = lit(out),
        tokenize = lit(&udf("tokenize")),
        count = lit(&udf("count")),
    )
}

#[test]
fn hello_world_twice_counts_like_flink() {
    let dir = temp_dir("hello");
    let input = dir.join("in.txt");
    std::fs::write(&input, "hello world\nhello world\n").unwrap();
    let out = dir.join("out.jsonl");
    run_toml(&job(&input, &out, 1, 1), &dir).unwrap();
    let got: Vec<(String, u64)> = read_json_lines(&out)
        .iter()
        .map(|v| (v["word"].as_str().unwrap().to_owned(), v["count"].as_u64().unwrap()))
        .collect();
    let want = [("hello", 1), ("world", 1), ("hello", 2), ("world", 2)].map(|(w, c)| (w.to_owned(), c));
    assert_eq!(got, want);
}

#[test]
fn example_word_count_matches_an_independent_count() {
    let input = root().join("examples/data/wordcount.txt");
    let text = std::fs::read_to_string(&input).unwrap();
    let expected = expected_counts(&text);
    assert!(expected.len() > 1000, "the sample text should be real text");
    for parallelism in [1, 3] {
        let dir = temp_dir("wordcount");
        let out = dir.join("out.jsonl");
        let summary = run_toml(&job(&input, &out, parallelism, 1024), &dir).unwrap();
        let updates = read_json_lines(&out);
        assert_eq!(
            updates.len() as u64,
            expected.values().sum::<u64>(),
            "one update per word occurrence"
        );
        // Per word, the updates are exactly 1, 2, …, n in order.
        let mut last: HashMap<String, u64> = HashMap::new();
        for u in &updates {
            let (w, c) = (u["word"].as_str().unwrap().to_owned(), u["count"].as_u64().unwrap());
            let prev = last.insert(w.clone(), c).unwrap_or(0);
            assert_eq!(c, prev + 1, "word {w:?} jumped from {prev} to {c}");
        }
        assert_eq!(last, expected, "final counts at parallelism {parallelism}");
        let count = summary.metrics.iter().find(|m| m.name == "count").unwrap();
        assert_eq!(count.records_in(), updates.len() as u64);
        assert_eq!(count.parallelism, parallelism);
    }
}
