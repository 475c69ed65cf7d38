//! A hostile tenant against a real `sluice serve` run under a 4 GiB
//! data-size limit (`prlimit --data`), so an unbounded allocation would show
//! as an abort: every job that once took the server down now ends as a 4xx
//! at submit or as a failed job whose error names the limit it crossed,
//! while another tenant's word count finishes with exact output.

use std::time::Duration;

use serde_json::{Value, json};
use sluice::wasm::compile::shaped_component;

use crate::server::{TestServer, committed_lines, expect, expected_wordcount, put_input, upload, wait_for, wordcount};

/// A 4 GiB data-size limit for the server process.
const DATA_LIMIT: u64 = 4 << 30;

fn submit(c: &sluice::api::Client, spec: &Value) -> sluice::api::ApiResponse {
    c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap()
}

/// Submit `spec`, wait for it to fail, and check its error names `limit`.
fn fails_naming(c: &sluice::api::Client, spec: Value, limit: &str) {
    let name = spec["name"].as_str().unwrap_or_default().to_owned();
    let id = expect(submit(c, &spec), 201, &name)["id"].as_str().unwrap().to_owned();
    let v = wait_for(c, &id, &["failed", "finished"], Duration::from_secs(120));
    let error = v["error"].as_str().unwrap_or_default();
    assert_eq!(v["state"], "failed", "{name} should fail: {v}");
    assert!(error.contains(limit), "{name}: the error names `{limit}`: {error}");
}

/// JSON lines `{"k": key}` in the tenant's file area.
fn put_json_lines(c: &sluice::api::Client, path: &str, n: usize, key: impl Fn(usize) -> String) {
    let body: String = (0..n).map(|i| format!("{{\"k\":\"{}\"}}\n", key(i))).collect();
    expect(c.put_bytes(&format!("/v1/files/{path}"), body.into_bytes()).unwrap(), 201, path);
}

fn join_spec(name: &str, left: &str, right: &str, join: Option<Value>) -> Value {
    let mut op = json!({"name": "join", "kind": "join"});
    if let Some(j) = join {
        op["join"] = j;
    }
    json!({
        "name": name,
        "sources": [
            {"name": "left", "kind": "file", "path": left, "format": "json", "key_field": "k"},
            {"name": "right", "kind": "file", "path": right, "format": "json", "key_field": "k"}
        ],
        "operators": [op],
        "sinks": [{"name": "out", "kind": "discard"}],
        "edges": [
            {"from": "left", "to": "join", "input": 0},
            {"from": "right", "to": "join", "input": 1},
            {"from": "join", "to": "out"}
        ]
    })
}

/// A keyed-process job over one JSON record `{"k": "a", "cmd": command}`
/// (written to the tenant's `in/<name>.jsonl`).
fn one_command_job(c: &sluice::api::Client, name: &str, command: &str, component: &str, config: Value) -> Value {
    let path = format!("in/{name}.jsonl");
    let line = json!({"k": "a", "cmd": command}).to_string() + "\n";
    expect(c.put_bytes(&format!("/v1/files/{path}"), line.into_bytes()).unwrap(), 201, name);
    json!({
        "name": name,
        "sources": [{"name": "in", "kind": "file", "path": path, "format": "json", "key_field": "k"}],
        "operators": [{"name": "op", "kind": "keyed-process", "component": component, "config": config}],
        "sinks": [{"name": "out", "kind": "discard"}],
        "edges": [{"from": "in", "to": "op"}, {"from": "op", "to": "out"}]
    })
}

#[test]
fn hostile_jobs_fail_with_named_limits_while_another_tenant_runs() {
    let mut server = TestServer::start_limited(
        "hostile-limits",
        &[
            ("good", ""),
            ("evil", "max_state_mb = 64\nmax_running_jobs = 20\nmax_total_parallelism = 64"),
        ],
        Some(DATA_LIMIT),
    );
    let good = server.client("good");
    let (tokenize, count) = (upload(&good, "tokenize"), upload(&good, "count"));
    put_input(&good, "in/words.txt");
    let canary = wordcount(&tokenize, &count, "in/words.txt", "out/wc", Some(4000), true);
    let canary = expect(submit(&good, &canary), 201, "canary")["id"].as_str().unwrap().to_owned();

    let evil = server.client("evil");
    let (probe, timers, hostile) = (
        upload(&evil, "test_state_probe"),
        upload(&evil, "test_timer_probe"),
        upload(&evil, "test_hostile"),
    );

    // Refused at submit: a Zipf table of 2^40 keys, a join putting each record
    // in 10^15 windows.
    let zipf = json!({
        "name": "zipf-bomb",
        "sources": [{"name": "g", "kind": "generator", "count": 10, "keys": 1u64 << 40, "distribution": "zipf"}],
        "sinks": [{"name": "out", "kind": "discard"}],
        "edges": [{"from": "g", "to": "out"}]
    });
    let r = submit(&evil, &zipf);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("zipf"), "{}", r.text());
    put_json_lines(&evil, "in/a.jsonl", 200, |i| format!("k{i}"));
    let sliding = join_spec(
        "join-windows",
        "in/a.jsonl",
        "in/a.jsonl",
        Some(json!({"window": "sliding", "size_ms": 1_000_000_000_000_000i64, "slide_ms": 1})),
    );
    let r = submit(&evil, &sliding);
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("windows; at most 10000"), "{}", r.text());

    // Big values in huge batches: batches stay bounded, and the job runs.
    let big = json!({
        "name": "big-values",
        "batch_size": 1_048_576,
        "sources": [{"name": "g", "kind": "generator", "count": 40, "value_size": 16 << 20}],
        "sinks": [{"name": "out", "kind": "discard"}],
        "edges": [{"from": "g", "to": "out"}]
    });
    let id = expect(submit(&evil, &big), 201, "big values")["id"].as_str().unwrap().to_owned();
    let v = wait_for(&evil, &id, &["failed", "finished"], Duration::from_secs(120));
    assert_eq!(v["state"], "finished", "{v}");

    // A regular join on one hot key: pairs are emitted as they are made, and
    // past the pairs-per-batch limit the job fails.
    put_json_lines(&evil, "in/hot.jsonl", 20_000, |_| "hot".into());
    fails_naming(
        &evil,
        join_spec("hot-join", "in/hot.jsonl", "in/hot.jsonl", None),
        "pairs-per-batch limit",
    );

    // Keyed state put inside one call (50 M list entries), refused at the
    // write that crosses the tenant's 64 MiB.
    let fill = one_command_job(&evil, "state-in-one-call", "fill:50000000", &probe, json!({}));
    fails_naming(&evil, fill, "state size limit exceeded");

    // Window state of many keys is metered too.
    let windows = json!({
        "name": "window-keys",
        "sources": [{"name": "g", "kind": "generator", "count": 12_000_000, "keys": 12_000_000u64,
                     "events_per_second": 1_000_000, "watermarks": {"strategy": "bounded", "max_out_of_orderness_ms": 0}}],
        "operators": [{"name": "w", "kind": "window", "window": {"assigner": "tumbling", "size_ms": 1_000_000_000, "aggregate": "count"}}],
        "sinks": [{"name": "out", "kind": "discard"}],
        "edges": [{"from": "g", "to": "w"}, {"from": "w", "to": "out"}]
    });
    fails_naming(&evil, windows, "state size limit exceeded");

    // Join state of distinct keys is metered too.
    put_json_lines(&evil, "in/distinct.jsonl", 1_000_000, |i| format!("key-{i}"));
    fails_naming(
        &evil,
        join_spec("join-state", "in/distinct.jsonl", "in/a.jsonl", None),
        "state size limit exceeded",
    );

    // Millions of timers registered in one call, metered with the state.
    let config = json!({"domain": "processing-time", "delay": 3_600_000});
    let flood = one_command_job(&evil, "timer-flood", "many:20000000", &timers, config);
    fails_naming(&evil, flood, "state size limit exceeded");

    // A flat-map emitting 100 MiB records at parallelism 4 (over the bytes
    // one call may emit), and one emitting 20 MiB records (over the size of
    // one record).
    expect(
        evil.put_bytes("/v1/files/in/boom.txt", b"boom\nboom\nboom\nboom\n".to_vec())
            .unwrap(),
        201,
        "boom input",
    );
    for (bytes, limit) in [
        (100 << 20, "limits.max_output_bytes_per_call"),
        (20 << 20, "limits.max_record_bytes"),
    ] {
        let bloat = json!({
            "name": "bloat",
            "batch_size": 1,
            "sources": [{"name": "in", "kind": "file", "path": "in/boom.txt"}],
            "operators": [{"name": "evil", "kind": "flat-map", "component": hostile, "parallelism": 4,
                           "config": {"on": "boom", "act": "emit", "bytes": bytes}}],
            "sinks": [{"name": "out", "kind": "discard", "parallelism": 4}],
            "edges": [{"from": "in", "to": "evil", "partition": "rebalance"}, {"from": "evil", "to": "out"}]
        });
        fails_naming(&evil, bloat, limit);
    }

    // The other tenant was never disturbed.
    let v = wait_for(&good, &canary, &["finished", "failed"], Duration::from_secs(180));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(committed_lines(&good, "out/wc"), expected_wordcount());
    assert!(server.alive(), "the server survived every hostile job");
    // Once the hostile jobs have ended, the server holds no more than its
    // start-up memory plus caches and allocator slack: under 1 GiB.
    let rss = server.rss_kb();
    assert!(rss < 1 << 20, "server RSS after the hostile jobs: {rss} KiB");
    // And its disk holds the hostile tenant's inputs (~20 MB) and components,
    // nothing of the jobs: under 64 MiB.
    let disk = dir_bytes(&server.tenant_dir("evil"));
    assert!(disk < 64 << 20, "the hostile tenant's disk after its jobs: {disk} bytes");
}

/// Bytes of the files under `dir` (links not followed).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

#[test]
fn compile_bombs_are_refused_at_upload_and_the_server_keeps_serving() {
    let mut server = TestServer::start_configured(
        "hostile-compile",
        "compile_timeout_ms = 300",
        &[("good", ""), ("evil", "")],
        &[format!("--data={DATA_LIMIT}")],
    );
    let evil = server.client("evil");
    for (what, component, says) in [
        ("a million functions", shaped_component(1_000_000, 0), "more than 200000 functions"),
        ("one 7.5 MB function", shaped_component(1, 7_500_000), "bytes per function"),
        ("slow to compile", shaped_component(190_000, 8), "compiling took longer than 300 ms"),
    ] {
        let r = evil.post_bytes("/v1/components", component).unwrap();
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.text().contains(says), "{what}: {}", r.text());
        assert!(server.alive(), "{what}: the server survived");
    }
    // Nothing of them is kept, and real uploads still work, for both tenants.
    let listed = expect(evil.get("/v1/components").unwrap(), 200, "list");
    assert_eq!(listed["components"].as_array().map(Vec::len), Some(0), "{listed}");
    upload(&evil, "tokenize");
    upload(&server.client("good"), "tokenize");
}

#[test]
fn at_the_file_limit_the_server_backs_off_and_serves_again() {
    // 64 descriptors: a crowd of connections exhausts them, so `accept`
    // fails with EMFILE until they close.
    let mut server = TestServer::start_configured("hostile-fds", "", &[("good", "")], &["--nofile=64".to_owned()]);
    let addr = server.addr.trim_start_matches("http://").to_owned();
    let crowd: Vec<std::net::TcpStream> = (0..120).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    std::thread::sleep(Duration::from_secs(2));
    assert!(server.alive(), "the server survived running out of descriptors");
    drop(crowd);
    // Once they are gone it answers again, within its backoff.
    let good = server.client("good");
    let start = std::time::Instant::now();
    let answered = loop {
        if let Ok(r) = good.get("/v1/jobs")
            && r.status == 200
        {
            break true;
        }
        if start.elapsed() > Duration::from_secs(20) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answered, "the server serves again once descriptors are free");
    // The failures were logged at most once a second, not once per spin.
    let log = std::fs::read_to_string(&server.log).unwrap_or_default();
    assert!(log.contains("accept failed"), "the descriptors ran out: {log}");
    assert!(log.len() < 64 << 10, "the server log grew to {} bytes", log.len());
}
