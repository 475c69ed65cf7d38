//! The CLI's server commands: `sluice serve` and the client commands
//! (`upload`, `put`, `get`, `submit`, `jobs`, `plan`, `logs`,
//! `checkpoints`, `savepoints`, `cancel`, `stop`, `savepoint JOB-ID`) that
//! talk to a server given by `--server` (or `$SLUICE_SERVER`) with the token
//! in `$SLUICE_TOKEN`. Tables for people; `--output json` where a script
//! wants the API's answer.

use std::path::Path;

use anyhow::{Context, bail};
use sluice::api::{ApiResponse, Client, Server, ServerConfig};
use sluice::job::JobSpec;
use sluice::time::{Clock, SystemClock};

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
    if config.ha.is_some() {
        anyhow::bail!("[ha] is for `sluice jobmanager`; `sluice serve` runs one process");
    }
    if let Some(o) = &config.object_store {
        sluice::checkpoint::object::configure(o.clone());
    }
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
    if let Some(o) = &config.object_store {
        sluice::checkpoint::object::configure(o.clone());
    }
    let c = &config.cluster;
    let settings = sluice::cluster::jobmanager::ClusterSettings {
        rpc: c.rpc.parse().context("[cluster] rpc")?,
        heartbeat_interval: std::time::Duration::from_millis(c.heartbeat_interval_ms),
        heartbeat_timeout: std::time::Duration::from_millis(c.heartbeat_timeout_ms),
        slot_timeout: std::time::Duration::from_millis(c.slot_timeout_ms),
    };
    let ha = match &config.ha {
        Some(h) => Some(sluice::cluster::ha::Ha::connect(h).context("[ha] connecting to etcd")?),
        None => None,
    };
    let core = sluice::cluster::jobmanager::ClusterCore::new(settings.clone());
    if ha.is_some() {
        core.stand_by("not elected yet".into());
    }
    let server = Server::with_cluster(config, core.clone(), ha.clone())?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let rpc = tokio::net::TcpListener::bind(settings.rpc)
            .await
            .context("binding the control RPC")?;
        let rpc_addr = rpc.local_addr()?;
        let serving = core.clone();
        tokio::spawn(async move {
            if let Err(e) = serving.serve(rpc).await {
                tracing::error!("{e:#}");
            }
        });
        let leading = server.clone();
        sluice::api::serve(server, move |addr| {
            // Scripts and tests read these lines to learn the ports.
            println!("sluice jobmanager on http://{addr} ({tenants} tenants)");
            println!("rpc {rpc_addr}");
            if let Some(ha) = ha {
                let me = sluice::cluster::ha::LeaderInfo {
                    api: format!("http://{addr}"),
                    rpc: rpc_addr.to_string(),
                    pid: std::process::id(),
                    epoch: 0,
                };
                let spawned = std::thread::Builder::new()
                    .name("ha-campaign".into())
                    .spawn(move || campaign(&ha, &me, &core, &leading));
                if let Err(e) = spawned {
                    tracing::error!("starting the campaign: {e}");
                    std::process::exit(70);
                }
            }
        })
        .await
    })
}

/// Stand by until this JobManager leads, then take the jobs over. Losing
/// the lead later ends the process at once (its TaskManagers stop their
/// tasks when their command streams close; a supervisor restarts it, and
/// it stands by again).
fn campaign(
    ha: &std::sync::Arc<sluice::cluster::ha::Ha>,
    me: &sluice::cluster::ha::LeaderInfo,
    core: &std::sync::Arc<sluice::cluster::jobmanager::ClusterCore>,
    server: &std::sync::Arc<Server>,
) {
    let standby = std::sync::Arc::clone(core);
    let watch_ha = ha.clone();
    // Tell turned-away TaskManagers where the leader is.
    std::thread::spawn(move || {
        while watch_ha.epoch().is_none() {
            if let Ok(Some(l)) = watch_ha.leader() {
                standby.stand_by(format!("{} (RPC {})", l.api, l.rpc));
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    });
    let started = std::time::Instant::now();
    let epoch = match ha.campaign(me, |why| {
        tracing::error!("lost the lead: {why}; stopping at once");
        eprintln!("sluice jobmanager: lost the lead: {why}");
        std::process::exit(70);
    }) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("campaigning failed: {e}");
            std::process::exit(70);
        }
    };
    core.lead(epoch);
    tracing::info!(epoch, waited_ms = started.elapsed().as_millis() as u64, "leading");
    println!("leader epoch {epoch}");
    match server.take_over() {
        Ok(n) => tracing::info!(epoch, jobs = n, "took the recorded jobs over"),
        Err(e) => {
            tracing::error!("reading the recorded jobs: {e}; stopping");
            ha.resign();
            std::process::exit(70);
        }
    }
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
    let savepoint = v["savepoint"].as_str().unwrap_or_default();
    println!("{savepoint}");
    if stop {
        eprintln!("job {id} stopped with savepoint {savepoint} (restore it with `sluice submit JOB.toml --savepoint {savepoint}`)");
    }
    Ok(())
}

/// Upload a local file into the tenant's file area.
pub fn put(c: &Client, local: &Path, remote: &str) -> anyhow::Result<()> {
    let bytes = std::fs::read(local).with_context(|| format!("reading {}", local.display()))?;
    let len = bytes.len();
    ok(c.put_bytes(&format!("/v1/files/{remote}"), bytes)?, &format!("uploading {remote}"))?;
    println!("stored {} ({len} bytes) at {remote}", local.display());
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

/// How `jobs ID`, `checkpoints` and `savepoints` print.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The API's JSON answer.
    Json,
}

/// A time (ms since the Unix epoch) as `2026-12-02 12:34:56 UTC`.
pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A duration in ms as `2h 3m`, `4m 5s` or `6.7s`.
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{:.1}s", ms.max(0) as f64 / 1000.0),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// A watermark as a time: `-` before the first, `end of input` after the last.
fn watermark(v: &serde_json::Value) -> String {
    match v.as_i64() {
        None => "-".into(),
        Some(i64::MAX) => "end of input".into(),
        Some(w) => utc(w).trim_end_matches(" UTC").to_owned() + &format!(".{:03}", w.rem_euclid(1000)),
    }
}

/// Left-aligned columns: a header, then rows.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let mut out = line(header.iter().map(|h| (*h).to_owned()).collect());
    for r in rows {
        out.push_str(&line(r.clone()));
    }
    out
}

/// `sluice jobs`: the tenant's jobs as a table, newest last.
pub fn list_jobs(c: &Client, output: Output) -> anyhow::Result<()> {
    let v = ok(c.get("/v1/jobs")?, "listing jobs")?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let jobs = v["jobs"].as_array().cloned().unwrap_or_default();
    if jobs.is_empty() {
        println!("no jobs");
        return Ok(());
    }
    let now = SystemClock.now_ms();
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let start = j["submitted_ms"].as_i64().unwrap_or(0);
            let end = j["ended_ms"].as_i64().unwrap_or(now);
            vec![
                j["id"].as_str().unwrap_or_default().to_owned(),
                j["state"].as_str().unwrap_or_default().to_owned(),
                j["name"].as_str().unwrap_or_default().to_owned(),
                utc(start),
                duration(end - start),
            ]
        })
        .collect();
    print!("{}", table(&["ID", "STATE", "NAME", "STARTED", "DURATION"], &rows));
    Ok(())
}

fn percent(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "-".into()
    } else {
        format!("{:.0}%", (100.0 * part / whole).clamp(0.0, 100.0))
    }
}

fn rate(records: f64, seconds: f64) -> String {
    if seconds <= 0.0 {
        "-".into()
    } else {
        format!("{:.0}/s", records / seconds)
    }
}

/// `sluice jobs ID`: one job as readable tables — state, checkpoints, and
/// per operator (and with `subtasks`, per subtask) records, rates,
/// busy/backpressured time, watermark, event-time lag (behind the job's
/// most advanced watermark) and wall-clock lag.
pub fn show_job(c: &Client, id: &str, subtasks: bool, output: Output) -> anyhow::Result<()> {
    let v = ok(c.get(&format!("/v1/jobs/{id}"))?, &format!("job {id}"))?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    print!("{}", job_text(&v, subtasks, SystemClock.now_ms()));
    Ok(())
}

/// The text of `sluice jobs ID` for the job details `v` at time `now`.
pub fn job_text(v: &serde_json::Value, subtasks: bool, now: i64) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let start = v["submitted_ms"].as_i64().unwrap_or(now);
    let end = v["ended_ms"].as_i64().unwrap_or(now);
    let elapsed_ms = (end - start).max(1);
    let _ = writeln!(
        out,
        "job {} `{}`: {}, started {}, {}",
        v["id"].as_str().unwrap_or_default(),
        v["name"].as_str().unwrap_or_default(),
        v["state"].as_str().unwrap_or_default(),
        utc(start),
        duration(end - start)
    );
    if let Some(e) = v["error"].as_str() {
        let _ = writeln!(out, "error: {e}");
    }
    if let Some(s) = v["stopped_with_savepoint"].as_str() {
        let _ = writeln!(out, "stopped with savepoint {s}");
    }
    if let Some(s) = v["restored_from"].as_str() {
        let _ = writeln!(out, "restored from {s}");
    }
    let cp = &v["checkpoints"];
    if cp.is_object() {
        let last = match cp["last"].as_object() {
            Some(l) => format!(
                ", last {} took {} ms ({} bytes)",
                l.get("id").cloned().unwrap_or_default(),
                l.get("duration_ms").cloned().unwrap_or_default(),
                l.get("size_bytes").cloned().unwrap_or_default()
            ),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "checkpoints: {} completed, {} aborted{last}; restarts: {}",
            cp["completed"], cp["aborted"], v["restarts"]
        );
    }
    let operators = v["operators"].as_array().cloned().unwrap_or_default();
    let highest = operators
        .iter()
        .filter_map(|o| o["watermark"].as_i64())
        .filter(|w| *w != i64::MAX)
        .max();
    let secs = elapsed_ms as f64 / 1000.0;
    let lags = |wm: &serde_json::Value| match wm.as_i64() {
        Some(w) if w != i64::MAX => (highest.map_or("-".into(), |h| duration(h - w)), duration(now - w)),
        _ => ("-".into(), "-".into()),
    };
    let mut rows = Vec::new();
    for o in &operators {
        let parallelism = o["parallelism"].as_f64().unwrap_or(1.0).max(1.0);
        let records_in = o["records_in"].as_f64().unwrap_or(0.0);
        let records_out = o["records_out"].as_f64().unwrap_or(0.0);
        let (event_lag, wall_lag) = lags(&o["watermark"]);
        let whole = elapsed_ms as f64 * parallelism;
        rows.push(vec![
            o["name"].as_str().unwrap_or_default().to_owned(),
            o["parallelism"].to_string(),
            o["records_in"].as_u64().map_or("-".into(), |n| n.to_string()),
            o["records_out"].as_u64().map_or("-".into(), |n| n.to_string()),
            rate(records_in, secs),
            rate(records_out, secs),
            percent(o["busy_ms"].as_f64().unwrap_or(0.0), whole),
            percent(o["backpressured_ms"].as_f64().unwrap_or(0.0), whole),
            watermark(&o["watermark"]),
            event_lag,
            wall_lag,
        ]);
        if subtasks {
            for s in o["subtasks"].as_array().into_iter().flatten() {
                let (event_lag, wall_lag) = lags(&s["watermark"]);
                rows.push(vec![
                    format!("  [{}]", s["subtask"]),
                    String::new(),
                    s["records_in"].to_string(),
                    s["records_out"].to_string(),
                    rate(s["records_in"].as_f64().unwrap_or(0.0), secs),
                    rate(s["records_out"].as_f64().unwrap_or(0.0), secs),
                    percent(s["busy_ms"].as_f64().unwrap_or(0.0), elapsed_ms as f64),
                    percent(s["backpressured_ms"].as_f64().unwrap_or(0.0), elapsed_ms as f64),
                    watermark(&s["watermark"]),
                    event_lag,
                    wall_lag,
                ]);
            }
        }
    }
    out.push('\n');
    out.push_str(&table(
        &[
            "OPERATOR",
            "PAR",
            "IN",
            "OUT",
            "IN RATE",
            "OUT RATE",
            "BUSY",
            "BACKPRESSURED",
            "WATERMARK",
            "EVENT LAG",
            "WALL LAG",
        ],
        &rows,
    ));
    out
}

/// `sluice checkpoints ID` / `sluice savepoints ID`: what the job keeps.
pub fn stored(c: &Client, id: &str, savepoints: bool, output: Output) -> anyhow::Result<()> {
    let kind = if savepoints { "savepoints" } else { "checkpoints" };
    let v = ok(c.get(&format!("/v1/jobs/{id}/{kind}"))?, &format!("{kind} of job {id}"))?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let list = v[kind].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("no {kind}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|x| {
            let mut row = vec![
                x["id"].to_string(),
                x["kind"].as_str().unwrap_or_default().to_owned(),
                x["completed_ms"].as_i64().map_or("-".into(), utc),
                x["size_bytes"].to_string(),
            ];
            if savepoints {
                row.push(x["savepoint"].as_str().unwrap_or_default().to_owned());
            }
            row
        })
        .collect();
    let mut header = vec!["ID", "KIND", "COMPLETED", "BYTES"];
    if savepoints {
        header.push("SAVEPOINT (for submit --savepoint)");
    }
    print!("{}", table(&header, &rows));
    Ok(())
}

fn log_line(l: &serde_json::Value) -> String {
    let t = l["time_ms"].as_i64().unwrap_or(0);
    format!(
        "{}.{:03} {:<5} {}[{}] {}",
        utc(t).trim_end_matches(" UTC"),
        t.rem_euclid(1000),
        l["level"].as_str().unwrap_or_default().to_uppercase(),
        l["operator"].as_str().unwrap_or_default(),
        l["subtask"],
        l["message"].as_str().unwrap_or_default()
    )
}

/// `sluice logs ID [-f]`: the job's log (its guests' lines and the host's
/// about it); with `follow`, new lines until the job ends.
pub fn logs(c: &Client, id: &str, tail: usize, follow: bool) -> anyhow::Result<()> {
    let mut seen: Option<u64> = None;
    // Set once the job has ended: one more read takes the lines it wrote last.
    let mut ended: Option<String> = None;
    loop {
        let v = ok(c.get(&format!("/v1/jobs/{id}/logs?tail={tail}"))?, &format!("log of job {id}"))?;
        let lines = v["lines"].as_array().cloned().unwrap_or_default();
        let written = v["written"].as_u64().unwrap_or(0);
        let new = match seen {
            None => lines.len(),
            Some(s) => usize::try_from(written.saturating_sub(s)).unwrap_or(usize::MAX).min(lines.len()),
        };
        if let Some(s) = seen
            && written.saturating_sub(s) > lines.len() as u64
        {
            println!("… {} lines not shown", written - s - lines.len() as u64);
        }
        for l in &lines[lines.len() - new..] {
            println!("{}", log_line(l));
        }
        seen = Some(written);
        if !follow {
            if v["rate_limited"].as_u64().is_some_and(|n| n > 0) {
                eprintln!("({} lines dropped by the rate limit)", v["rate_limited"]);
            }
            return Ok(());
        }
        if let Some(state) = ended {
            eprintln!("job {id} {state}");
            return Ok(());
        }
        let job = ok(c.get(&format!("/v1/jobs/{id}"))?, &format!("job {id}"))?;
        match job["state"].as_str() {
            Some(s @ ("finished" | "failed" | "canceled")) => ended = Some(s.to_owned()),
            _ => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// After a submission with `--savepoint`: wait (a few seconds at most)
/// for the job to say what it restored and rolled back, and print it.
pub fn report_restore(c: &Client, id: &str) -> anyhow::Result<()> {
    // The restore line comes before any task opens; a sink's rollback line
    // comes when it opens. A checkpoint completes only when every task has
    // opened, so with checkpoints on, the first one means every line is in.
    let spec = ok(c.get(&format!("/v1/jobs/{id}/spec"))?, &format!("spec of job {id}"))?;
    let checkpointed = !spec["spec"]["checkpoints"].is_null();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = ok(c.get(&format!("/v1/jobs/{id}/logs?tail=1000"))?, &format!("log of job {id}"))?;
        let lines = v["lines"].as_array().cloned().unwrap_or_default();
        let restored = lines
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.starts_with("restored ")));
        let state = ok(c.get(&format!("/v1/jobs/{id}"))?, &format!("job {id}"))?;
        let ended = matches!(state["state"].as_str(), Some("finished" | "failed" | "canceled"));
        let opened = !checkpointed || state["checkpoints"]["completed"].as_u64().unwrap_or(0) > 0;
        if (restored && opened) || ended || std::time::Instant::now() >= deadline {
            for l in &lines {
                let m = l["message"].as_str().unwrap_or_default();
                if m.starts_with("restored ") || m.starts_with("rolled back ") {
                    eprintln!("{}[{}]: {m}", l["operator"].as_str().unwrap_or_default(), l["subtask"]);
                }
            }
            if !restored {
                eprintln!(
                    "job {id} is {} and has not reported a restore yet",
                    state["state"].as_str().unwrap_or_default()
                );
            }
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// `sluice plan ID`: the plan of a server's job.
pub fn plan(c: &Client, id: &str) -> anyhow::Result<sluice::job::Plan> {
    let v = ok(c.get(&format!("/v1/jobs/{id}/plan"))?, &format!("plan of job {id}"))?;
    serde_json::from_value(v).context("reading the plan the server sent")
}
