//! `sluice bench shuffle`: what the network costs. A hash-partitioned keyed
//! count (generator, parallelism 2 → hash → the `count` UDF, parallelism 2
//! → discard) runs once in this process and once on a standalone cluster
//! of a JobManager and two TaskManagers with one slot each, started from
//! this binary on 127.0.0.1, so half of the records cross the network.
//!
//! ```text
//! bench=shuffle events=N local_events_per_cpu_s=X cluster_events_per_cpu_s=Y cpu_ratio=X/Y network_bytes_per_s=B ...
//! ```
//!
//! CPU time is that of every process involved (this one for the local run;
//! the JobManager and both TaskManagers, all threads, for the cluster run),
//! counted from the job's submission to its end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::api::Client;
use crate::wasm::WasmEngine;

/// CPU seconds (user + system, all threads) of process `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) as f64 / hz
}

/// Peak resident memory of process `pid`, MB.
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// The job, as JSON; `component` is a path (local) or a digest (cluster).
fn spec(events: u64, component: &str) -> serde_json::Value {
    serde_json::json!({
        "name": "shuffle-bench",
        "sources": [{"name": "gen", "kind": "generator", "count": events, "keys": 10000,
                     "distribution": "zipf", "value_size": 16, "parallelism": 2}],
        "operators": [{"name": "count", "kind": "keyed-process", "component": component, "parallelism": 2}],
        "sinks": [{"name": "out", "kind": "discard", "parallelism": 2}],
        "edges": [{"from": "gen", "to": "count", "partition": "hash"}, {"from": "count", "to": "out"}]
    })
}

/// Child processes killed when dropped.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `exe args`, and read its stdout until a line starts with each of
/// `prefixes`; the rest of those lines.
fn start(exe: &Path, args: &[&str], log: &Path, prefixes: &[&str], children: &mut Children) -> anyhow::Result<Vec<String>> {
    let mut child = Command::new(exe)
        .args(args)
        .env("SLUICE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()
        .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
    let mut reader = BufReader::new(child.stdout.take().context("stdout")?);
    children.0.push(child);
    let mut found = Vec::new();
    for p in prefixes {
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                bail!(
                    "{} ended before printing {p:?}: {}",
                    args[0],
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            if let Some(rest) = line.trim().strip_prefix(p) {
                found.push(rest.trim().to_owned());
                break;
            }
        }
    }
    std::thread::spawn(move || {
        let mut s = String::new();
        while reader.read_line(&mut s).unwrap_or(0) > 0 {
            s.clear();
        }
    });
    Ok(found)
}

/// Run the benchmark over `events` records.
pub fn run(engine: &Arc<WasmEngine>, events: u64, udfs: &Path) -> anyhow::Result<String> {
    let component = udfs.join("count.wasm");
    if !component.exists() {
        bail!("{} is missing: run scripts/build-udfs", component.display());
    }
    // In this process.
    let graph = crate::job::JobGraph::build(
        crate::job::JobSpec::from_json(&spec(events, &component.to_string_lossy()).to_string())?,
        Path::new("."),
    )?;
    let (cpu0, t0) = (cpu_seconds(std::process::id()), Instant::now());
    let summary = crate::cluster::run_job(&graph, engine, crate::cluster::RunOptions::default())?.wait()?;
    let (local_cpu, local_wall) = (cpu_seconds(std::process::id()) - cpu0, t0.elapsed().as_secs_f64());
    let counted = summary.metrics.iter().find(|m| m.name == "count").map_or(0, |m| m.records_in());
    if counted != events {
        bail!("the local run counted {counted} of {events} records");
    }

    // On a cluster of this binary's processes.
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("sluice-bench-shuffle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let token = "bench-token";
    std::fs::write(
        dir.join("jm.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[cluster]\nrpc = \"127.0.0.1:0\"\n\
             [[tenants]]\nid = \"bench\"\ntoken_sha256 = \"{}\"\n",
            crate::tenancy::token_hash(token)
        ),
    )?;
    let mut children = Children(Vec::new());
    let config = dir.join("jm.toml");
    let jm = start(
        &exe,
        &["jobmanager", "--config", &config.to_string_lossy()],
        &dir.join("jm.log"),
        &["sluice jobmanager on ", "rpc "],
        &mut children,
    )?;
    let api = jm[0].split_whitespace().next().unwrap_or_default().to_owned();
    for i in 0..2 {
        let cache: PathBuf = dir.join(format!("cache-{i}"));
        start(
            &exe,
            &[
                "taskmanager",
                "--jobmanager",
                &jm[1],
                "--slots",
                "1",
                "--cache-dir",
                &cache.to_string_lossy(),
            ],
            &dir.join(format!("tm-{i}.log")),
            &["data ", "registered as "],
            &mut children,
        )?;
    }
    let client = Client::new(&api, Some(token.into()))?;
    let uploaded = client.post_bytes("/v1/components", std::fs::read(&component)?)?;
    let digest = uploaded.json()["digest"].as_str().unwrap_or_default().to_owned();
    if digest.is_empty() {
        bail!("uploading the count UDF: {}", uploaded.text());
    }
    // Warm up: the TaskManagers fetch and compile the component once.
    let warm = client.post_json("/v1/jobs", &serde_json::json!({"spec": spec(1000, &digest)}))?;
    wait(&client, warm.json()["id"].as_str().unwrap_or_default())?;
    let pids: Vec<u32> = children.0.iter().map(Child::id).collect();
    let cpu_before: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum();
    std::thread::sleep(Duration::from_millis(2500));
    let bytes_before = network_bytes(&client)?;
    let t0 = Instant::now();
    let submitted = client.post_json("/v1/jobs", &serde_json::json!({"spec": spec(events, &digest)}))?;
    let id = submitted.json()["id"].as_str().unwrap_or_default().to_owned();
    let details = wait(&client, &id)?;
    let cluster_wall = t0.elapsed().as_secs_f64();
    let cluster_cpu = pids.iter().map(|&p| cpu_seconds(p)).sum::<f64>() - cpu_before;
    // The TaskManagers' byte counters come with their next heartbeats.
    std::thread::sleep(Duration::from_millis(2500));
    let bytes = network_bytes(&client)? - bytes_before;
    let counted = details["operators"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["name"] == "count"))
        .and_then(|o| o["records_in"].as_u64())
        .unwrap_or(0);
    let rss: Vec<String> = pids.iter().map(|&p| format!("{:.0}", peak_rss_mb(p))).collect();
    let _ = std::fs::remove_dir_all(&dir);
    let (local, cluster) = (events as f64 / local_cpu.max(1e-9), events as f64 / cluster_cpu.max(1e-9));
    Ok(format!(
        "bench=shuffle events={events} local_events_per_cpu_s={local:.0} cluster_events_per_cpu_s={cluster:.0} \
         cpu_ratio={:.2} network_bytes={bytes} network_bytes_per_s={:.0} local_wall_s={local_wall:.2} \
         cluster_wall_s={cluster_wall:.2} cluster_records_counted={counted} peak_rss_mb_jm_tm_tm={} local_peak_rss_mb={:.0}",
        local / cluster,
        bytes as f64 / cluster_wall.max(1e-9),
        rss.join("/"),
        super::peak_rss_mb(),
    ))
}

/// Wait for a job to finish; its details.
fn wait(client: &Client, id: &str) -> anyhow::Result<serde_json::Value> {
    let start = Instant::now();
    loop {
        let v = client.get(&format!("/v1/jobs/{id}"))?.json();
        match v["state"].as_str() {
            Some("finished") => return Ok(v),
            Some("failed" | "canceled") => bail!("the cluster job ended {}: {}", v["state"], v["error"]),
            _ if start.elapsed() > Duration::from_secs(600) => bail!("the cluster job did not finish in 10 min"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Data-plane bytes sent by every TaskManager.
fn network_bytes(client: &Client) -> anyhow::Result<u64> {
    let v = client.get("/v1/taskmanagers")?.json();
    Ok(v["taskmanagers"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["bytes_sent"].as_u64()).sum())
        .unwrap_or(0))
}
