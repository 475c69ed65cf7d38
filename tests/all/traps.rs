//! Guests that trap or fail records.

use crate::harness::{lit, read_json_lines, run_toml, temp_dir, udf};

fn job(dir: &std::path::Path, config: &str, policy: &str) -> String {
    let input = dir.join("in.txt");
    std::fs::write(&input, "a\nb\nboom\nc\nbad\nd\n").unwrap();
    format!(
        r#"
        name = "traps"
        on_record_error = "{policy}"
        batch_size = 2
        [[sources]]
        name = "in"
        kind = "file"
        path = {input}
        [[operators]]
        name = "trapper"
        kind = "map"
        component = {trap}
        config = {config}
        [[sinks]]
        name = "out"
        kind = "file"
        path = "out.jsonl"
        [[edges]]
        from = "in"
        to = "trapper"
        [[edges]]
        from = "trapper"
        to = "out"
        "#,
        input = lit(&input),
        trap = lit(&udf("test_trap")),
    )
}

#[test]
fn a_trap_fails_the_job_naming_operator_and_trap() {
    let dir = temp_dir("trap");
    let err = run_toml(&job(&dir, r#"{ trap_on = "boom" }"#, "fail"), &dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("operator `trapper` subtask 0"), "{err}");
    assert!(err.contains("trap"), "{err}");
    assert!(
        err.contains("asked to trap on \"boom\""),
        "the guest's panic message is reported: {err}"
    );
}

#[test]
fn a_failed_record_fails_the_job_or_is_skipped_by_policy() {
    let dir = temp_dir("fail");
    let err = run_toml(&job(&dir, r#"{ fail_on = "bad" }"#, "fail"), &dir)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "operator `trapper` subtask 0 failed on record \"bad\": refusing record \"bad\""
    );

    let dir = temp_dir("skip");
    let summary = run_toml(&job(&dir, r#"{ fail_on = "bad" }"#, "skip"), &dir).unwrap();
    let out: Vec<_> = read_json_lines(&dir.join("out.jsonl"))
        .into_iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(out, ["a", "b", "boom", "c", "d"]);
    let m = summary.metrics.iter().find(|m| m.name == "trapper").unwrap();
    assert_eq!((m.records_in(), m.records_out(), m.records_failed()), (6, 5, 1));
}
