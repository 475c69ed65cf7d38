//! The web dashboard: what it reads from the API (admin reads, the job
//! graph, per-subtask counters, the checkpoint history, TOML submissions),
//! then the page itself in Debian's Chromium driven by Playwright
//! (`tests/browser/dashboard.mjs`) against a real `sluice serve`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{root, temp_dir, udf};
use crate::server::{TestServer, expect, put_input, upload, wait_for};

/// The word count as the TOML a user pastes into the submit page: file
/// source at `rate` lines per second, checkpoints every 300 ms.
fn wordcount_toml(tokenize: &str, count: &str, rate: u64) -> String {
    format!(
        r#"name = "wordcount"

[checkpoints]
interval_ms = 300

[[sources]]
name = "lines"
kind = "file"
path = "input/wordcount.txt"
records_per_second = {rate}

[[operators]]
name = "tokenize"
kind = "flat-map"
component = "{tokenize}"
parallelism = 2

[[operators]]
name = "count"
kind = "keyed-process"
component = "{count}"
parallelism = 2

[[sinks]]
name = "out"
kind = "file"
path = "wordcount"
parallelism = 2

[[edges]]
from = "lines"
to = "tokenize"

[[edges]]
from = "tokenize"
to = "count"

[[edges]]
from = "count"
to = "out"
"#
    )
}

#[test]
fn the_dashboard_api_reads_for_the_admin_submits_toml_and_shows_graph_subtasks_and_history() {
    let server = TestServer::start_with_admin("dashboard-api", &[("acme", ""), ("other", "")]);
    let (acme, other) = (server.client("acme"), server.client("other"));
    let admin = sluice::api::Client::new(&server.addr, Some("admin-token".into())).unwrap();
    assert_eq!(expect(acme.get("/v1/whoami").unwrap(), 200, "whoami")["tenant"], "acme");
    assert_eq!(expect(admin.get("/v1/whoami").unwrap(), 200, "whoami")["admin"], true);
    let tokenize = upload(&acme, "tokenize");
    let count = upload(&acme, "count");
    put_input(&acme, "input/wordcount.txt");

    // A TOML body, its defaulted partitioners resolved in the graph.
    let toml = wordcount_toml(&tokenize, &count, 2000);
    let r = acme
        .send("POST", "/v1/jobs", Some(("application/toml", toml.clone().into_bytes())))
        .unwrap();
    let job = expect(r, 201, "TOML submit");
    let id = job["id"].as_str().unwrap().to_owned();
    let edges: Vec<(String, String, String)> = job["graph"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap().to_owned();
            (s("from"), s("to"), s("partition"))
        })
        .collect();
    let edge = |a: &str, b: &str, p: &str| (a.to_owned(), b.to_owned(), p.to_owned());
    assert_eq!(
        edges,
        [
            edge("lines", "tokenize", "rebalance"),
            edge("tokenize", "count", "hash"),
            edge("count", "out", "forward")
        ],
        "{job}"
    );
    let nodes = job["graph"]["nodes"].as_array().unwrap();
    let task = |n: &str| nodes.iter().find(|x| x["name"] == n).unwrap()["task"].as_u64().unwrap();
    assert_eq!(task("count"), task("out"), "count and out are chained: {job}");
    assert_ne!(task("tokenize"), task("count"), "{job}");
    assert_eq!(nodes[0]["role"], "source");
    assert_eq!(nodes[0]["kind"], "file");
    assert_eq!(nodes.iter().find(|x| x["name"] == "count").unwrap()["kind"], "keyed-process");

    let spec = expect(acme.get(&format!("/v1/jobs/{id}/spec")).unwrap(), 200, "spec");
    assert_eq!(spec["spec"]["operators"][1]["component"], count.as_str(), "{spec}");
    assert_eq!(
        spec["spec"]["sources"][0]["path"], "input/wordcount.txt",
        "the path as submitted: {spec}"
    );

    // A savepoint while it runs, then it finishes; the history has both kinds.
    wait_for(&acme, &id, &["running"], Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(700));
    expect(
        acme.send("POST", &format!("/v1/jobs/{id}/savepoints"), None).unwrap(),
        201,
        "savepoint",
    );
    let done = wait_for(&acme, &id, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(done["state"], "finished", "{done}");
    let history = done["checkpoints"]["history"].as_array().unwrap();
    assert!(
        history.iter().any(|c| c["kind"] == "savepoint" && c["status"] == "completed"),
        "{done}"
    );
    assert!(history.iter().any(|c| c["kind"] == "checkpoint"), "{done}");
    let ids: Vec<u64> = history.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    // Subtask counters add up to the operator's, and every subtask of the
    // hash-partitioned count got words.
    let expected_words: u64 = std::fs::read_to_string(root().join("examples/data/wordcount.txt"))
        .unwrap()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .count() as u64;
    for op in done["operators"].as_array().unwrap() {
        let subtasks = op["subtasks"].as_array().unwrap();
        assert_eq!(subtasks.len() as u64, op["parallelism"].as_u64().unwrap(), "{op}");
        for k in ["records_in", "records_out"] {
            let sum: u64 = subtasks.iter().map(|s| s[k].as_u64().unwrap()).sum();
            assert_eq!(sum, op[k].as_u64().unwrap(), "{k} of {}: {op}", op["name"]);
        }
        // Whole milliseconds per subtask: the sum may lose one per subtask.
        let busy: u64 = subtasks.iter().map(|s| s["busy_ms"].as_u64().unwrap()).sum();
        assert!(op["busy_ms"].as_u64().unwrap() - busy < subtasks.len() as u64 + 1, "{op}");
        if op["name"] == "count" {
            assert_eq!(op["records_in"].as_u64().unwrap(), expected_words, "{op}");
            assert!(subtasks.iter().all(|s| s["records_in"].as_u64().unwrap() > 0), "{op}");
        }
    }

    // The admin reads every tenant's jobs and components, and nothing else.
    let jobs = expect(admin.get("/v1/jobs").unwrap(), 200, "admin jobs");
    assert_eq!(jobs["jobs"][0]["id"], id.as_str(), "{jobs}");
    assert_eq!(jobs["jobs"][0]["tenant"], "acme", "{jobs}");
    assert_eq!(
        expect(admin.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "admin job")["id"],
        id.as_str()
    );
    expect(admin.get(&format!("/v1/jobs/{id}/savepoints")).unwrap(), 200, "admin savepoints");
    let comps = expect(admin.get("/v1/components").unwrap(), 200, "admin components");
    assert!(
        comps["components"].as_array().unwrap().iter().all(|c| c["tenant"] == "acme"),
        "{comps}"
    );
    for (method, path) in [
        ("POST", format!("/v1/jobs/{id}/cancel")),
        ("DELETE", format!("/v1/jobs/{id}")),
        ("POST", "/v1/jobs".to_owned()),
        ("GET", "/v1/files".to_owned()),
    ] {
        let r = admin.send(method, &path, None).unwrap();
        assert_eq!(r.status, 403, "{method} {path}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "forbidden", "{}", r.text());
    }
    // Another tenant sees none of it.
    assert_eq!(expect(other.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"], json!([]));
    assert_eq!(other.get(&format!("/v1/jobs/{id}/spec")).unwrap().status, 404);

    // A TOML spec with a mistake is refused naming it; nothing is created.
    let bad = toml.replacen("parallelism = 2", "paralelism = 2", 1);
    let r = acme.send("POST", "/v1/jobs", Some(("application/toml", bad.into_bytes()))).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("unknown field `paralelism`"), "{}", r.text());
    let r = acme
        .send(
            "POST",
            "/v1/jobs?savepoint=nope&allow_non_restored_state=maybe",
            Some(("application/toml", toml.into_bytes())),
        )
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error_message().contains("allow_non_restored_state"), "{}", r.text());
    assert_eq!(
        expect(acme.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"].as_array().unwrap().len(),
        1
    );

    // The page and its libraries, from the server itself, under a CSP; API
    // answers are never cached.
    let anonymous = sluice::api::Client::new(&server.addr, None).unwrap();
    let page = anonymous.get("/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").unwrap().starts_with("default-src 'self'"));
    for asset in [
        "/ui/app.js",
        "/ui/style.css",
        "/ui/vendor/dagre.min.js",
        "/ui/vendor/uPlot.iife.min.js",
    ] {
        let r = anonymous.get(asset).unwrap();
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.body.len() > 500, "{asset}");
    }
    assert_eq!(anonymous.get("/ui/../Cargo.toml").unwrap().status, 404);
    assert_eq!(acme.get("/v1/jobs").unwrap().header("cache-control"), Some("no-store"));
}

/// Run `command` until it exits or `timeout` passes (then kill it); its
/// status and output.
fn run_bounded(mut command: Command, timeout: Duration) -> (Option<std::process::ExitStatus>, String, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning node");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, out_reader.join().unwrap(), err_reader.join().unwrap())
}

fn png(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("screenshot {}: {e}", path.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "{} is not a PNG", path.display());
    bytes
}

#[test]
fn the_dashboard_in_chromium_signs_in_submits_watches_savepoints_cancels_and_isolates_tenants() {
    let browser = root().join("tests/browser");
    assert!(
        browser.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules has no playwright-core: `./scripts/test` installs it (npm ci in tests/browser)"
    );
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    assert!(
        chromium.is_file(),
        "{} is missing: `./scripts/test` installs Debian's chromium",
        chromium.display()
    );
    let server = TestServer::start_with_admin("dashboard-browser", &[("acme", ""), ("other", "")]);
    let acme = server.client("acme");
    let tokenize = upload(&acme, "tokenize");
    let count = upload(&acme, "count");
    put_input(&acme, "input/wordcount.txt");
    let dir = temp_dir("dashboard-browser-files");
    let spec = dir.join("wordcount.toml");
    // 4596 lines at 100 per second: about 46 s, long enough to watch,
    // savepoint and cancel it.
    std::fs::write(&spec, wordcount_toml(&tokenize, &count, 100)).unwrap();
    let shots = dir.join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    let mut node = Command::new("node");
    node.arg(browser.join("dashboard.mjs"))
        .current_dir(&browser)
        .env("SLUICE_URL", &server.addr)
        .env("TOKEN_A", "acme-token")
        .env("TOKEN_B", "other-token")
        .env("ADMIN_TOKEN", "admin-token")
        .env("SPEC_FILE", &spec)
        .env("COMPONENT_FILE", udf("uppercase"))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium);
    let (status, out, err) = run_bounded(node, Duration::from_secs(240));
    assert!(
        status.is_some_and(|s| s.success()),
        "the browser test failed ({status:?}):\n--- stdout\n{out}\n--- stderr\n{err}\n--- server log\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    let result: Value = out
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|j| serde_json::from_str(j).unwrap())
        .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    let id = result["job"].as_str().unwrap();
    let savepoint = result["savepoint"].as_str().unwrap();

    // What the page did, checked through the API.
    let job = expect(acme.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "the job");
    assert_eq!(job["state"], "canceled", "{job}");
    let sps = expect(acme.get(&format!("/v1/jobs/{id}/savepoints")).unwrap(), 200, "savepoints");
    assert!(
        sps["savepoints"].as_array().unwrap().iter().any(|s| s["savepoint"] == savepoint),
        "{savepoint} not in {sps}"
    );
    let comps = expect(acme.get("/v1/components").unwrap(), 200, "components");
    assert_eq!(comps["components"].as_array().unwrap().len(), 3, "uploaded in the page: {comps}");
    // One job: the bad spec created nothing.
    assert_eq!(
        expect(acme.get("/v1/jobs").unwrap(), 200, "jobs")["jobs"].as_array().unwrap().len(),
        1
    );
    for name in ["overview.png", "job.png"] {
        let bytes = png(&shots.join(name));
        assert!(bytes.len() > 10_000, "{name} is only {} bytes", bytes.len());
    }
    eprintln!("screenshots in {}", shots.display());
}
