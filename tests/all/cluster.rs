//! The standalone cluster: a real `sluice jobmanager` and two or three real
//! `sluice taskmanager` processes on 127.0.0.1, exchanging records over the
//! network, with TaskManagers killed by SIGKILL. Every output is checked
//! against counts computed here from the input.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::api::Client;

use crate::harness::{root, sluice_bin, temp_dir};
use crate::server::{committed_lines, expect, put_input, upload, wait_for};

/// A JobManager and its TaskManagers, killed when dropped.
pub(crate) struct Cluster {
    jm: Child,
    pub(crate) api: String,
    pub(crate) rpc: String,
    tms: Vec<Option<Child>>,
    dir: PathBuf,
    data: PathBuf,
}

/// Read lines from `child`'s stdout until one starts with each of
/// `prefixes` (in order); the rest of each such line.
pub(crate) fn read_prefixed(child: &mut Child, prefixes: &[&str], log: &Path) -> Vec<String> {
    let out = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(out);
    let mut found = Vec::new();
    for p in prefixes {
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the process ended before printing {p:?}:\n{log}");
            }
            if let Some(rest) = line.trim().strip_prefix(p) {
                found.push(rest.trim().to_owned());
                break;
            }
        }
    }
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    found
}

impl Cluster {
    /// A JobManager with tenant `acme` (token `acme-token`) and `[cluster]` lines.
    pub(crate) fn start(name: &str, cluster: &str) -> Self {
        let dir = temp_dir(name);
        let config = format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[cluster]\nrpc = \"127.0.0.1:0\"\n{cluster}\n\
             [[tenants]]\nid = \"acme\"\ntoken_sha256 = \"{}\"\n[tenants.quotas]\nmax_total_parallelism = 64\n",
            sluice::tenancy::token_hash("acme-token")
        );
        std::fs::write(dir.join("jm.toml"), config).unwrap();
        let log = dir.join("jobmanager.log");
        let mut jm = Command::new(sluice_bin())
            .args(["jobmanager", "--config"])
            .arg(dir.join("jm.toml"))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning sluice jobmanager");
        let lines = read_prefixed(&mut jm, &["sluice jobmanager on ", "rpc "], &log);
        let api = lines[0].split_whitespace().next().unwrap().to_owned();
        Cluster {
            jm,
            api,
            rpc: lines[1].clone(),
            tms: Vec::new(),
            data: dir.join("data"),
            dir,
        }
    }

    /// Start a TaskManager with `slots`, (optionally) on `data_addr` and with
    /// extra environment; its index and its data address.
    pub(crate) fn add_tm(&mut self, slots: u32, data_addr: Option<&str>, env: &[(&str, &str)]) -> (usize, String) {
        let i = self.tms.len();
        let log = self.dir.join(format!("tm-{i}.log"));
        let mut c = Command::new(sluice_bin());
        c.args(["taskmanager", "--jobmanager", &self.rpc, "--slots", &slots.to_string()])
            .args(["--data-addr", data_addr.unwrap_or("127.0.0.1:0")])
            .arg("--cache-dir")
            .arg(self.dir.join(format!("tm-cache-{i}")))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawning sluice taskmanager");
        let lines = read_prefixed(&mut child, &["data ", "registered as "], &log);
        self.tms.push(Some(child));
        (i, lines[0].clone())
    }

    /// SIGKILL TaskManager `i`.
    pub(crate) fn kill_tm(&mut self, i: usize) {
        if let Some(mut c) = self.tms[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL the JobManager.
    pub(crate) fn kill_jm(&mut self) {
        let _ = self.jm.kill();
        let _ = self.jm.wait();
    }

    /// The log of TaskManager `i`.
    pub(crate) fn tm_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("tm-{i}.log"))).unwrap_or_default()
    }

    /// The pid of TaskManager `i`.
    pub(crate) fn tm_pid(&self, i: usize) -> u32 {
        self.tms[i].as_ref().map_or(0, Child::id)
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(&self.api, Some("acme-token".into())).unwrap()
    }

    /// The TaskManagers the JobManager lists.
    pub(crate) fn taskmanagers(&self) -> Vec<Value> {
        expect(self.client().get("/v1/taskmanagers").unwrap(), 200, "taskmanagers")["taskmanagers"]
            .as_array()
            .unwrap()
            .clone()
    }

    pub(crate) fn log(&self) -> String {
        let mut s = std::fs::read_to_string(self.dir.join("jobmanager.log")).unwrap_or_default();
        for i in 0..self.tms.len() {
            s.push_str(&format!("\n--- tm-{i}\n"));
            s.push_str(&std::fs::read_to_string(self.dir.join(format!("tm-{i}.log"))).unwrap_or_default());
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self.tms.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = self.jm.kill();
        let _ = self.jm.wait();
    }
}

/// Word counts of the example text, computed here.
fn expected_counts() -> HashMap<String, u64> {
    crate::wordcount::expected_counts(&std::fs::read_to_string(root().join("examples/data/wordcount.txt")).unwrap())
}

/// Every word's updates must be exactly 1, 2, …, n (nothing lost, nothing
/// twice) with n its count in the input.
pub(crate) fn assert_exact_updates(lines: &[String], what: &str) {
    let expected = expected_counts();
    let mut seen: HashMap<String, Vec<u64>> = HashMap::new();
    for l in lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: bad line {l:?}: {e}"));
        seen.entry(v["word"].as_str().unwrap().to_owned())
            .or_default()
            .push(v["count"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), expected.len(), "{what}: words");
    for (w, n) in &expected {
        let mut got = seen.remove(w).unwrap_or_default();
        got.sort_unstable();
        let want: Vec<u64> = (1..=*n).collect();
        assert_eq!(got, want, "{what}: the updates of {w:?}");
    }
}

/// The word count at `parallelism` into `output` (a directory).
pub(crate) fn wordcount(tokenize: &str, count: &str, parallelism: u32, output: &str, rate: Option<u64>, checkpoints: bool) -> Value {
    let mut spec = json!({
        "name": "wordcount",
        "batch_size": 64,
        "sources": [{"name": "lines", "kind": "file", "path": "in.txt", "records_per_second": rate}],
        "operators": [
            {"name": "tokenize", "kind": "flat-map", "component": tokenize, "parallelism": parallelism},
            {"name": "count", "kind": "keyed-process", "component": count, "parallelism": parallelism}
        ],
        "sinks": [{"name": "out", "kind": "file", "path": output, "parallelism": parallelism}],
        "edges": [
            {"from": "lines", "to": "tokenize", "partition": "rebalance"},
            {"from": "tokenize", "to": "count", "partition": "hash"},
            {"from": "count", "to": "out"}
        ]
    });
    if checkpoints {
        spec["checkpoints"] = json!({"interval_ms": 200});
    }
    spec
}

pub(crate) fn submit(c: &Client, spec: Value) -> String {
    let v = expect(c.post_json("/v1/jobs", &json!({ "spec": spec })).unwrap(), 201, "submitting");
    v["id"].as_str().unwrap().to_owned()
}

/// The lines of the part files of an output directory of the file area
/// (all files: a sink without checkpoints writes `part-<i>.jsonl`).
fn output_lines(c: &Client, dir: &str) -> Vec<String> {
    committed_lines(c, dir)
}

/// The TaskManager ids a job's subtasks run on.
fn placement(details: &Value) -> Vec<String> {
    let mut tms: Vec<String> = details["subtasks"]
        .as_array()
        .map(|a| a.iter().map(|s| s["taskmanager"].as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    tms.sort();
    tms.dedup();
    tms
}

#[test]
fn word_counts_at_parallelism_4_over_two_taskmanagers_equal_independent_counts() {
    let mut cluster = Cluster::start("cluster-wordcount", "");
    cluster.add_tm(2, None, &[]);
    cluster.add_tm(2, None, &[]);
    let c = cluster.client();
    assert_eq!(cluster.taskmanagers().len(), 2);
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    let id = submit(&c, wordcount(&tokenize, &count, 4, "out", None, false));
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    assert_eq!(placement(&done).len(), 2, "subtasks on both TaskManagers: {done}");
    assert_exact_updates(&output_lines(&c, "out"), "word count at parallelism 4");
    // The JobManager knows how many records went through, from the heartbeats.
    let ops = done["operators"].as_array().unwrap();
    let count_in = ops.iter().find(|o| o["name"] == "count").unwrap()["records_in"]
        .as_u64()
        .unwrap_or(0);
    let words: u64 = expected_counts().values().sum();
    assert!(count_in <= words, "{count_in} > {words}");
    // Per subtask, summed over the TaskManagers' reports: each of the four
    // count subtasks (on either TaskManager) got words, and they add up.
    let count_op = ops.iter().find(|o| o["name"] == "count").unwrap();
    let subtasks = count_op["subtasks"].as_array().unwrap();
    assert_eq!(subtasks.len(), 4, "{count_op}");
    assert!(subtasks.iter().all(|s| s["records_in"].as_u64().unwrap() > 0), "{count_op}");
    assert_eq!(subtasks.iter().map(|s| s["records_in"].as_u64().unwrap()).sum::<u64>(), count_in);
    // The TaskManagers report their memory; the JobManager serves the dashboard.
    assert!(cluster.taskmanagers().iter().all(|t| t["rss_bytes"].as_u64().unwrap() > 1 << 20));
    let page = sluice::api::Client::new(&cluster.api, None).unwrap().get("/").unwrap();
    assert_eq!(page.status, 200);
    assert!(page.text().contains("<html"), "{}", page.text());

    // The windowed word count, parallelism 4, against counts per window computed here.
    let csv = std::fs::read(root().join("examples/data/timestamped-words.csv")).unwrap();
    expect(c.put_bytes("/v1/files/words.csv", csv.clone()).unwrap(), 201, "uploading words");
    let window_count = upload(&c, "window_count");
    let spec = json!({
        "name": "windowed-wordcount",
        "sources": [{"name": "words", "kind": "file", "path": "words.csv", "format": "csv", "columns": ["ts", "word"],
                     "key_field": "word", "timestamp_field": "ts",
                     "watermarks": {"strategy": "bounded", "max_out_of_orderness_ms": 500, "interval_ms": 200}}],
        "operators": [{"name": "counts", "kind": "window", "component": window_count, "parallelism": 4,
                       "window": {"assigner": "tumbling", "size_ms": 1000}}],
        "sinks": [{"name": "out", "kind": "file", "path": "windows", "parallelism": 4}],
        "edges": [{"from": "words", "to": "counts", "partition": "hash"}, {"from": "counts", "to": "out"}]
    });
    let id = submit(&c, spec);
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    assert_eq!(placement(&done).len(), 2, "{done}");
    let mut want: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for l in String::from_utf8(csv).unwrap().lines() {
        let (t, w) = l.split_once(',').unwrap();
        let t: i64 = t.parse().unwrap();
        *want.entry((w.to_owned(), t - t.rem_euclid(1000))).or_default() += 1;
    }
    let mut got: BTreeMap<(String, i64), u64> = BTreeMap::new();
    for l in output_lines(&c, "windows") {
        let v: Value = serde_json::from_str(&l).unwrap();
        let key = (v["word"].as_str().unwrap().to_owned(), v["start"].as_i64().unwrap());
        assert!(got.insert(key, v["count"].as_u64().unwrap()).is_none(), "a window fired twice: {l}");
    }
    assert_eq!(got, want);
}

/// Wait until the job has completed at least `n` checkpoints.
fn wait_checkpoints(c: &Client, id: &str, n: u64, timeout: Duration, cluster: &Cluster) -> Value {
    let start = Instant::now();
    loop {
        let v = expect(c.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "job");
        if v["checkpoints"]["completed"].as_u64().unwrap_or(0) >= n {
            return v;
        }
        assert!(
            start.elapsed() < timeout && v["state"] != "failed" && v["state"] != "finished",
            "no {n} checkpoints: {v}\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The index of a TaskManager (by pid) that runs a task of the job.
fn busy_tm(cluster: &Cluster, details: &Value) -> usize {
    let used = placement(details);
    let tms = cluster.taskmanagers();
    let pid_of = |id: &str| tms.iter().find(|t| t["id"] == id).and_then(|t| t["pid"].as_u64()).unwrap_or(0) as u32;
    let pids: Vec<u32> = used.iter().map(|id| pid_of(id)).collect();
    (0..cluster.tms.len())
        .find(|&i| pids.contains(&cluster.tm_pid(i)))
        .expect("a TaskManager that runs the job")
}

#[test]
fn a_taskmanager_killed_mid_run_restarts_the_job_with_exactly_once_output() {
    let mut cluster = Cluster::start("cluster-kill", "heartbeat_interval_ms = 500\nheartbeat_timeout_ms = 3000");
    for _ in 0..3 {
        cluster.add_tm(2, None, &[]);
    }
    let c = cluster.client();
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    // ~4600 lines at 1500 lines/s per source: about 3 s of input.
    let id = submit(&c, wordcount(&tokenize, &count, 2, "out", Some(1500), true));
    let running = wait_checkpoints(&c, &id, 2, Duration::from_secs(60), &cluster);
    let victim = busy_tm(&cluster, &running);
    cluster.kill_tm(victim);
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    assert!(done["restarts"].as_u64().unwrap() >= 1, "{done}");
    assert_exact_updates(&committed_lines(&c, "out"), "after a TaskManager was killed");
}

#[test]
fn a_taskmanager_killed_between_barrier_and_ack_loses_and_duplicates_nothing() {
    let mut cluster = Cluster::start("cluster-kill-ack", "heartbeat_interval_ms = 500\nheartbeat_timeout_ms = 3000");
    // State files are written, then the ack waits 1.5 s: the kill lands in between.
    for _ in 0..3 {
        cluster.add_tm(2, None, &[("SLUICE_FAULT_CHECKPOINT_DELAY_MS", "1500")]);
    }
    let c = cluster.client();
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    let id = submit(&c, wordcount(&tokenize, &count, 2, "out", Some(800), true));
    let running = wait_for(&c, &id, &["running"], Duration::from_secs(60));
    let ckpt = cluster.data.join(format!("tenants/acme/jobs/{id}/checkpoints"));
    // Wait for a checkpoint whose state files exist but whose metadata does not.
    let start = Instant::now();
    loop {
        let pending = std::fs::read_dir(&ckpt).into_iter().flatten().flatten().any(|e| {
            let p = e.path();
            p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("chk-"))
                && !p.join("_metadata.json").exists()
                && std::fs::read_dir(&p).map(|d| d.count() > 0).unwrap_or(false)
        });
        if pending {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no checkpoint in flight\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = busy_tm(&cluster, &running);
    cluster.kill_tm(victim);
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(180));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    assert!(done["restarts"].as_u64().unwrap() >= 1, "{done}");
    assert_exact_updates(&committed_lines(&c, "out"), "after a kill between barrier and ack");
}

/// Peak resident memory of a process, KiB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_consumer_across_the_network_bounds_the_producers_memory_and_checkpoints_complete() {
    let mut cluster = Cluster::start("cluster-slow", "heartbeat_interval_ms = 300\nheartbeat_timeout_ms = 5000");
    let (producer, _) = cluster.add_tm(1, None, &[]);
    cluster.add_tm(1, None, &[]);
    let c = cluster.client();
    let slow = upload(&c, "test_hostile");
    // 1,000,000 records of 1 KiB (1 GB) from one source subtask (slot 0),
    // rebalanced to two slow map subtasks: the one in slot 1 is on the
    // other TaskManager.
    let spec = json!({
        "name": "slow",
        "sources": [{"name": "gen", "kind": "generator", "count": 1000000, "value_size": 1024, "parallelism": 1}],
        "operators": [{"name": "slow", "kind": "map", "component": slow, "parallelism": 2,
                       "config": {"on": "-", "act": "slow", "spin": 300000}}],
        "sinks": [{"name": "out", "kind": "discard", "parallelism": 2}],
        "edges": [{"from": "gen", "to": "slow", "partition": "rebalance"}, {"from": "slow", "to": "out"}],
        "checkpoints": {"interval_ms": 300}
    });
    let id = submit(&c, spec);
    let running = wait_checkpoints(&c, &id, 3, Duration::from_secs(120), &cluster);
    assert_eq!(placement(&running).len(), 2, "{running}");
    // Let the backlog build for a few seconds (the counters come with heartbeats).
    std::thread::sleep(Duration::from_secs(4));
    let now = wait_checkpoints(
        &c,
        &id,
        running["checkpoints"]["completed"].as_u64().unwrap() + 2,
        Duration::from_secs(60),
        &cluster,
    );
    let busy = now["operators"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "gen")
        .cloned()
        .unwrap();
    let peak = peak_rss_kb(cluster.tm_pid(producer));
    eprintln!("producer TaskManager peak RSS {} MiB; source {busy}", peak / 1024);
    assert!(peak < 300 * 1024, "the producer's memory grew to {peak} KiB");
    let gen_out = busy["records_out"].as_u64().unwrap_or(0);
    assert!(gen_out < 1_000_000, "the source was not held back: {gen_out}");
    assert!(
        busy["backpressured_ms"].as_u64().unwrap_or(0) > 0,
        "no backpressure measured: {busy}"
    );
    expect(c.post_json(&format!("/v1/jobs/{id}/cancel"), &json!({})).unwrap(), 202, "cancel");
    wait_for(&c, &id, &["canceled"], Duration::from_secs(60));
}

#[test]
fn too_few_slots_wait_and_say_why_and_a_restarted_taskmanager_joins_as_new() {
    let mut cluster = Cluster::start("cluster-slots", "heartbeat_interval_ms = 500\nheartbeat_timeout_ms = 3000");
    let (first, first_addr) = cluster.add_tm(1, None, &[]);
    let c = cluster.client();
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    let id = submit(&c, wordcount(&tokenize, &count, 2, "out", Some(2000), true));
    // One slot, two needed: the job waits in `created` and says why.
    let start = Instant::now();
    let waiting = loop {
        let v = expect(c.get(&format!("/v1/jobs/{id}")).unwrap(), 200, "job");
        if v["status"].as_str().is_some_and(|s| s.contains("needs 2")) {
            break v;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(waiting["state"], "created", "{waiting}");
    assert!(waiting["status"].as_str().unwrap().contains("1 free of 1"), "{waiting}");
    cluster.add_tm(1, None, &[]);
    let running = wait_checkpoints(&c, &id, 1, Duration::from_secs(60), &cluster);
    assert_eq!(placement(&running).len(), 2, "{running}");
    let old_ids: Vec<String> = cluster
        .taskmanagers()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    // Kill the first TaskManager and start one on the same data address:
    // it registers as a new TaskManager and the job restarts on it.
    cluster.kill_tm(first);
    let (_, again) = cluster.add_tm(1, Some(&first_addr), &[]);
    assert_eq!(again, first_addr);
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    let now: Vec<String> = cluster
        .taskmanagers()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(now.len(), 2, "{now:?}");
    let newcomer: Vec<&String> = now.iter().filter(|id| !old_ids.contains(id)).collect();
    assert_eq!(newcomer.len(), 1, "the restarted TaskManager has a new id: {old_ids:?} -> {now:?}");
    assert!(done["restarts"].as_u64().unwrap() >= 1, "{done}");
    assert!(
        placement(&done).contains(newcomer[0]),
        "the new attempt runs on the newcomer: {done}"
    );
    assert_exact_updates(&committed_lines(&c, "out"), "after the restart");
}

#[test]
fn stop_with_savepoint_and_a_rescaled_restore_run_on_the_cluster() {
    let mut cluster = Cluster::start("cluster-savepoint", "");
    cluster.add_tm(2, None, &[]);
    cluster.add_tm(2, None, &[]);
    let c = cluster.client();
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    let id = submit(&c, wordcount(&tokenize, &count, 2, "out", Some(1000), true));
    wait_checkpoints(&c, &id, 1, Duration::from_secs(60), &cluster);
    let stopped = expect(
        c.post_json(&format!("/v1/jobs/{id}/stop"), &json!({})).unwrap(),
        201,
        "stop with savepoint",
    );
    let savepoint = stopped["savepoint"].as_str().unwrap().to_owned();
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(60));
    assert_eq!(done["state"], "finished", "{done}");
    let before = committed_lines(&c, "out").len();
    assert!(
        before > 0 && (before as u64) < expected_counts().values().sum::<u64>(),
        "stopped mid-run: {before}"
    );
    // The rest, from the savepoint, with the keyed operator at parallelism 3.
    let spec = wordcount(&tokenize, &count, 3, "out", None, true);
    let v = expect(
        c.post_json("/v1/jobs", &json!({ "spec": spec, "savepoint": savepoint })).unwrap(),
        201,
        "submitting from the savepoint",
    );
    let again = v["id"].as_str().unwrap().to_owned();
    let done = wait_for(&c, &again, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.log());
    assert_eq!(placement(&done).len(), 2, "{done}");
    assert_exact_updates(&committed_lines(&c, "out"), "stopped, then restored at parallelism 3");
}

#[test]
fn a_taskmanager_that_loses_its_jobmanager_cancels_its_tasks_and_stops_writing() {
    let mut cluster = Cluster::start("cluster-jm-lost", "heartbeat_interval_ms = 300\nheartbeat_timeout_ms = 2000");
    let (tm, _) = cluster.add_tm(2, None, &[]);
    let c = cluster.client();
    let (tokenize, count) = (upload(&c, "tokenize"), upload(&c, "count"));
    put_input(&c, "in.txt");
    // ~4600 lines at 150 lines/s: half a minute of input.
    let id = submit(&c, wordcount(&tokenize, &count, 2, "out", Some(150), true));
    wait_checkpoints(&c, &id, 1, Duration::from_secs(60), &cluster);
    let out = cluster.data.join("tenants/acme/files/out");
    cluster.kill_jm();
    let start = Instant::now();
    while !cluster.tm_log(tm).contains("cancelling every task") {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the TaskManager kept its tasks:\n{}",
            cluster.tm_log(tm)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "it should wait out its timeout first"
    );
    // Nothing is written to the sink directory any more.
    let snapshot = |dir: &Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map(|m| m.len()).unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    };
    std::thread::sleep(Duration::from_millis(300));
    let first = snapshot(&out);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(snapshot(&out), first, "the sink directory changed after the tasks were cancelled");
}
