//! The CLI's server commands: `sluice serve` and the client commands
//! (`upload`, `put`, `get`, `submit`, `jobs`, `cancel`, `savepoint JOB-ID`) that talk to a
//! server given by `--server` (or `$SLUICE_SERVER`) with the token in
//! `$SLUICE_TOKEN`.

use std::path::Path;

use anyhow::{Context, bail};
use sluice::api::{ApiResponse, Client, Server, ServerConfig};
use sluice::job::JobSpec;

/// Components uploaded by tenants are compiled in a child process under a
/// deadline and a memory limit, never in the server itself.
fn isolate_compiles(config: &ServerConfig) -> anyhow::Result<()> {
    let l = &config.limits;
    sluice::wasm::compile::isolate_compiles(sluice::wasm::compile::CompileIsolation {
        exe: std::env::current_exe().context("finding the sluice binary for the isolated compiler")?,
        timeout: std::time::Duration::from_millis(l.compile_timeout_ms),
        memory_bytes: l.compile_memory_mb.saturating_mul(1 << 20),
        max_concurrent: l.max_concurrent_compiles,
    });
    Ok(())
}

/// Run the server until Ctrl-C or SIGTERM.
pub fn serve(config: &Path) -> anyhow::Result<()> {
    let config = ServerConfig::from_file(config)?;
    let tenants = config.tenants.len();
    isolate_compiles(&config)?;
    let server = Server::new(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(sluice::api::serve(server, |addr| {
        // Scripts and tests read this line to learn the port.
        println!("sluice serving on http://{addr} ({tenants} tenants)");
    }))
}

/// Run a JobManager until Ctrl-C or SIGTERM: the API server with a cluster
/// of TaskManagers behind it.
pub fn jobmanager(config: &Path) -> anyhow::Result<()> {
    let config = ServerConfig::from_file(config)?;
    let tenants = config.tenants.len();
    isolate_compiles(&config)?;
    let c = &config.cluster;
    let settings = sluice::cluster::jobmanager::ClusterSettings {
        rpc: c.rpc.parse().context("[cluster] rpc")?,
        heartbeat_interval: std::time::Duration::from_millis(c.heartbeat_interval_ms),
        heartbeat_timeout: std::time::Duration::from_millis(c.heartbeat_timeout_ms),
        slot_timeout: std::time::Duration::from_millis(c.slot_timeout_ms),
    };
    let core = sluice::cluster::jobmanager::ClusterCore::new(settings.clone());
    let server = Server::with_cluster(config, core.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let rpc = tokio::net::TcpListener::bind(settings.rpc)
            .await
            .context("binding the control RPC")?;
        let rpc_addr = rpc.local_addr()?;
        tokio::spawn(async move {
            if let Err(e) = core.serve(rpc).await {
                tracing::error!("{e:#}");
            }
        });
        sluice::api::serve(server, |addr| {
            // Scripts and tests read these lines to learn the ports.
            println!("sluice jobmanager on http://{addr} ({tenants} tenants)");
            println!("rpc {rpc_addr}");
        })
        .await
    })
}

/// A client of the server named by `--server`, with `$SLUICE_TOKEN`.
pub fn client(server: &str) -> anyhow::Result<Client> {
    let token = std::env::var("SLUICE_TOKEN").ok().filter(|t| !t.is_empty());
    if token.is_none() {
        bail!("set SLUICE_TOKEN to your tenant's token");
    }
    Ok(Client::new(server, token)?)
}

fn ok(r: ApiResponse, what: &str) -> anyhow::Result<serde_json::Value> {
    if r.is_success() {
        Ok(r.json())
    } else {
        bail!("{what}: {} (HTTP {})", r.error_message(), r.status)
    }
}

/// Upload a component; returns its digest.
pub fn upload(c: &Client, path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let v = ok(c.post_bytes("/v1/components", bytes)?, &format!("uploading {}", path.display()))?;
    Ok(v["digest"].as_str().unwrap_or_default().to_owned())
}

/// Submit a job spec file. Components given as local files are uploaded
/// first and replaced by their digests; returns the job id.
pub fn submit(c: &Client, job: &Path, savepoint: Option<String>, allow_non_restored_state: bool) -> anyhow::Result<String> {
    let mut spec = JobSpec::from_file(job)?;
    let base = job.parent().unwrap_or(Path::new("."));
    let upload_local = |comp: &mut Option<String>| -> anyhow::Result<()> {
        if let Some(p) = comp.as_deref()
            && !p.starts_with("sha256:")
        {
            *comp = Some(upload(c, &base.join(p))?);
        }
        Ok(())
    };
    for o in &mut spec.operators {
        upload_local(&mut o.component)?;
        if let Some(w) = &mut o.watermarks {
            upload_local(&mut w.component)?;
        }
    }
    for s in &mut spec.sources {
        if let Some(w) = &mut s.watermarks {
            upload_local(&mut w.component)?;
        }
    }
    let body = serde_json::json!({
        "spec": spec,
        "savepoint": savepoint,
        "allow_non_restored_state": allow_non_restored_state,
    });
    let v = ok(c.post_json("/v1/jobs", &body)?, "submitting the job")?;
    Ok(v["id"].as_str().unwrap_or_default().to_owned())
}

/// Print the jobs, or one job in full.
/// Print the TaskManagers of a JobManager, one per line.
pub fn taskmanagers(c: &Client) -> anyhow::Result<()> {
    let v = ok(c.get("/v1/taskmanagers")?, "listing TaskManagers")?;
    for t in v["taskmanagers"].as_array().into_iter().flatten() {
        println!(
            "{}  data {}  slots {}/{} free  {} tasks  heartbeat {} ms ago",
            t["id"].as_str().unwrap_or_default(),
            t["data_address"].as_str().unwrap_or_default(),
            t["slots_free"],
            t["slots_total"],
            t["tasks"].as_array().map_or(0, Vec::len),
            t["last_heartbeat_ms_ago"],
        );
    }
    Ok(())
}

pub fn jobs(c: &Client, id: Option<&str>) -> anyhow::Result<()> {
    match id {
        Some(id) => {
            let v = ok(c.get(&format!("/v1/jobs/{id}"))?, &format!("job {id}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        None => {
            let v = ok(c.get("/v1/jobs")?, "listing jobs")?;
            for j in v["jobs"].as_array().into_iter().flatten() {
                println!(
                    "{}  {:<10}  {}",
                    j["id"].as_str().unwrap_or_default(),
                    j["state"].as_str().unwrap_or_default(),
                    j["name"].as_str().unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

/// Wait until a job ends; an error unless it finished.
pub fn wait(c: &Client, id: &str) -> anyhow::Result<()> {
    loop {
        let v = ok(c.get(&format!("/v1/jobs/{id}"))?, &format!("job {id}"))?;
        match v["state"].as_str().unwrap_or_default() {
            "finished" => {
                eprintln!("job {id} finished");
                return Ok(());
            }
            "failed" | "canceled" => bail!(
                "job {id} {}: {}",
                v["state"].as_str().unwrap_or_default(),
                v["error"].as_str().unwrap_or("cancelled")
            ),
            _ => std::thread::sleep(std::time::Duration::from_millis(200)),
        }
    }
}

/// Cancel a job.
pub fn cancel(c: &Client, id: &str) -> anyhow::Result<()> {
    ok(
        c.send("POST", &format!("/v1/jobs/{id}/cancel"), None)?,
        &format!("cancelling job {id}"),
    )?;
    println!("cancelling {id}");
    Ok(())
}

/// Take a savepoint (and with `stop`, stop the job); prints its id.
pub fn savepoint(c: &Client, id: &str, stop: bool) -> anyhow::Result<()> {
    let route = if stop { "stop" } else { "savepoints" };
    let v = ok(
        c.send("POST", &format!("/v1/jobs/{id}/{route}"), None)?,
        &format!("savepoint of job {id}"),
    )?;
    println!("{}", v["savepoint"].as_str().unwrap_or_default());
    Ok(())
}

/// Upload a local file into the tenant's file area.
pub fn put(c: &Client, local: &Path, remote: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
    ok(c.put_bytes(&format!("/v1/files/{remote}"), bytes)?, &format!("uploading {remote}"))?;
    Ok(())
}

/// Print a file of the tenant's file area; a directory prints the
/// concatenation of its visible files, in name order (a sink's output).
pub fn get(c: &Client, remote: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let r = c.get(&format!("/v1/files/{remote}"))?;
    if !r.is_success() {
        bail!("reading {remote}: {} (HTTP {})", r.error_message(), r.status);
    }
    let listing = r.json();
    let mut out = std::io::stdout().lock();
    match listing["entries"].as_array() {
        Some(entries) if listing.as_object().is_some_and(|o| o.len() == 1) => {
            for e in entries.iter().filter(|e| e["dir"] == false) {
                let name = e["name"].as_str().unwrap_or_default();
                let f = c.get(&format!("/v1/files/{remote}/{name}"))?;
                out.write_all(&f.body)?;
            }
        }
        _ => out.write_all(&r.body)?,
    }
    Ok(())
}
