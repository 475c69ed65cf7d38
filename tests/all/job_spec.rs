//! Bad jobs and bad components are rejected before anything runs, with
//! errors that name the problem. (Pure spec validation is unit-tested in
//! `host/src/job/graph.rs`.)

use crate::harness::{engine, lit, run_toml, temp_dir, udf};

fn job(kind: &str, component: &str) -> String {
    format!(
        r#"
        name = "j"
        [[sources]]
        name = "gen"
        kind = "generator"
        count = 10
        keys = 3
        [[operators]]
        name = "op"
        kind = "{kind}"
        component = {component}
        [[sinks]]
        name = "out"
        kind = "stdout"
        [[edges]]
        from = "gen"
        to = "op"
        [[edges]]
        from = "op"
        to = "out"
        "#
    )
}

#[test]
fn a_component_of_the_wrong_world_is_rejected_before_the_job_starts() {
    let dir = temp_dir("world");
    let err = run_toml(&job("map", &lit(&udf("count"))), &dir).unwrap_err().to_string();
    assert!(
        err.starts_with("operator `op` is a map and needs a component of world `stateless` (sluice:udf/stateless@0.1.0)"),
        "{err}"
    );
    assert!(
        err.contains("targets world `keyed-process` (sluice:udf/keyed-process@0.1.0), which fits kind = \"keyed-process\""),
        "{err}"
    );
    let err = run_toml(&job("keyed-process", &lit(&udf("tokenize"))), &dir)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs a component of world `keyed-process` (sluice:udf/keyed-process@0.1.0)"),
        "{err}"
    );
}

#[test]
fn missing_and_non_component_files_are_named() {
    let dir = temp_dir("missing");
    let err = run_toml(&job("map", "\"nope.wasm\""), &dir).unwrap_err().to_string();
    assert!(
        err.starts_with("operator `op`: component ") && err.contains("nope.wasm is missing"),
        "{err}"
    );

    std::fs::write(dir.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let err = run_toml(&job("map", "\"core.wasm\""), &dir).unwrap_err().to_string();
    assert!(err.contains("a core WebAssembly module, not a component"), "{err}");

    std::fs::write(dir.join("text.wasm"), b"hello, not wasm").unwrap();
    let err = run_toml(&job("map", "\"text.wasm\""), &dir).unwrap_err().to_string();
    assert!(err.contains("not a WebAssembly component"), "{err}");
}

#[test]
fn keyless_records_into_a_keyed_operator_fail_clearly() {
    let dir = temp_dir("keyless");
    // A source that gives no keys: refused before the job starts.
    let toml = job("keyed-process", &lit(&udf("count"))).replace("keys = 3", "");
    let err = run_toml(&toml, &dir).unwrap_err().to_string();
    assert_eq!(
        err,
        "`op`: a keyed operator needs records with keys, but generator `gen` gives its records no key: set `keys` (how many distinct keys)"
    );
    // A map whose UDF emits no key: found at the first record.
    let toml = toml
        .replace(
            "[[sinks]]",
            &format!(
                "[[operators]]\n        name = \"up\"\n        kind = \"map\"\n        component = {}\n        [[sinks]]",
                lit(&udf("uppercase"))
            ),
        )
        .replace(
            "from = \"gen\"\n        to = \"op\"",
            "from = \"gen\"\n        to = \"up\"\n        [[edges]]\n        from = \"up\"\n        to = \"op\"",
        );
    let err = run_toml(&toml, &dir).unwrap_err().to_string();
    assert!(err.contains("a record without a key"), "{err}");
    assert!(err.contains("hash-partitioned input of `op`"), "{err}");
}

#[test]
fn malformed_json_input_names_file_and_line() {
    let dir = temp_dir("json");
    std::fs::write(dir.join("in.jsonl"), "{\"a\":1}\n{not json\n").unwrap();
    let toml = job("map", &lit(&udf("uppercase"))).replace(
        "kind = \"generator\"\n        count = 10\n        keys = 3",
        "kind = \"file\"\n        path = \"in.jsonl\"\n        format = \"json\"",
    );
    let err = run_toml(&toml, &dir).unwrap_err().to_string();
    assert!(err.contains("in.jsonl line 2: invalid JSON"), "{err}");
}

#[test]
fn compiled_components_are_cached_by_digest() {
    let e = engine();
    let a = e.load_file(&udf("uppercase")).unwrap();
    let b = e.load_file(&udf("uppercase")).unwrap();
    assert_eq!(a.digest, b.digest);
    let cache = crate::harness::root().join("target/test-component-cache");
    let cached = std::fs::read_dir(cache)
        .unwrap()
        .filter_map(Result::ok)
        .any(|f| f.file_name().to_string_lossy().starts_with(&a.digest.0));
    assert!(cached, "a serialized compiled component is kept on disk");
}
