//! High availability: checkpoints on a real S3 server (s3s-fs), leader
//! election and pointers in a real etcd, two `sluice jobmanager` processes
//! and two or three `sluice taskmanager` processes on 127.0.0.1, killed by
//! SIGKILL, cut off by a fault proxy, with the object store stopped. Every
//! output is checked against counts computed here from the input.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::api::Client;
use sluice::cluster::ha::{CheckpointPointer, Ha, HaConfig, JobRecord, LeaderInfo};

use crate::checkpoints::{committed, wordcount_job};
use crate::cluster::{assert_exact_updates, read_prefixed, submit, wordcount};
use crate::harness::{S3, free_port, root, sluice_bin, temp_dir, wait_for_port};
use crate::server::{committed_lines, put_input, upload, wait_for};

/// An etcd of one test, killed by its pid on drop.
pub(crate) struct Etcd {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Etcd {
    pub(crate) fn start(name: &str) -> Etcd {
        let dir = temp_dir(&format!("etcd-{name}"));
        let (port, peer) = (free_port(), free_port());
        let client = format!("http://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "n0", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n0={peer_url}"), "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
            .spawn()
            .expect("etcd: scripts/services-setup installs etcd-server");
        wait_for_port(port, "etcd");
        let etcd = Etcd { child, port, dir };
        // Ready once it answers (it listens a little before it serves).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if Ha::connect(&etcd.config("probe")).and_then(|h| h.leader()).is_ok() {
                return etcd;
            }
            assert!(Instant::now() < deadline, "etcd did not start serving");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// HA settings over this etcd for `cluster`.
    fn config(&self, cluster: &str) -> HaConfig {
        HaConfig {
            etcd: vec![self.endpoint()],
            cluster_id: cluster.into(),
            lease_ttl_s: 2,
            storage: "s3://sluice-ha/unused".into(),
            files_dir: None,
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy that can cut every connection through it (and refuse new
/// ones) until healed: a network partition of one link.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, open, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (c, o, st) = (cut.clone(), open.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let _ = client.set_nonblocking(false);
                let Ok(server) = TcpStream::connect(&target) else { continue };
                let mut all = o.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                drop(all);
                for (mut from, mut to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16384];
                        loop {
                            match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = to.shutdown(Shutdown::Both);
                    });
                }
            }
        });
        Proxy { port, cut, open, stop }
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cut: every connection through it is closed, new ones are refused.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// One JobManager of the cluster (restartable with the same config and
/// RPC port).
struct Jm {
    child: Option<Child>,
    api: String,
    config: PathBuf,
    log: PathBuf,
}

/// etcd, an S3 server, two JobManagers with the same `[ha]` settings and
/// the TaskManagers; every process is killed when dropped.
struct HaCluster {
    etcd: Etcd,
    s3: S3,
    dir: PathBuf,
    jms: Vec<Jm>,
    rpcs: Vec<String>,
    tms: Vec<Option<Child>>,
}

const LEASE_S: u64 = 2;

impl HaCluster {
    fn start(name: &str) -> HaCluster {
        let etcd = Etcd::start(name);
        let s3 = S3::start(name);
        let dir = temp_dir(name);
        let rpcs: Vec<String> = (0..2).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let mut jms = Vec::new();
        for (i, rpc) in rpcs.iter().enumerate() {
            let config = format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data-{i}\"\n\
                 [cluster]\nrpc = \"{rpc}\"\nheartbeat_interval_ms = 500\nheartbeat_timeout_ms = 3000\n\
                 [ha]\netcd = [\"{}\"]\ncluster_id = \"{name}\"\nlease_ttl_s = {LEASE_S}\nstorage = \"s3://sluice-ha/{name}\"\nfiles_dir = \"files\"\n\
                 [object_store]\nendpoint = \"http://127.0.0.1:{}\"\naccess_key_id = \"sluice\"\nsecret_access_key = \"sluice-secret\"\nallow_http = true\n\
                 [[tenants]]\nid = \"acme\"\ntoken_sha256 = \"{}\"\n[tenants.quotas]\nmax_total_parallelism = 64\n",
                etcd.endpoint(),
                s3.port,
                sluice::tenancy::token_hash("acme-token")
            );
            let path = dir.join(format!("jm-{i}.toml"));
            std::fs::write(&path, config).unwrap();
            jms.push(Jm {
                child: None,
                api: String::new(),
                config: path,
                log: dir.join(format!("jm-{i}.log")),
            });
        }
        let mut c = HaCluster {
            etcd,
            s3,
            dir,
            jms,
            rpcs,
            tms: Vec::new(),
        };
        c.start_jm(0);
        c.wait_leader(Duration::from_secs(20));
        c.start_jm(1);
        c
    }

    /// Start JobManager `i` (again).
    fn start_jm(&mut self, i: usize) {
        let jm = &mut self.jms[i];
        let mut child = Command::new(sluice_bin())
            .args(["jobmanager", "--config"])
            .arg(&jm.config)
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&jm.log).unwrap())
            .spawn()
            .expect("spawning sluice jobmanager");
        let lines = read_prefixed(&mut child, &["sluice jobmanager on ", "rpc "], &jm.log);
        jm.api = lines[0].split_whitespace().next().unwrap().to_owned();
        jm.child = Some(child);
    }

    fn kill_jm(&mut self, i: usize) {
        if let Some(mut c) = self.jms[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The role JobManager `i` reports: `leader`, `standby`, or `down`.
    fn role(&self, i: usize) -> String {
        if self.jms[i].child.is_none() {
            return "down".into();
        }
        let c = Client::new(&self.jms[i].api, None).unwrap();
        match c.get("/healthz") {
            Ok(r) if r.status == 200 => r.json()["role"].as_str().unwrap_or("down").to_owned(),
            _ => "down".into(),
        }
    }

    /// Wait until exactly one JobManager leads; its index.
    fn wait_leader(&self, timeout: Duration) -> usize {
        let start = Instant::now();
        loop {
            let leaders: Vec<usize> = (0..self.jms.len()).filter(|&i| self.role(i) == "leader").collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(leaders.len() <= 1, "two JobManagers lead at once: {leaders:?}\n{}", self.logs());
            assert!(start.elapsed() < timeout, "no leader within {timeout:?}\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn client(&self, i: usize) -> Client {
        Client::new(&self.jms[i].api, Some("acme-token".into())).unwrap()
    }

    /// A TaskManager with `slots`, reaching the JobManagers at `jobmanagers`
    /// (default: both RPC addresses).
    fn add_tm(&mut self, slots: u32, jobmanagers: Option<String>) -> usize {
        let i = self.tms.len();
        let log = self.dir.join(format!("tm-{i}.log"));
        let mut c = Command::new(sluice_bin());
        c.args(["taskmanager", "--jobmanager", &jobmanagers.unwrap_or_else(|| self.rpcs.join(","))])
            .args(["--slots", &slots.to_string(), "--data-addr", "127.0.0.1:0"])
            .arg("--cache-dir")
            .arg(self.dir.join(format!("tm-cache-{i}")))
            .env("SLUICE_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap());
        for (k, v) in self.s3.env() {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawning sluice taskmanager");
        read_prefixed(&mut child, &["data ", "registered as "], &log);
        if i < self.tms.len() {
            self.tms[i] = Some(child);
        } else {
            self.tms.push(Some(child));
        }
        i
    }

    fn kill_tm(&mut self, i: usize) {
        if let Some(mut c) = self.tms[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn tm_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("tm-{i}.log"))).unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, jm) in self.jms.iter().enumerate() {
            let text = std::fs::read_to_string(&jm.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- jobmanager {i}\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// etcd as the cluster sees it (read-only: this handle never leads).
    fn ha(&self, name: &str) -> Arc<Ha> {
        Ha::connect(&self.etcd.config(name)).unwrap()
    }

    /// The checkpoint directories of `job` on the S3 server: (name, complete).
    fn stored_checkpoints(&self, name: &str, job: &str) -> Vec<(String, bool)> {
        let dir = self.checkpoint_dir(name, job);
        let mut out: Vec<(String, bool)> = std::fs::read_dir(&dir)
            .map(|e| {
                e.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("chk-"))
                    .map(|n| {
                        let complete = dir.join(&n).join("_metadata.json").is_file();
                        (n, complete)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    fn checkpoint_dir(&self, name: &str, job: &str) -> PathBuf {
        self.s3.dir.join(format!("sluice-ha/{name}/tenants/acme/jobs/{job}/checkpoints"))
    }
}

impl Drop for HaCluster {
    fn drop(&mut self) {
        for i in 0..self.tms.len() {
            self.kill_tm(i);
        }
        for i in 0..self.jms.len() {
            self.kill_jm(i);
        }
    }
}

/// Files (not directories) under `dir`, recursively, relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Wait until the job (on JobManager `jm`) runs with at least `n` completed
/// checkpoints of the current leader's run.
fn wait_checkpoints(cluster: &HaCluster, jm: usize, id: &str, n: u64, timeout: Duration) -> Value {
    let start = Instant::now();
    loop {
        let r = cluster.client(jm).get(&format!("/v1/jobs/{id}")).unwrap();
        if r.status == 200 {
            let v = r.json();
            if v["state"] == "running" && v["checkpoints"]["completed"].as_u64().unwrap_or(0) >= n {
                return v;
            }
            assert!(v["state"] != "failed" && v["state"] != "finished", "{v}\n{}", cluster.logs());
        }
        assert!(
            start.elapsed() < timeout,
            "job {id}: no {n} checkpoints on jobmanager {jm} within {timeout:?}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The word count of the cluster tests, checkpointed every 200 ms, at
/// `rate` lines per second.
fn ha_job(c: &Client, rate: u64) -> String {
    let (tokenize, count) = (upload(c, "tokenize"), upload(c, "count"));
    put_input(c, "in.txt");
    let mut spec = wordcount(&tokenize, &count, 2, "out", Some(rate), true);
    spec["checkpoints"]["retain"] = json!(2);
    submit(c, spec)
}

#[test]
fn checkpoints_on_s3_survive_sigkills_of_sluice_run_with_exact_output() {
    let s3 = S3::start("run-kill");
    let toml = wordcount_job("wc-s3", 1500, 2, "").replace("dir = \"ckpt\"", "dir = \"s3://sluice-ha/run-kill/wc\"");
    let dir = temp_dir("ha-run-kill");
    let spec = dir.join("job.toml");
    std::fs::write(&spec, &toml).unwrap();
    let run = |restore: bool| {
        let mut c = Command::new(sluice_bin());
        c.arg("run").arg(&spec);
        if restore {
            c.args(["--restore", "latest"]);
        }
        for (k, v) in s3.env() {
            c.env(k, v);
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    };
    let chk = s3.dir.join("sluice-ha/run-kill/wc");
    let mut kills = 0;
    let mut restore = false;
    let started = Instant::now();
    loop {
        let mut child = run(restore);
        restore = true;
        if kills == 5 {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "the last run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            break;
        }
        std::thread::sleep(Duration::from_millis(500 + 97 * kills));
        assert!(child.try_wait().unwrap().is_none(), "the job finished before kill {}", kills + 1);
        let _ = child.kill();
        let _ = child.wait();
        kills += 1;
        assert!(started.elapsed() < Duration::from_secs(120));
    }
    assert_exact_updates(&committed(&dir.join("out")), "checkpoints on S3 under SIGKILL");
    // Retention works on the object store too: at most the 3 retained
    // checkpoints keep any object, each with its metadata.
    let kept: Vec<String> = files_under(&chk);
    let dirs: std::collections::BTreeSet<&str> = kept.iter().map(|f| f.split('/').next().unwrap()).collect();
    assert!(dirs.len() <= 3 && !dirs.is_empty(), "{kept:?}");
    for d in dirs {
        assert!(chk.join(d).join("_metadata.json").is_file(), "{d} has no metadata: {kept:?}");
    }
}

#[test]
fn the_object_store_stopped_during_checkpoints_declines_them_and_the_job_keeps_running() {
    let mut s3 = S3::start("s3-stop");
    let toml = wordcount_job("wc-s3-stop", 900, 2, "").replace("dir = \"ckpt\"", "dir = \"s3://sluice-ha/s3-stop/wc\"");
    let dir = temp_dir("ha-s3-stop");
    let spec = dir.join("job.toml");
    std::fs::write(&spec, &toml).unwrap();
    let mut c = Command::new(sluice_bin());
    c.arg("run").arg(&spec).env("SLUICE_LOG", "warn");
    for (k, v) in s3.env() {
        c.env(k, v);
    }
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // About 5 s of input: stop the store for 2 s in the middle.
    std::thread::sleep(Duration::from_millis(1500));
    let chk = s3.dir.join("sluice-ha/s3-stop/wc");
    let before = files_under(&chk).len();
    assert!(before > 0, "no checkpoint reached the store before it stopped");
    s3.stop();
    std::thread::sleep(Duration::from_millis(2000));
    s3.resume();
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("checkpoint aborted"),
        "no checkpoint was declined while the store was down:\n{stderr}"
    );
    assert!(
        stdout.contains(", 0 restarts)") || stderr.contains(", 0 restarts)"),
        "the job restarted: {stdout}\n{stderr}"
    );
    assert_exact_updates(&committed(&dir.join("out")), "with the object store stopped for 2 s");
    // Checkpoints completed after the store came back: the final one too.
    let kept = files_under(&chk);
    assert!(kept.iter().any(|f| f.ends_with("_metadata.json")), "{kept:?}");
}

#[test]
fn a_deposed_leader_cannot_write_and_a_standby_takes_over_when_the_lease_ends() {
    let etcd = Etcd::start("fencing");
    let config = etcd.config("fencing");
    let lost = Arc::new(AtomicBool::new(false));
    let a = Ha::connect(&config).unwrap();
    let b = Ha::connect(&config).unwrap();
    let me = |n: &str| LeaderInfo {
        api: format!("http://{n}"),
        rpc: n.into(),
        pid: 1,
        epoch: 0,
    };
    let l = lost.clone();
    let epoch_a = a.campaign(&me("a"), move |_| l.store(true, Ordering::SeqCst)).unwrap();
    a.put("jobs/x", &json!({"by": "a"})).unwrap();
    assert_eq!(a.leader().unwrap().unwrap().epoch, epoch_a);
    // b stands by while a leads.
    let (tx, rx) = std::sync::mpsc::channel();
    let b2 = b.clone();
    std::thread::spawn(move || {
        let e = b2.campaign(&me("b"), |_| {});
        let _ = tx.send(e.map_err(|e| e.to_string()));
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(rx.try_recv().is_err(), "b led while a held the lease");
    // a's lease ends (as when it is partitioned from etcd): b leads within
    // about the lease time, and every write of a is refused from then on.
    a.revoke_lease();
    let started = Instant::now();
    let epoch_b = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    eprintln!("standby led {} ms after the lease ended", started.elapsed().as_millis());
    assert!(epoch_b > epoch_a);
    let err = a.put("jobs/x", &json!({"by": "a, deposed"})).unwrap_err();
    assert!(err.to_string().contains("not the leader"), "{err}");
    b.put("jobs/x", &json!({"by": "b"})).unwrap();
    let v: Value = b.get("jobs/x").unwrap().unwrap();
    assert_eq!(v, json!({"by": "b"}));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lost.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the deposed leader was not told it lost the lead");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_leader_is_replaced_the_job_resumes_from_its_checkpoint_and_the_old_leader_rejoins_fenced() {
    let name = "ha-failover";
    let mut cluster = HaCluster::start(name);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    assert_eq!(leader, 0);
    assert_eq!(cluster.role(1), "standby");
    // A standby answers with the leader's address, never with its own data.
    let r = cluster.client(1).get("/v1/jobs").unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains(&cluster.jms[0].api), "{}", r.text());
    cluster.add_tm(2, None);
    cluster.add_tm(2, None);
    let c = cluster.client(0);
    let id = ha_job(&c, 1000);
    // A second job, cancelled before the failover, stays cancelled.
    let tokenize = upload(&c, "tokenize");
    let count = upload(&c, "count");
    let cancelled = submit(&c, wordcount(&tokenize, &count, 1, "out-cancelled", Some(50), true));
    wait_for(&c, &cancelled, &["running"], Duration::from_secs(60));
    let r = c.post_json(&format!("/v1/jobs/{cancelled}/cancel"), &json!({})).unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    wait_for(&c, &cancelled, &["canceled"], Duration::from_secs(60));
    wait_checkpoints(&cluster, 0, &id, 3, Duration::from_secs(60));
    let ha = cluster.ha(name);
    let pointer: CheckpointPointer = ha.get(&format!("checkpoints/{id}")).unwrap().expect("a checkpoint pointer");
    assert!(pointer.location.starts_with("s3://sluice-ha/"), "{pointer:?}");
    cluster.kill_jm(0);
    let killed = Instant::now();
    let new = cluster.wait_leader(Duration::from_secs(LEASE_S + 10));
    let took_over = killed.elapsed();
    assert_eq!(new, 1);
    wait_checkpoints(&cluster, 1, &id, 1, Duration::from_secs(60));
    let resumed = killed.elapsed();
    eprintln!(
        "takeover {} ms after the kill; the job checkpointed again after {} ms",
        took_over.as_millis(),
        resumed.as_millis()
    );
    // The old leader, restarted, stands by and cannot act.
    cluster.start_jm(0);
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(cluster.role(0), "standby");
    let r = cluster.client(0).post_json("/v1/jobs/x/cancel", &json!({})).unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    let c = cluster.client(1);
    assert_eq!(wait_for(&c, &cancelled, &["canceled"], Duration::from_secs(5))["state"], "canceled");
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.logs());
    assert_exact_updates(&committed_lines(&c, "out"), "after the leader was killed");
    let record: JobRecord = ha.get(&format!("jobs/{id}")).unwrap().unwrap();
    assert_eq!(record.state, "finished");
    // A finished job stays finished when the lead moves again.
    cluster.kill_jm(1);
    assert_eq!(cluster.wait_leader(Duration::from_secs(LEASE_S + 10)), 0);
    let again = wait_for(&cluster.client(0), &id, &["finished"], Duration::from_secs(10));
    assert_eq!(again["state"], "finished");
}

#[test]
fn a_taskmanager_cut_off_from_the_leader_stops_its_tasks_and_nothing_is_duplicated() {
    let name = "ha-partition";
    let mut cluster = HaCluster::start(name);
    cluster.wait_leader(Duration::from_secs(20));
    // TaskManager 0 reaches both JobManagers through proxies; cutting them
    // partitions it from the leader (its data plane stays up).
    let proxies: Vec<Proxy> = cluster.rpcs.clone().into_iter().map(Proxy::start).collect();
    let via = proxies.iter().map(Proxy::addr).collect::<Vec<_>>().join(",");
    cluster.add_tm(1, Some(via));
    cluster.add_tm(1, None);
    cluster.add_tm(1, None);
    let c = cluster.client(0);
    let id = ha_job(&c, 700);
    let running = wait_checkpoints(&cluster, 0, &id, 2, Duration::from_secs(60));
    let tms = c.get("/v1/taskmanagers").unwrap().json();
    let tm0 = tms["taskmanagers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["pid"].as_u64() == cluster.tms[0].as_ref().map(|c| u64::from(c.id())))
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .unwrap();
    let used: Vec<&str> = running["subtasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["taskmanager"].as_str())
        .collect();
    assert!(used.contains(&tm0.as_str()), "TaskManager 0 ({tm0}) runs nothing: {used:?}");
    for p in &proxies {
        p.cut();
    }
    // The leader loses it after the heartbeat timeout and restarts the job
    // on the other two; it stops its own tasks.
    let start = Instant::now();
    while !cluster.tm_log(0).contains("cancelling every task") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "TaskManager 0 kept its tasks:\n{}",
            cluster.tm_log(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    for p in &proxies {
        p.heal();
    }
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(120));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.logs());
    assert!(done["restarts"].as_u64().unwrap() >= 1, "{done}");
    assert_exact_updates(
        &committed_lines(&c, "out"),
        "after a partition between a TaskManager and the leader",
    );
    // Healed, it registered again as a new TaskManager.
    let start = Instant::now();
    while cluster.tm_log(0).matches("registered with the JobManager").count() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "TaskManager 0 did not come back:\n{}",
            cluster.tm_log(0)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ten_kills_alternating_taskmanagers_and_the_leader_end_with_exact_output_and_no_orphans() {
    let name = "ha-jepsen";
    let mut cluster = HaCluster::start(name);
    cluster.wait_leader(Duration::from_secs(20));
    for _ in 0..2 {
        cluster.add_tm(2, None);
    }
    let c = cluster.client(0);
    // ~4600 lines at 60 lines/s per source subtask: over a minute of input.
    let id = ha_job(&c, 60);
    let ha = cluster.ha(name);
    let grace = Duration::from_secs(45);
    let mut leader = 0;
    let mut worst = Duration::ZERO;
    for k in 0..10 {
        wait_checkpoints(&cluster, leader, &id, 1, grace);
        let killed = Instant::now();
        if k % 2 == 0 {
            let victim = k / 2 % 2;
            cluster.kill_tm(victim);
            cluster.add_tm(2, None);
            let last = cluster.tms.len() - 1;
            cluster.tms.swap(victim, last);
            cluster.tms.pop();
        } else {
            cluster.kill_jm(leader);
            leader = cluster.wait_leader(Duration::from_secs(LEASE_S + 10));
            // A supervisor restarts the killed one: it stands by.
            cluster.start_jm(1 - leader);
        }
        let r = cluster.client(leader).get(&format!("/v1/jobs/{id}")).unwrap();
        if r.status == 200 && r.json()["state"] == "finished" {
            panic!("the input ended before kill {}: slow the job down", k + 1);
        }
        wait_checkpoints(&cluster, leader, &id, 1, grace);
        let back = killed.elapsed();
        worst = worst.max(back);
        eprintln!(
            "kill {}: {} ; running and checkpointing again after {} ms",
            k + 1,
            if k % 2 == 0 { "TaskManager" } else { "leader" },
            back.as_millis()
        );
    }
    eprintln!("worst recovery {} ms (grace {} s)", worst.as_millis(), grace.as_secs());
    let c = cluster.client(leader);
    let done = wait_for(&c, &id, &["finished", "failed"], Duration::from_secs(300));
    assert_eq!(done["state"], "finished", "{done}\n{}", cluster.logs());
    assert_exact_updates(&committed_lines(&c, "out"), "after ten kills");
    // etcd: the record says finished; the pointer names a retained,
    // complete checkpoint; the counter is gone.
    let record: JobRecord = ha.get(&format!("jobs/{id}")).unwrap().unwrap();
    assert_eq!(record.state, "finished");
    let pointer: CheckpointPointer = ha.get(&format!("checkpoints/{id}")).unwrap().unwrap();
    assert!(ha.get::<u64>(&format!("counters/{id}")).unwrap().is_none());
    let keys: Vec<String> = ha.list("").unwrap().into_iter().map(|(k, _)| k).collect();
    let expected_keys = [format!("checkpoints/{id}"), format!("jobs/{id}"), "leader".to_owned()];
    assert_eq!(keys, expected_keys, "orphaned keys in etcd");
    // The bucket: only the retained checkpoints (2), each complete.
    let stored = cluster.stored_checkpoints(name, &id);
    let with_files: Vec<&(String, bool)> = stored
        .iter()
        .filter(|(n, _)| !files_under(&cluster.checkpoint_dir(name, &id).join(n)).is_empty())
        .collect();
    assert!(with_files.len() <= 2, "{stored:?}");
    assert!(
        with_files.iter().all(|(_, complete)| *complete),
        "an incomplete checkpoint is left: {stored:?}"
    );
    assert!(
        pointer.location.ends_with(&with_files.last().unwrap().0),
        "{pointer:?} vs {stored:?}"
    );
    let _ = root();
}
