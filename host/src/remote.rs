//! The CLI's server commands: `sluice serve` and the client commands
//! (`upload`, `submit`, `jobs`, `cancel`, `savepoint JOB-ID`) that talk to a
//! server given by `--server` (or `$SLUICE_SERVER`) with the token in
//! `$SLUICE_TOKEN`.

use std::path::Path;

use anyhow::{Context, bail};
use sluice::api::{ApiResponse, Client, Server, ServerConfig};
use sluice::job::JobSpec;

/// Run the server until Ctrl-C or SIGTERM.
pub fn serve(config: &Path) -> anyhow::Result<()> {
    let config = ServerConfig::from_file(config)?;
    let tenants = config.tenants.len();
    let server = Server::new(config)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(sluice::api::serve(server, |addr| {
        // Scripts and tests read this line to learn the port.
        println!("sluice serving on http://{addr} ({tenants} tenants)");
    }))
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
