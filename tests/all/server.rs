//! The HTTP API: a real `sluice serve` process on 127.0.0.1, driven by a
//! real HTTP client (`sluice::api::Client`, hyper over TCP).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::api::{ApiResponse, Client};

use crate::harness::{root, run_toml, sluice_bin, temp_dir, udf};
use crate::wordcount::job;

/// A `sluice serve` child process, killed when dropped.
pub(crate) struct TestServer {
    child: Child,
    pub(crate) addr: String,
    data: PathBuf,
    pub(crate) log: PathBuf,
}

impl TestServer {
    /// Start a server whose tenants are `(id, quotas as TOML lines)`; tenant
    /// `x` has the token `x-token`.
    pub(crate) fn start(name: &str, tenants: &[(&str, &str)]) -> Self {
        Self::start_limited(name, tenants, None)
    }

    /// The same, under a data-size limit (`prlimit --data`) when given, so an
    /// unbounded allocation aborts the server instead of meeting the OOM killer.
    pub(crate) fn start_limited(name: &str, tenants: &[(&str, &str)], data_bytes: Option<u64>) -> Self {
        let data = data_bytes.map(|n| format!("--data={n}"));
        Self::start_configured(name, "", tenants, data.as_slice())
    }

    /// The same with server `[limits]` (TOML lines).
    pub(crate) fn start_with(name: &str, limits: &str, tenants: &[(&str, &str)]) -> Self {
        Self::start_configured(name, limits, tenants, &[])
    }

    /// With `[limits]` (TOML lines) and process limits (`prlimit` options
    /// such as `--data=N` or `--nofile=N`; none: no prlimit).
    pub(crate) fn start_configured(name: &str, limits: &str, tenants: &[(&str, &str)], prlimits: &[String]) -> Self {
        Self::start_full(name, "", limits, tenants, prlimits)
    }

    /// The same with an admin token, `admin-token`.
    pub(crate) fn start_with_admin(name: &str, tenants: &[(&str, &str)]) -> Self {
        let admin = format!("admin_token_sha256 = \"{}\"\n", sluice::tenancy::token_hash("admin-token"));
        Self::start_full(name, &admin, "", tenants, &[])
    }

    /// With top-level config lines, `[limits]` (TOML lines) and process
    /// limits.
    fn start_full(name: &str, top: &str, limits: &str, tenants: &[(&str, &str)], prlimits: &[String]) -> Self {
        let dir = temp_dir(name);
        let mut config = String::from("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n");
        config.push_str(top);
        config.push_str(&format!("[limits]\n{limits}\n"));
        for (id, quotas) in tenants {
            config.push_str(&format!(
                "[[tenants]]\nid = \"{id}\"\ntoken_sha256 = \"{}\"\n[tenants.quotas]\n{quotas}\n",
                sluice::tenancy::token_hash(&format!("{id}-token"))
            ));
        }
        std::fs::write(dir.join("sluice.toml"), config).unwrap();
        let stderr = std::fs::File::create(dir.join("server.log")).unwrap();
        let mut command = if prlimits.is_empty() {
            Command::new(sluice_bin())
        } else {
            let mut c = Command::new("prlimit");
            c.args(prlimits).arg(sluice_bin());
            c
        };
        let mut child = command
            .args(["serve", "--config"])
            .arg(dir.join("sluice.toml"))
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning sluice serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("reading the server's first line");
        let addr = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                panic!("the server did not start: {line:?}\n{log}")
            })
            .to_owned();
        TestServer {
            child,
            addr,
            data: dir.join("data"),
            log: dir.join("server.log"),
        }
    }

    /// A raw connection (for what `Client` hides: headers, half-sent
    /// requests, idle sockets), with 10 s read and write timeouts.
    fn raw(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr.trim_start_matches("http://")).expect("connecting");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub(crate) fn client(&self, tenant: &str) -> Client {
        Client::new(&self.addr, Some(format!("{tenant}-token"))).unwrap()
    }

    fn anonymous(&self) -> Client {
        Client::new(&self.addr, None).unwrap()
    }

    pub(crate) fn tenant_dir(&self, tenant: &str) -> PathBuf {
        self.data.join("tenants").join(tenant)
    }

    /// Still running?
    pub(crate) fn alive(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_none()
    }

    /// Resident memory, KiB.
    pub(crate) fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn expect(r: ApiResponse, status: u16, what: &str) -> Value {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    r.json()
}

/// Upload a built UDF; its digest.
pub(crate) fn upload(c: &Client, name: &str) -> String {
    let r = c.post_bytes("/v1/components", std::fs::read(udf(name)).unwrap()).unwrap();
    assert!(r.status == 201 || r.status == 200, "uploading {name}: {}", r.text());
    r.json()["digest"].as_str().unwrap().to_owned()
}

/// The word count as a JSON spec: `lines` from `input` (rate-capped), into
/// `output` (a directory when `checkpoints`).
pub(crate) fn wordcount(tokenize: &str, count: &str, input: &str, output: &str, rate: Option<u64>, checkpoints: bool) -> Value {
    let mut spec = json!({
        "name": "wordcount",
        "sources": [{"name": "lines", "kind": "file", "path": input, "records_per_second": rate}],
        "operators": [
            {"name": "tokenize", "kind": "flat-map", "component": tokenize, "parallelism": 2},
            {"name": "count", "kind": "keyed-process", "component": count, "parallelism": 2}
        ],
        "sinks": [{"name": "out", "kind": "file", "path": output, "parallelism": 2}],
        "edges": [
            {"from": "lines", "to": "tokenize", "partition": "rebalance"},
            {"from": "tokenize", "to": "count", "partition": "hash"},
            {"from": "count", "to": "out"}
        ]
    });
    if checkpoints {
        spec["checkpoints"] = json!({"interval_ms": 150});
    }
    spec
}

/// Poll a job until its state is one of `states`.
pub(crate) fn wait_for(c: &Client, id: &str, states: &[&str], timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let v = expect(c.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "job status");
        let state = v["state"].as_str().unwrap_or_default().to_owned();
        if states.contains(&state.as_str()) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "job {id} is {state}, not one of {states:?}, after {timeout:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sorted lines of a file in the tenant's file area.
fn file_lines(c: &Client, path: &str) -> Vec<String> {
    let r = c.get(&format!("/v1/files/{path}")).unwrap();
    assert_eq!(r.status, 200, "reading {path}: {}", r.text());
    let body = r.text();
    let mut lines: Vec<String> = body.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// Sorted committed lines of a two-phase-commit sink directory.
pub(crate) fn committed_lines(c: &Client, dir: &str) -> Vec<String> {
    let listing = expect(c.get(&format!("/v1/files/{dir}")).unwrap(), 200, "listing output");
    let mut lines = Vec::new();
    for e in listing["entries"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap();
        if name.starts_with("part-") {
            let body = c.get(&format!("/v1/files/{dir}/{name}")).unwrap().text();
            lines.extend(body.lines().map(str::to_owned));
        }
    }
    lines.sort();
    lines
}

/// The word count's output from an uninterrupted in-process run.
pub(crate) fn expected_wordcount() -> Vec<String> {
    let dir = temp_dir("server-expected");
    let out = dir.join("out.jsonl");
    run_toml(&job(&root().join("examples/data/wordcount.txt"), &out, 1, 1024), &dir).unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(out).unwrap().lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

pub(crate) fn put_input(c: &Client, path: &str) {
    let bytes = std::fs::read(root().join("examples/data/wordcount.txt")).unwrap();
    expect(c.put_bytes(&format!("/v1/files/{path}"), bytes).unwrap(), 201, "uploading input");
}

#[test]
fn the_whole_flow_upload_submit_output_savepoint_restore() {
    let mut server = TestServer::start("api-flow", &[("acme", "")]);
    let c = server.client("acme");
    let expected = expected_wordcount();
    let tokenize = upload(&c, "tokenize");
    let count = upload(&c, "count");
    // The same bytes again: stored once.
    let again = c.post_bytes("/v1/components", std::fs::read(udf("count")).unwrap()).unwrap();
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(again.json()["digest"], count.as_str());
    let listed = expect(c.get("/v1/components").unwrap(), 200, "components");
    assert_eq!(listed["components"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(
        expect(c.get(&format!("/v1/components/{count}")).unwrap(), 200, "component")["world"],
        "sluice:udf/keyed-process@0.1.0"
    );
    put_input(&c, "in/words.txt");

    // Submit, poll to finished, read the output.
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/plain", None, false);
    let job = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit");
    let id = job["id"].as_str().unwrap().to_owned();
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(done["state"], "finished", "{done}");
    let count_op = done["operators"].as_array().unwrap().iter().find(|o| o["name"] == "count").unwrap();
    assert_eq!(count_op["records_out"], expected.len() as u64, "{done}");
    assert_eq!(count_op["parallelism"], 2);
    let listing = expect(c.get("/v1/files/out/plain").unwrap(), 200, "output dir");
    let mut got = Vec::new();
    for e in listing["entries"].as_array().unwrap() {
        got.extend(file_lines(&c, &format!("out/plain/{}", e["name"].as_str().unwrap())));
    }
    got.sort();
    assert_eq!(got, expected, "the server's word count equals the in-process run");
    assert!(expect(c.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"].as_array().unwrap().len() == 1);

    // A checkpointed job, savepointed while it runs, then stopped with a
    // savepoint, then restored from it by a new submission.
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/eo", Some(1500), true);
    let job = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for(&c, &id, &["running"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(600));
    let sp = expect(
        c.send("POST", &format!("/v1/jobs/{id}/savepoints"), None).unwrap(),
        201,
        "savepoint",
    );
    let first = sp["savepoint"].as_str().unwrap().to_owned();
    assert!(first.starts_with(&format!("{id}/savepoint-")), "{sp}");
    std::thread::sleep(Duration::from_millis(300));
    let stopped = expect(c.send("POST", &format!("/v1/jobs/{id}/stop"), None).unwrap(), 201, "stop");
    let savepoint = stopped["savepoint"].as_str().unwrap().to_owned();
    let v = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(30));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(v["stopped_with_savepoint"], savepoint.as_str(), "{v}");
    assert!(v["checkpoints"]["completed"].as_u64().unwrap() >= 2, "{v}");
    let sps = expect(c.get(&format!("/v1/jobs/{id}/savepoints")).unwrap(), 200, "savepoints");
    let ids: Vec<&str> = sps["savepoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["savepoint"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [first.as_str(), savepoint.as_str()], "{sps}");
    expect(c.get(&format!("/v1/jobs/{id}/checkpoints")).unwrap(), 200, "checkpoints");
    let partial = committed_lines(&c, "out/eo");
    assert!(
        !partial.is_empty() && partial.len() < expected.len(),
        "stopped midway: {} of {} lines",
        partial.len(),
        expected.len()
    );

    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/eo", None, true);
    let job = expect(
        c.post_json("/v1/jobs", &json!({ "spec": spec, "savepoint": savepoint })).unwrap(),
        201,
        "submit from savepoint",
    );
    let id2 = job["id"].as_str().unwrap().to_owned();
    let v = wait_for(&c, &id2, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(
        committed_lines(&c, "out/eo"),
        expected,
        "stop with savepoint + restore = the uninterrupted output"
    );

    // Logs, metrics, and an unknown savepoint.
    let logs = expect(c.get(&format!("/v1/jobs/{id2}/logs")).unwrap(), 200, "logs");
    assert!(logs["lines"].is_array(), "{logs}");
    let metrics = c.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for series in [
        format!("sluice_operator_records_out_total{{tenant=\"acme\",job=\"{id2}\",operator=\"count\"}}"),
        "sluice_operator_busy_seconds_total".to_owned(),
        "sluice_operator_backpressured_seconds_total".to_owned(),
        "sluice_job_last_checkpoint_duration_seconds".to_owned(),
        "sluice_tenant_guest_cpu_seconds_total{tenant=\"acme\"}".to_owned(),
        "sluice_tenant_guest_memory_bytes{tenant=\"acme\"} 0".to_owned(),
        "sluice_guest_instances 0".to_owned(),
    ] {
        assert!(text.contains(&series), "metrics lack {series}:\n{text}");
    }
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/x", None, true);
    let r = c
        .post_json(
            "/v1/jobs",
            &json!({ "spec": spec, "savepoint": format!("{id}/savepoint-00000999") }),
        )
        .unwrap();
    assert_eq!(r.status, 404, "{}", r.text());
    let openapi = expect(server.anonymous().get("/v1/openapi.json").unwrap(), 200, "openapi");
    assert!(openapi["paths"]["/v1/jobs"]["post"].is_object());
    assert!(server.alive());
}

#[test]
fn tenants_cannot_see_or_touch_each_other() {
    let mut server = TestServer::start("api-auth", &[("acme", ""), ("beta", "")]);
    let (a, b) = (server.client("acme"), server.client("beta"));
    let tokenize = upload(&a, "tokenize");
    let count = upload(&a, "count");
    put_input(&a, "in/words.txt");
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/eo", Some(400), true);
    let job = expect(a.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit");
    let id = job["id"].as_str().unwrap().to_owned();
    wait_for(&a, &id, &["running"], Duration::from_secs(30));
    let sp = expect(
        a.send("POST", &format!("/v1/jobs/{id}/savepoints"), None).unwrap(),
        201,
        "savepoint",
    );
    let savepoint = sp["savepoint"].as_str().unwrap().to_owned();

    // No token, or a wrong one: 401 everywhere but the open routes.
    let anon = server.anonymous();
    let wrong = Client::new(&server.addr, Some("nope".into())).unwrap();
    for (m, p) in [
        ("GET", "/v1/components".to_owned()),
        ("POST", "/v1/components".to_owned()),
        ("GET", "/v1/jobs".to_owned()),
        ("GET", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("GET", "/metrics".to_owned()),
        ("GET", "/v1/files/in/words.txt".to_owned()),
    ] {
        for c in [&anon, &wrong] {
            let r = c.send(m, &p, None).unwrap();
            assert_eq!(r.status, 401, "{m} {p}: {}", r.text());
            assert_eq!(r.json()["error"]["code"], "unauthorized");
        }
    }
    assert_eq!(anon.get("/healthz").unwrap().status, 200);

    // Tenant B gets 404 for everything of A's.
    for (m, p) in [
        ("GET", format!("/v1/components/{count}")),
        ("DELETE", format!("/v1/components/{count}")),
        ("GET", format!("/v1/jobs/{id}")),
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("POST", format!("/v1/jobs/{id}/stop")),
        ("POST", format!("/v1/jobs/{id}/savepoints")),
        ("GET", format!("/v1/jobs/{id}/savepoints")),
        ("GET", format!("/v1/jobs/{id}/checkpoints")),
        ("GET", format!("/v1/jobs/{id}/logs")),
        ("DELETE", format!("/v1/jobs/{id}")),
        ("GET", "/v1/files/in/words.txt".to_owned()),
    ] {
        let r = b.send(m, &p, None).unwrap();
        assert_eq!(r.status, 404, "beta {m} {p}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_found");
    }
    assert_eq!(expect(b.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"], json!([]));
    assert_eq!(expect(b.get("/v1/components").unwrap(), 200, "components")["components"], json!([]));
    let metrics = b.get("/metrics").unwrap().text();
    assert!(!metrics.contains("tenant=\"acme\""), "beta's metrics show acme:\n{metrics}");
    // B cannot use A's components or savepoints either.
    put_input(&b, "in/words.txt");
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/b", None, true);
    let r = b.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.error_message().contains("no uploaded component"), "{}", r.text());
    let (bt, bc) = (upload(&b, "tokenize"), upload(&b, "count"));
    let spec = wordcount(&bt, &bc, "in/words.txt", "out/b", None, true);
    let r = b.post_json("/v1/jobs", &json!({ "spec": spec, "savepoint": savepoint })).unwrap();
    assert_eq!(r.status, 404, "{}", r.text());

    // A's job is untouched by B's attempts, and A can cancel it.
    let v = expect(a.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "status");
    assert_eq!(v["state"], "running", "{v}");
    expect(a.send("POST", &format!("/v1/jobs/{id}/cancel"), None).unwrap(), 202, "cancel");
    wait_for(&a, &id, &["canceled"], Duration::from_secs(30));
    let r = a.send("POST", &format!("/v1/jobs/{id}/cancel"), None).unwrap();
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(server.alive());
}

/// A hostile job for tenant `acme`: `test_hostile` acting on record `boom`
/// in the middle of a batch.
fn hostile(c: &Client, digest: &str, act: &str, output: &str) -> String {
    let spec = json!({
        "name": format!("hostile-{act}"),
        "batch_size": 5,
        "sources": [{"name": "in", "kind": "file", "path": "in/hostile.txt"}],
        "operators": [{"name": "evil", "kind": "map", "component": digest, "config": {"on": "boom", "act": act}}],
        "sinks": [{"name": "out", "kind": "file", "path": output}],
        "edges": [{"from": "in", "to": "evil"}, {"from": "evil", "to": "out"}]
    });
    let job = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, act);
    job["id"].as_str().unwrap().to_owned()
}

#[test]
fn hostile_guests_fail_only_their_own_job() {
    let mut server = TestServer::start(
        "api-hostile",
        &[
            ("acme", "memory_mb = 64\ncall_timeout_ms = 1000\nlog_lines_per_sec = 20"),
            ("beta", ""),
            ("metered", "fuel_metering = true\nfuel_per_call = 200000000"),
            ("tiny", "max_state_mb = 0"),
        ],
    );
    let (a, b) = (server.client("acme"), server.client("beta"));
    let evil = upload(&a, "test_hostile");
    expect(
        a.put_bytes("/v1/files/in/hostile.txt", b"a\nb\nboom\nc\nd\ne\n".to_vec()).unwrap(),
        201,
        "input",
    );
    let expected = expected_wordcount();
    let (bt, bc) = (upload(&b, "tokenize"), upload(&b, "count"));
    put_input(&b, "in/words.txt");
    let spec = wordcount(&bt, &bc, "in/words.txt", "out/wc", Some(500), true);
    let victim = expect(b.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "beta's job")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&b, &victim, &["running"], Duration::from_secs(30));

    let cases = [
        ("loop", "CPU time limit exceeded"),
        ("alloc", "memory limit exceeded"),
        ("recurse", "stack overflow"),
        ("trap", "hostile guest traps on \"boom\""),
    ];
    let ids: Vec<(String, &str, &str)> = cases
        .iter()
        .map(|(act, msg)| (hostile(&a, &evil, act, &format!("out/{act}.jsonl")), *act, *msg))
        .collect();
    let flood = hostile(&a, &evil, "log-flood", "out/flood.jsonl");
    for (id, act, msg) in &ids {
        let v = wait_for(&a, id, &["failed", "finished", "canceled"], Duration::from_secs(60));
        assert_eq!(v["state"], "failed", "{act}: {v}");
        let err = v["error"].as_str().unwrap_or_default();
        assert!(err.contains(msg), "{act}: expected {msg:?} in {err:?}");
        assert!(err.contains("operator `evil`"), "{act}: {err}");
        assert!(server.alive(), "the server survived {act}");
    }
    let v = wait_for(&a, &flood, &["failed", "finished"], Duration::from_secs(60));
    assert_eq!(v["state"], "finished", "a log flood is cut, not fatal: {v}");
    let logs = expect(a.get(&format!("/v1/jobs/{flood}/logs?tail=1000")).unwrap(), 200, "logs");
    let (written, limited) = (logs["written"].as_u64().unwrap(), logs["rate_limited"].as_u64().unwrap());
    assert!(written <= 60, "at 20 lines/s the flood keeps few lines: {logs}");
    assert!(
        limited >= 9_900,
        "the rate limit dropped the flood: {written} written, {limited} dropped"
    );
    assert!(logs["lines"].as_array().unwrap().len() as u64 == written);
    let metrics = a.get("/metrics").unwrap().text();
    assert!(
        metrics.contains("sluice_tenant_log_lines_dropped_total{tenant=\"acme\"} "),
        "{metrics}"
    );

    let v = expect(b.get(&format!("/v1/jobs/{victim}")).unwrap(), 200, "victim");
    assert_eq!(v["state"], "running", "beta's job outlived the hostile jobs: {v}");

    // Fuel: a metered tenant's loop burns its budget; its usage is reported.
    let m = server.client("metered");
    let evil_m = upload(&m, "test_hostile");
    expect(
        m.put_bytes("/v1/files/in/hostile.txt", b"a\nb\nboom\nc\n".to_vec()).unwrap(),
        201,
        "input",
    );
    let id = hostile(&m, &evil_m, "loop", "out/loop.jsonl");
    let v = wait_for(&m, &id, &["failed", "finished"], Duration::from_secs(60));
    let err = v["error"].as_str().unwrap_or_default();
    assert!(err.contains("burned more than 200000000 fuel"), "{v}");
    let metrics = m.get("/metrics").unwrap().text();
    let fuel: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_tenant_fuel_consumed_total{tenant=\"metered\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(fuel >= 200_000_000.0, "fuel is reported per tenant: {fuel}");

    // State: a tenant over its keyed-state quota fails its job.
    let t = server.client("tiny");
    let (tt, tc) = (upload(&t, "tokenize"), upload(&t, "count"));
    put_input(&t, "in/words.txt");
    let spec = wordcount(&tt, &tc, "in/words.txt", "out/wc", None, false);
    let id = expect(t.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "tiny")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = wait_for(&t, &id, &["failed", "finished"], Duration::from_secs(60));
    assert!(v["error"].as_str().unwrap_or_default().contains("state size limit exceeded"), "{v}");

    // A trap on the first attempt only: the job restarts from its
    // checkpoint (passing through `restarting`) and finishes.
    let trap = upload(&a, "test_trap");
    let spec = json!({
        "name": "trap-once",
        "restart": {"strategy": "fixed-delay", "attempts": 2, "delay_ms": 300},
        "checkpoints": {"interval_ms": 100},
        "sources": [{"name": "in", "kind": "file", "path": "in/hostile.txt", "records_per_second": 20}],
        "operators": [{"name": "trapper", "kind": "map", "component": trap,
                       "config": {"trap_on": "boom", "only_attempt": 0}}],
        "sinks": [{"name": "out", "kind": "file", "path": "out/trap-once"}],
        "edges": [{"from": "in", "to": "trapper"}, {"from": "trapper", "to": "out"}]
    });
    let id = expect(a.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "trap-once")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&a, &id, &["restarting"], Duration::from_secs(60));
    let v = wait_for(&a, &id, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(v["restarts"], 1, "{v}");
    assert!(
        v["exceptions"][0]["message"].as_str().unwrap_or_default().contains("asked to trap"),
        "{v}"
    );
    assert_eq!(committed_lines(&a, "out/trap-once").len(), 6);

    // Beta's job ran beside all of it and is still exact.
    let v = wait_for(&b, &victim, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(committed_lines(&b, "out/wc"), expected);
    assert!(server.alive());
    let m = server.anonymous().get("/healthz").unwrap();
    assert_eq!(m.status, 200);
}

#[test]
fn bad_input_is_refused_clearly_and_nothing_is_stored() {
    let mut server = TestServer::start(
        "api-bad",
        &[(
            "gamma",
            "max_upload_bytes = 1048576\nmax_components = 2\nmax_total_parallelism = 8\nmax_running_jobs = 1",
        )],
    );
    let c = server.client("gamma");
    let refused = |r: ApiResponse, status: u16, code: &str, text: &str| {
        assert_eq!(r.status, status, "{}", r.text());
        assert_eq!(r.json()["error"]["code"], code, "{}", r.text());
        assert!(r.error_message().contains(text), "expected {text:?} in {:?}", r.error_message());
    };
    refused(
        c.post_bytes("/v1/components", b"hello, not wasm".to_vec()).unwrap(),
        400,
        "invalid_component",
        "not a WebAssembly component",
    );
    refused(
        c.post_bytes("/v1/components", b"\0asm\x01\0\0\0".to_vec()).unwrap(),
        400,
        "invalid_component",
        "core WebAssembly module",
    );
    refused(
        c.post_bytes("/v1/components", std::fs::read(udf("test_not_a_udf")).unwrap())
            .unwrap(),
        400,
        "invalid_component",
        "exports no Sluice world",
    );
    refused(
        c.post_bytes("/v1/components", vec![0u8; 2 << 20]).unwrap(),
        413,
        "payload_too_large",
        "1048576 bytes",
    );
    refused(
        c.post_bytes("/v1/components", Vec::new()).unwrap(),
        400,
        "invalid_component",
        "empty",
    );
    let tokenize = upload(&c, "tokenize");
    let count = upload(&c, "count");
    refused(
        c.post_bytes("/v1/components", std::fs::read(udf("uppercase")).unwrap()).unwrap(),
        403,
        "quota_exceeded",
        "2 components",
    );
    put_input(&c, "in/words.txt");

    // Job requests.
    let bad_field = json!({"spec": {"name": "x", "operators": [{"name": "a", "kind": "map", "paralelism": 2}]}});
    refused(
        c.post_json("/v1/jobs", &bad_field).unwrap(),
        400,
        "invalid_job",
        "spec.operators[0]",
    );
    refused(
        c.send("POST", "/v1/jobs", Some(("application/json", b"{\"spec\": ".to_vec())))
            .unwrap(),
        400,
        "invalid_job",
        "invalid job request",
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    let spec = wordcount(&tokenize, &unknown, "in/words.txt", "out/wc", None, false);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        422,
        "unknown_component",
        &unknown,
    );
    let spec = wordcount(&tokenize, "../udfs/count.wasm", "in/words.txt", "out/wc", None, false);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        422,
        "invalid_job",
        "must be the digest",
    );
    let spec = wordcount(&tokenize, &count, "../../../etc/passwd", "out/wc", None, false);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        422,
        "invalid_job",
        "source `lines`",
    );
    let mut spec = wordcount(&tokenize, &count, "in/words.txt", "out/wc", None, false);
    spec["edges"] = json!([{"from": "lines", "to": "nowhere"}]);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        422,
        "invalid_job",
        "nowhere",
    );
    let mut spec = wordcount(&tokenize, &count, "in/words.txt", "out/wc", None, false);
    spec["operators"][1]["parallelism"] = json!(4);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        403,
        "quota_exceeded",
        "limit is 8",
    );
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/wc", Some(300), true);
    let running = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let spec = wordcount(&tokenize, &count, "in/words.txt", "out/wc2", None, false);
    refused(
        c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(),
        403,
        "quota_exceeded",
        "jobs running",
    );
    refused(
        c.delete(&format!("/v1/components/{count}")).unwrap(),
        409,
        "conflict",
        "used by running job",
    );
    refused(c.get("/v1/files/../../sluice.toml").unwrap(), 400, "invalid_path", "relative path");
    refused(
        c.put_bytes("/v1/files/.hidden", Vec::new()).unwrap(),
        400,
        "invalid_path",
        "reserved",
    );
    refused(c.send("PATCH", "/v1/jobs", None).unwrap(), 405, "method_not_allowed", "PATCH");

    // Nothing of the refused requests was stored.
    let listed = expect(c.get("/v1/components").unwrap(), 200, "components");
    assert_eq!(listed["components"].as_array().unwrap().len(), 2);
    let tenant = server.tenant_dir("gamma");
    let mut stored: Vec<String> = std::fs::read_dir(tenant.join("components"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    stored.sort();
    let hex = |d: &str| d.trim_start_matches("sha256:").to_owned();
    let mut want = vec![
        format!("{}.json", hex(&count)),
        format!("{}.wasm", hex(&count)),
        format!("{}.json", hex(&tokenize)),
        format!("{}.wasm", hex(&tokenize)),
    ];
    want.sort();
    assert_eq!(stored, want, "only the two accepted components are stored");
    let jobs: Vec<_> = std::fs::read_dir(tenant.join("jobs")).unwrap().collect();
    assert_eq!(jobs.len(), 1, "only the accepted job has a directory");
    let not_udf = sluice::wasm::ComponentDigest::of(&std::fs::read(udf("test_not_a_udf")).unwrap()).0;
    let cached: Vec<String> = std::fs::read_dir(server.data.join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !cached.iter().any(|n| n.starts_with(&not_udf)),
        "a rejected component leaves no compiled copy: {cached:?}"
    );
    expect(c.send("POST", &format!("/v1/jobs/{running}/cancel"), None).unwrap(), 202, "cancel");
    wait_for(&c, &running, &["canceled"], Duration::from_secs(30));
    assert!(server.alive());
}

/// A generator job that runs until cancelled.
fn endless(upper: &str, output: &str, checkpoints: bool) -> Value {
    let mut spec = json!({
        "name": "endless",
        "sources": [{"name": "gen", "kind": "generator", "count": 1_000_000_000u64, "keys": 100,
                     "value_size": 32, "records_per_second": 20000}],
        "operators": [{"name": "upper", "kind": "map", "component": upper}],
        "sinks": [{"name": "out", "kind": "file", "path": output}],
        "edges": [{"from": "gen", "to": "upper"}, {"from": "upper", "to": "out"}]
    });
    if checkpoints {
        spec["checkpoints"] = json!({"interval_ms": 100});
    }
    spec
}

/// One submit → run → cancel → delete cycle.
fn cycle(c: &Client, upper: &str, n: usize, pause: Duration) {
    let output = format!("out-{n}");
    let spec = endless(upper, &output, n.is_multiple_of(2));
    let job = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit");
    let id = job["id"].as_str().unwrap().to_owned();
    if !n.is_multiple_of(3) {
        wait_for(c, &id, &["running"], Duration::from_secs(30));
    }
    std::thread::sleep(pause);
    expect(c.send("POST", &format!("/v1/jobs/{id}/cancel"), None).unwrap(), 202, "cancel");
    wait_for(c, &id, &["canceled"], Duration::from_secs(30));
    expect(c.delete(&format!("/v1/jobs/{id}")).unwrap(), 204, "delete job");
    let r = c.delete(&format!("/v1/files/{output}")).unwrap();
    assert!(r.status == 204 || r.status == 404, "{}", r.text());
}

fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[test]
fn ten_tenants_submitting_and_cancelling_for_30_s_leak_nothing() {
    let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let spec: Vec<(&str, &str)> = tenants.iter().map(|t| (t.as_str(), "")).collect();
    let mut server = TestServer::start("api-load", &spec);
    let uppers: Vec<String> = tenants.iter().map(|t| upload(&server.client(t), "uppercase")).collect();
    // Warm up (first instantiations, allocator arenas), then take the baseline.
    for (t, u) in tenants.iter().zip(&uppers) {
        cycle(&server.client(t), u, 1, Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let baseline = server.rss_kb();

    let deadline = Instant::now() + Duration::from_secs(30);
    let cycles: usize = std::thread::scope(|s| {
        let workers: Vec<_> = tenants
            .iter()
            .zip(&uppers)
            .enumerate()
            .map(|(i, (t, u))| {
                let c = server.client(t);
                s.spawn(move || {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        cycle(&c, u, n, Duration::from_millis(20 + ((i * 37 + n * 53) % 200) as u64));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).sum()
    });
    assert!(cycles >= 50, "only {cycles} submit/cancel cycles in 30 s");
    assert!(server.alive());

    // No jobs, instances or files are left.
    for t in &tenants {
        let c = server.client(t);
        assert_eq!(expect(c.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"], json!([]), "{t}");
        let dir = server.tenant_dir(t);
        assert!(dir_is_empty(&dir.join("jobs")), "{t}: job directories left");
        assert!(dir_is_empty(&dir.join("files")), "{t}: files left");
    }
    let metrics = server.client("t0").get("/metrics").unwrap().text();
    assert!(metrics.contains("\nsluice_guest_instances 0\n"), "{metrics}");
    assert!(metrics.contains("sluice_tenant_guest_memory_bytes{tenant=\"t0\"} 0\n"), "{metrics}");
    std::thread::sleep(Duration::from_millis(500));
    let after = server.rss_kb();
    eprintln!("load: {cycles} cycles by 10 tenants; server RSS {baseline} KiB before, {after} KiB after");
    assert!(
        after <= baseline + baseline / 2 + 16 * 1024,
        "server memory did not return to its baseline: {baseline} KiB before, {after} KiB after {cycles} cycles"
    );
}

#[test]
fn the_cli_client_uploads_submits_lists_savepoints_and_cancels() {
    let server = TestServer::start("api-cli", &[("acme", "")]);
    let dir = temp_dir("api-cli-spec");
    let spec = dir.join("job.toml");
    std::fs::write(
        &spec,
        format!(
            r#"
            name = "cli-job"
            [checkpoints]
            interval_ms = 100
            [[sources]]
            name = "lines"
            kind = "file"
            path = "in/words.txt"
            records_per_second = 300
            [[operators]]
            name = "upper"
            kind = "map"
            component = {upper:?}
            [[sinks]]
            name = "out"
            kind = "file"
            path = "out/cli"
            [[edges]]
            from = "lines"
            to = "upper"
            [[edges]]
            from = "upper"
            to = "out"
            "#,
            upper = udf("uppercase").display().to_string()
        ),
    )
    .unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(sluice_bin())
            .args(args)
            .env("SLUICE_SERVER", &server.addr)
            .env("SLUICE_TOKEN", "acme-token")
            .output()
            .expect("running sluice");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "sluice {args:?}: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let words = root().join("examples/data/wordcount.txt");
    cli(&["put", words.to_str().unwrap(), "in/words.txt"]);
    let id = cli(&["submit", spec.to_str().unwrap()]);
    assert_eq!(id.len(), 16, "{id}");
    let c = server.client("acme");
    let listed = expect(c.get("/v1/components").unwrap(), 200, "components");
    assert_eq!(
        listed["components"][0]["world"], "sluice:udf/stateless@0.1.0",
        "submit uploaded the component"
    );
    wait_for(&c, &id, &["running"], Duration::from_secs(30));
    assert!(cli(&["jobs"]).contains(&id));
    let sp = cli(&["savepoint", &id]);
    assert!(sp.starts_with(&format!("{id}/savepoint-")), "{sp}");
    cli(&["cancel", &id]);
    wait_for(&c, &id, &["canceled"], Duration::from_secs(30));
    assert!(cli(&["jobs", &id, "--output", "json"]).contains("\"canceled\""));
    // Without a token the client says what to do.
    let out = Command::new(sluice_bin())
        .args(["jobs"])
        .env("SLUICE_SERVER", &server.addr)
        .env_remove("SLUICE_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("SLUICE_TOKEN"));
}

/// Read what the server sends on `s` until it closes the connection, the
/// read times out, or 64 KiB arrived; the text, and whether it closed.
fn read_until_closed(s: &mut TcpStream) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.len() > 64 << 10 {
                    break false;
                }
            }
            // A reset is a close too.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// One request on a raw connection; the answer's head (status line and
/// headers).
fn raw_head(server: &TestServer, request: &str) -> String {
    let mut s = server.raw();
    s.write_all(request.as_bytes()).unwrap();
    let (text, _) = read_until_closed(&mut s);
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

#[test]
fn slow_incomplete_bodies_from_many_connections_hold_only_their_budget() {
    let mut server = TestServer::start_with(
        "api-slow-bodies",
        "body_read_timeout_ms = 8000",
        &[("mallory", "max_bodies_in_flight = 4\nmax_body_mb_in_flight = 32"), ("beta", "")],
    );
    let b = server.client("beta");
    let expected = expected_wordcount();
    let (bt, bc) = (upload(&b, "tokenize"), upload(&b, "count"));
    put_input(&b, "in/words.txt");
    std::thread::sleep(Duration::from_millis(300));
    let baseline = server.rss_kb();

    // 40 connections each send all of a 16 MiB body but its last byte.
    const BODY: usize = 16 << 20;
    let started = Instant::now();
    let conns: Vec<(TcpStream, Option<String>)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..40)
            .map(|i| {
                let server = &server;
                s.spawn(move || {
                    let mut c = server.raw();
                    let head = format!(
                        "PUT /v1/files/big-{i} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer mallory-token\r\ncontent-length: {BODY}\r\n\r\n"
                    );
                    let chunk = vec![b'x'; 1 << 20];
                    let mut ok = c.write_all(head.as_bytes()).is_ok();
                    let mut left = BODY - 1;
                    while ok && left > 0 {
                        let n = left.min(chunk.len());
                        ok = c.write_all(&chunk[..n]).is_ok();
                        left -= n;
                    }
                    // A refused body is answered at once; a held one is not.
                    c.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
                    let mut buf = [0u8; 512];
                    let answer = match c.read(&mut buf) {
                        Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => None,
                        Err(e) => Some(format!("error: {e}")),
                    };
                    (c, answer)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("worker")).collect()
    });
    let (held, refused): (Vec<_>, Vec<_>) = conns.into_iter().partition(|(_, a)| a.is_none());
    eprintln!(
        "slow bodies: {} held, {} refused, in {:?}",
        held.len(),
        refused.len(),
        started.elapsed()
    );
    assert!(
        (1..=2).contains(&held.len()),
        "32 MiB of budget holds at most two 16 MiB bodies: {} held",
        held.len()
    );
    for (_, answer) in &refused {
        let a = answer.as_deref().unwrap_or_default();
        assert!(
            a.starts_with("HTTP/1.1 429") || a.starts_with("error:") || a.is_empty(),
            "a refused body is answered 429: {a:?}"
        );
    }
    // One more body of the same tenant, while those are held: 429 naming the quota.
    let m = server.client("mallory");
    let r = m.put_bytes("/v1/files/small.txt", b"0123456789".to_vec()).unwrap();
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.error_message().contains("max_body_mb_in_flight"), "{}", r.text());
    let rss = server.rss_kb();
    eprintln!("slow bodies: server RSS {baseline} KiB before, {rss} KiB while held");
    assert!(
        rss < baseline + 160 * 1024,
        "the server holds the budget, not 40 bodies: {baseline} KiB before, {rss} KiB now"
    );

    // Beside them, another tenant's word count runs to its exact output.
    assert_eq!(server.anonymous().get("/healthz").unwrap().status, 200);
    let spec = wordcount(&bt, &bc, "in/words.txt", "out/wc", None, true);
    let id = expect(b.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "beta's job")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = wait_for(&b, &id, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(v["state"], "finished", "{v}");
    assert_eq!(committed_lines(&b, "out/wc"), expected);

    // The held bodies meet their deadline: 408, and their connections close.
    for (mut c, _) in held {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (text, closed) = read_until_closed(&mut c);
        assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
        assert!(text.contains("body_read_timeout_ms") && closed, "{text:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let listing = expect(m.get("/v1/files").unwrap(), 200, "mallory's files");
    assert_eq!(listing["entries"], json!([]), "no partial body was stored");
    // Once they are gone, mallory may upload again.
    expect(m.put_bytes("/v1/files/small.txt", b"ok".to_vec()).unwrap(), 201, "a put after");
    assert!(server.alive());
}

#[test]
fn idle_and_slow_connections_are_closed_and_their_number_is_capped() {
    let server = TestServer::start_with(
        "api-idle",
        "header_read_timeout_ms = 1000\nidle_timeout_ms = 1500\nmax_connections = 4",
        &[("acme", "")],
    );
    let started = Instant::now();
    // Silent; headers half sent; kept alive after one answer; silent again.
    let silent = server.raw();
    let mut partial = server.raw();
    partial.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").unwrap();
    let mut kept = server.raw();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    kept.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let fourth = server.raw();
    std::thread::sleep(Duration::from_millis(100));
    // A fifth is over max_connections: 503 and closed at once.
    let mut fifth = server.raw();
    let (text, closed) = read_until_closed(&mut fifth);
    assert!(text.starts_with("HTTP/1.1 503") && text.contains("max_connections"), "{text:?}");
    assert!(closed && started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
    // The server closes each of the four after its timeout.
    for (what, mut c) in [
        ("silent", silent),
        ("partial headers", partial),
        ("kept alive", kept),
        ("fourth", fourth),
    ] {
        let (_, closed) = read_until_closed(&mut c);
        assert!(closed, "{what}: still open after {:?}", started.elapsed());
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(8),
        "closed after {took:?}"
    );
    // And it takes new connections again.
    assert_eq!(server.anonymous().get("/healthz").unwrap().status, 200);
}

#[test]
fn long_names_and_oversized_specs_are_refused_before_validation() {
    let mut server = TestServer::start("api-names", &[("acme", "")]);
    let c = server.client("acme");
    let upper = upload(&c, "uppercase");
    let spec = |job: &str, op: &str| {
        json!({"spec": {
            "name": job,
            "sources": [{"name": "gen", "kind": "generator", "count": 10}],
            "operators": [{"name": op, "kind": "map", "component": upper}],
            "sinks": [{"name": "out", "kind": "file", "path": "out/names"}],
            "edges": [{"from": "gen", "to": op}, {"from": op, "to": "out"}]
        }})
    };
    let refused = |r: ApiResponse, status: u16, texts: &[&str]| {
        assert_eq!(r.status, status, "{}", r.text());
        let m = r.error_message();
        assert!(m.len() < 1024, "the error does not echo the name: {} bytes", m.len());
        for t in texts {
            assert!(m.contains(t), "expected {t:?} in {m:?}");
        }
    };
    let huge = "j".repeat(900 << 10);
    refused(
        c.post_json("/v1/jobs", &spec(&huge, "upper")).unwrap(),
        422,
        &["`spec.name`", "921600 bytes", "at most 128 bytes", "max_name_bytes"],
    );
    let op = "o".repeat(129);
    refused(
        c.post_json("/v1/jobs", &spec("names", &op)).unwrap(),
        422,
        &["`spec.operators[0].name`", "129 bytes"],
    );
    let mut many = spec("names", "upper");
    many["spec"]["operators"] = (0..300)
        .map(|i| json!({"name": format!("op{i}"), "kind": "map", "component": upper}))
        .collect();
    refused(c.post_json("/v1/jobs", &many).unwrap(), 422, &["302 nodes", "max_spec_nodes"]);
    let mut big = spec("names", "upper");
    big["spec"]["operators"][0]["config"] = json!({"blob": "x".repeat(3 << 20)});
    refused(c.post_json("/v1/jobs", &big).unwrap(), 413, &["1048576 bytes"]);
    // At the limit, names are fine, and /metrics stays small.
    let name = "n".repeat(128);
    let id = expect(c.post_json("/v1/jobs", &spec(&name, &name)).unwrap(), 201, "128-byte names")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(30));
    assert_eq!(v["state"], "finished", "{v}");
    let metrics = c.get("/metrics").unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.len() < 64 << 10, "{} bytes", metrics.body.len());
    assert!(server.alive());
}

#[test]
fn a_symlink_in_a_file_area_is_never_followed() {
    let mut server = TestServer::start("api-symlink", &[("acme", ""), ("beta", "")]);
    let (a, b) = (server.client("acme"), server.client("beta"));
    expect(
        b.put_bytes("/v1/files/secret.txt", b"beta's secret".to_vec()).unwrap(),
        201,
        "beta's file",
    );
    expect(a.put_bytes("/v1/files/in/ok.txt", b"fine".to_vec()).unwrap(), 201, "acme's file");
    let (acme, beta) = (server.tenant_dir("acme").join("files"), server.tenant_dir("beta").join("files"));
    std::os::unix::fs::symlink(beta.join("secret.txt"), acme.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&beta, acme.join("linkdir")).unwrap();
    let forbidden = |r: ApiResponse, what: &str| {
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "not_a_regular_file", "{what}");
        assert!(!r.text().contains("beta's secret"), "{what}");
    };
    forbidden(a.get("/v1/files/link.txt").unwrap(), "get through a file link");
    forbidden(a.get("/v1/files/linkdir/secret.txt").unwrap(), "get through a directory link");
    forbidden(a.get("/v1/files/linkdir").unwrap(), "list a directory link");
    forbidden(
        a.put_bytes("/v1/files/link.txt", b"overwritten".to_vec()).unwrap(),
        "put over a link",
    );
    forbidden(
        a.put_bytes("/v1/files/linkdir/new.txt", b"planted".to_vec()).unwrap(),
        "put through a link",
    );
    forbidden(a.delete("/v1/files/link.txt").unwrap(), "delete a link");
    forbidden(a.delete("/v1/files/linkdir/secret.txt").unwrap(), "delete through a link");
    // Listings leave links out.
    let listing = expect(a.get("/v1/files").unwrap(), 200, "listing");
    assert_eq!(listing["entries"], json!([{"name": "in", "dir": true, "size": 0}]), "{listing}");
    // Jobs may neither read nor write through a link.
    let upper = upload(&a, "uppercase");
    for (input, output, what) in [("link.txt", "out/x", "source `in`"), ("in/ok.txt", "linkdir/out", "sink `out`")] {
        let spec = json!({"spec": {
            "name": "through-a-link",
            "sources": [{"name": "in", "kind": "file", "path": input}],
            "operators": [{"name": "upper", "kind": "map", "component": upper}],
            "sinks": [{"name": "out", "kind": "file", "path": output}],
            "edges": [{"from": "in", "to": "upper"}, {"from": "upper", "to": "out"}]
        }});
        let r = a.post_json("/v1/jobs", &spec).unwrap();
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(
            r.error_message().contains(what) && r.error_message().contains("symbolic link"),
            "{}",
            r.text()
        );
    }
    // Beta's area is untouched.
    assert_eq!(std::fs::read(beta.join("secret.txt")).unwrap(), b"beta's secret");
    assert!(!beta.join("new.txt").exists() && !beta.join("out").exists());
    assert!(server.alive());
}

#[test]
fn disk_quotas_refuse_puts_and_fail_writing_jobs_and_savepoints_are_pruned() {
    let mut server = TestServer::start_with(
        "api-disk",
        "disk_check_interval_ms = 300",
        &[("small", "max_disk_mb = 1\nmax_savepoints_per_job = 2")],
    );
    let c = server.client("small");
    expect(c.put_bytes("/v1/files/a.bin", vec![1; 600 << 10]).unwrap(), 201, "under the quota");
    let r = c.put_bytes("/v1/files/b.bin", vec![2; 600 << 10]).unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "disk_quota_exceeded");
    assert!(r.error_message().contains("max_disk_mb"), "{}", r.text());
    let listing = expect(c.get("/v1/files").unwrap(), 200, "listing");
    assert_eq!(
        listing["entries"].as_array().unwrap().len(),
        1,
        "the refused put stored nothing: {listing}"
    );
    // Replacing a file counts only the difference.
    expect(c.put_bytes("/v1/files/a.bin", vec![3; 700 << 10]).unwrap(), 201, "a replacement");
    expect(c.delete("/v1/files/a.bin").unwrap(), 204, "delete");

    // Savepoints beyond the retention are pruned, oldest first.
    let upper = upload(&c, "uppercase");
    let mut slow = endless(&upper, "out/sp", true);
    slow["sources"][0]["records_per_second"] = json!(50);
    let id = expect(c.post_json("/v1/jobs", &json!({ "spec": slow })).unwrap(), 201, "submit")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for(&c, &id, &["running"], Duration::from_secs(30));
    let mut taken = Vec::new();
    for _ in 0..3 {
        let sp = expect(
            c.send("POST", &format!("/v1/jobs/{id}/savepoints"), None).unwrap(),
            201,
            "savepoint",
        );
        taken.push(sp["savepoint"].as_str().unwrap().to_owned());
    }
    let kept = expect(c.get(&format!("/v1/jobs/{id}/savepoints")).unwrap(), 200, "savepoints");
    let kept: Vec<&str> = kept["savepoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["savepoint"].as_str().unwrap())
        .collect();
    assert_eq!(kept, [taken[1].as_str(), taken[2].as_str()]);
    expect(c.send("POST", &format!("/v1/jobs/{id}/cancel"), None).unwrap(), 202, "cancel");
    wait_for(&c, &id, &["canceled", "failed"], Duration::from_secs(30));

    // A job whose output outgrows the quota fails, naming it.
    let fast = endless(&upper, "out/fast", false);
    let id = expect(c.post_json("/v1/jobs", &json!({ "spec": fast })).unwrap(), 201, "submit")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = wait_for(&c, &id, &["failed", "finished", "canceled"], Duration::from_secs(30));
    assert_eq!(v["state"], "failed", "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("max_disk_mb"), "{v}");
    // Over the quota, a put is refused until space is freed.
    let r = c.put_bytes("/v1/files/c.bin", vec![4; 10]).unwrap();
    assert_eq!(r.status, 507, "{}", r.text());
    expect(c.delete("/v1/files/out").unwrap(), 204, "free the space");
    expect(c.put_bytes("/v1/files/c.bin", vec![4; 10]).unwrap(), 201, "a put after");
    assert!(server.alive());
}

#[test]
fn a_405_names_the_allowed_methods() {
    let server = TestServer::start("api-405", &[("acme", "")]);
    let head = raw_head(&server, "PATCH /v1/jobs HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.to_ascii_lowercase().contains("\r\nallow: get, post"), "{head}");
    let head = raw_head(
        &server,
        "PUT /v1/jobs/0123456789abcdef HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    );
    assert!(head.to_ascii_lowercase().contains("\r\nallow: delete, get"), "{head}");
}

#[test]
fn guest_log_lines_cannot_forge_server_log_lines() {
    let server = TestServer::start("api-log-escape", &[("acme", "")]);
    let c = server.client("acme");
    let evil = upload(&c, "test_hostile");
    expect(c.put_bytes("/v1/files/in/x.txt", b"a\nboom\nc\n".to_vec()).unwrap(), 201, "input");
    let forged = "2026-01-01T00:00:00.000000Z ERROR sluice::api: forged by a guest";
    let message = format!("first\n{forged}\r\x1b[2Kthird");
    let spec = json!({
        "name": "log-escape",
        "sources": [{"name": "in", "kind": "file", "path": "in/x.txt"}],
        "operators": [{"name": "evil", "kind": "map", "component": evil,
                       "config": {"on": "boom", "act": "log", "message": message}}],
        "sinks": [{"name": "out", "kind": "file", "path": "out/x"}],
        "edges": [{"from": "in", "to": "evil"}, {"from": "evil", "to": "out"}]
    });
    let id = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submit")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let v = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(30));
    assert_eq!(v["state"], "finished", "{v}");
    // The job's log keeps the line, escaped.
    let logs = expect(c.get(&format!("/v1/jobs/{id}/logs")).unwrap(), 200, "logs");
    let lines = logs["lines"].as_array().unwrap();
    assert_eq!(lines.len(), 1, "{logs}");
    assert_eq!(lines[0]["message"], format!("first\\n{forged}\\r\\u{{1b}}[2Kthird"), "{logs}");
    // The server's own log has it on one line, and no line it did not write.
    let log = std::fs::read_to_string(&server.log).unwrap();
    let with = log.lines().filter(|l| l.contains("forged by a guest")).collect::<Vec<_>>();
    assert_eq!(with.len(), 1, "{log}");
    assert!(with[0].contains("first\\n2026") && with[0].contains("operator"), "{}", with[0]);
    assert!(!log.lines().any(|l| l.starts_with("2026-01-01")), "{log}");
    assert!(!log.contains('\r') && !log.contains('\u{1b}'), "{log:?}");
}
