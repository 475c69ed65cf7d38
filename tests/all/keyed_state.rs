//! Host-owned keyed state through the guest SDK: isolation between keys,
//! list paging, map and value states, on more than one subtask.

use std::collections::HashMap;

use crate::harness::{lit, read_json_lines, run_toml, temp_dir, udf};

#[test]
fn keys_never_see_each_other_and_lists_page() {
    let dir = temp_dir("state");
    let input = dir.join("in.jsonl");
    let cmds = [
        ("a", "add:1"),
        ("b", "add:2"),
        ("a", "add:3"),
        ("a", "fill:700"),
        ("c", "fill:3"),
        ("c", "clear"),
        ("c", "add:9"),
        ("b", "dump"),
        ("a", "dump"),
        ("c", "dump"),
    ];
    let lines: Vec<String> = cmds.iter().map(|(k, c)| format!(r#"{{"k":"{k}","cmd":"{c}"}}"#)).collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let toml = format!(
        r#"
        name = "state"
        batch_size = 2
        [[sources]]
        name = "in"
        kind = "file"
        path = {input}
        format = "json"
        key_field = "k"
        [[operators]]
        name = "probe"
        kind = "keyed-process"
        component = {probe}
        parallelism = 2
        [[sinks]]
        name = "out"
        kind = "file"
        path = {out}
        [[edges]]
        from = "in"
        to = "probe"
        [[edges]]
        from = "probe"
        to = "out"
        partition = "rebalance"
        "#,
        input = lit(&input),
        out = lit(&out),
        probe = lit(&udf("test_state_probe")),
    );
    run_toml(&toml, &dir).unwrap();
    let dumps: HashMap<String, serde_json::Value> = read_json_lines(&out)
        .into_iter()
        .map(|v| (v["key"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(dumps.len(), 3);

    let b = &dumps["b"];
    assert_eq!(b["list"], serde_json::json!(["2"]));
    assert_eq!(b["map"], serde_json::json!([["2", 1]]));
    assert_eq!(b["count"], 2);

    // 702 elements: read back through three pages of the SDK's 256-entry scans.
    let a = &dumps["a"];
    let list: Vec<&str> = a["list"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    let mut want = vec!["1".to_owned(), "3".to_owned()];
    want.extend((0..700).map(|i: u32| i.to_string()));
    assert_eq!(list, want);
    assert_eq!(a["map"], serde_json::json!([["1", 1], ["3", 2]]));
    assert_eq!(a["count"], 4);

    // `clear` removed c's list and count; the later add starts afresh.
    let c = &dumps["c"];
    assert_eq!(c["list"], serde_json::json!(["9"]));
    assert_eq!(c["count"], 2);
}

/// Value states of many keys in one batch are read in pages of about 1 MiB
/// and written back early once a batch's writes pass 1 MiB: with 300 KB per
/// key and twelve keys per batch, both happen, and every key still reads
/// back exactly its own value.
#[test]
fn big_value_states_of_many_keys_in_one_batch_read_and_write_back_whole() {
    let dir = temp_dir("state-big");
    let input = dir.join("in.jsonl");
    let keys: Vec<String> = (0..12).map(|i| format!("k{}", (b'a' + i) as char)).collect();
    let mut lines = Vec::new();
    for cmd in ["pad:300000", "pad:300000", "pad:5", "dump"] {
        for k in &keys {
            lines.push(format!(r#"{{"k":"{k}","cmd":"{cmd}"}}"#));
        }
    }
    std::fs::write(&input, lines.join("\n")).unwrap();
    let out = dir.join("out.jsonl");
    let toml = format!(
        r#"
        name = "state-big"
        batch_size = 12
        [[sources]]
        name = "in"
        kind = "file"
        path = {input}
        format = "json"
        key_field = "k"
        [[operators]]
        name = "probe"
        kind = "keyed-process"
        component = {probe}
        [[sinks]]
        name = "out"
        kind = "file"
        path = {out}
        [[edges]]
        from = "in"
        to = "probe"
        [[edges]]
        from = "probe"
        to = "out"
        "#,
        input = lit(&input),
        out = lit(&out),
        probe = lit(&udf("test_state_probe")),
    );
    run_toml(&toml, &dir).unwrap();
    let dumps: HashMap<String, serde_json::Value> = read_json_lines(&out)
        .into_iter()
        .map(|v| (v["key"].as_str().unwrap().to_owned(), v))
        .collect();
    assert_eq!(dumps.len(), keys.len(), "{dumps:?}");
    for k in &keys {
        assert_eq!(dumps[k]["pad"], 600_005, "key {k}");
        assert_eq!(dumps[k]["count"], 4, "key {k}");
    }
}
