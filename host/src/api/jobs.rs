//! Jobs of the server: submission, the job lifecycle, and what the API
//! shows of a job.
//!
//! ```text
//!  POST /v1/jobs ─► parse ─► rewrite (digests → files, paths confined,
//!                  limits ≤ quotas) ─► JobGraph ─► quotas ─► CREATED
//!                                                              │ own thread: run_job
//!              ┌───────────── RESTARTING ◄──── failure ───┐    ▼
//!              └─ restored from checkpoint ──────────────► RUNNING ─► FINISHED
//!                                                              │   (also: stop with savepoint)
//!                                   cancel ─► CANCELED ◄───────┤
//!                          restarts used up / cannot start ─► FAILED
//! ```
//!
//! A job runs on the executor's threads; the API keeps only shared handles
//! (metrics, checkpoint figures, the cancel flag), so reading a job's status
//! never waits on it. Ended jobs are kept for inspection up to the tenant's
//! `max_finished_jobs`; older ones are deleted with their directories, so a
//! server that runs jobs for months does not fill its disk.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ApiError;
use super::store::{TenantStore, canonical_digest, safe_relative};
use crate::checkpoint::coordinator::{CheckpointStats, request_savepoint_while};
use crate::checkpoint::storage::Metadata;
use crate::job::spec::SinkKind;
use crate::job::{JobError, JobGraph, JobSpec};
use crate::runtime::{OperatorMetrics, Restore, RunOptions, TaskError, run_job};
use crate::tenancy::{GuestLogBuffer, Quotas, TenantConfig, TenantMeter};
use crate::time::{Clock, SystemClock};
use crate::wasm::WasmEngine;

/// Flink's job states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Accepted; its tasks are being started.
    Created,
    /// Its tasks run.
    Running,
    /// A task failed; the job waits to restart from its latest checkpoint.
    Restarting,
    /// Its input ended and all output is committed (or it stopped with a
    /// savepoint).
    Finished,
    /// Cancelled by its tenant.
    Canceled,
    /// It failed and its restart strategy gave up (or it could not start).
    Failed,
}

impl JobState {
    /// True for states a job never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Finished | JobState::Canceled | JobState::Failed)
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Created => "created",
            JobState::Running => "running",
            JobState::Restarting => "restarting",
            JobState::Finished => "finished",
            JobState::Canceled => "canceled",
            JobState::Failed => "failed",
        }
    }
}

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The job spec, the TOML schema as JSON; components are digests of
    /// uploaded components, paths are relative to the tenant's file area.
    pub spec: JobSpec,
    /// Start from this savepoint (`<job id>/savepoint-<n>`, as returned by
    /// the savepoint routes).
    #[serde(default)]
    pub savepoint: Option<String>,
    /// Restore even if the savepoint has state of operators the job no
    /// longer has.
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

/// Shared handles of a started job.
struct Live {
    metrics: Vec<Arc<OperatorMetrics>>,
    checkpoints: Arc<CheckpointStats>,
    restarts: Arc<AtomicU32>,
    cancel: Arc<AtomicBool>,
    restarting: Arc<AtomicBool>,
    exceptions: Arc<Mutex<VecDeque<(i64, String)>>>,
}

#[derive(Default)]
struct Lifecycle {
    ended: Option<(JobState, i64)>,
    error: Option<String>,
    stopped_with: Option<String>,
    live: Option<Live>,
    cancel_requested: bool,
}

/// One job of a tenant.
pub struct ManagedJob {
    /// 16 hex digits.
    pub id: String,
    /// The spec's name.
    pub name: String,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_ms: i64,
    /// Sum of its nodes' parallelism (what counts against the quota).
    pub parallelism: u32,
    /// Digests of the components it uses.
    pub components: Vec<String>,
    /// The file sinks' paths, relative to the file area.
    pub sinks: Vec<String>,
    /// Nodes and their parallelism.
    pub nodes: Vec<(String, u32)>,
    /// Its directory (checkpoints and savepoints).
    pub dir: PathBuf,
    /// Where its checkpoints go, when it has `[checkpoints]`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Its guests' log.
    pub logs: Arc<GuestLogBuffer>,
    life: Mutex<Lifecycle>,
}

impl ManagedJob {
    fn life(&self) -> MutexGuard<'_, Lifecycle> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its state now.
    pub fn state(&self) -> JobState {
        self.state_locked(&self.life())
    }

    /// Ask it to stop; false if it had already ended.
    pub fn cancel(&self) -> bool {
        let mut l = self.life();
        if l.ended.is_some() {
            return false;
        }
        l.cancel_requested = true;
        if let Some(live) = &l.live {
            live.cancel.store(true, Ordering::SeqCst);
        }
        true
    }

    fn end(&self, state: JobState, error: Option<String>, stopped_with: Option<String>) {
        let mut l = self.life();
        l.ended = Some((state, SystemClock.now_ms()));
        l.error = error;
        l.stopped_with = stopped_with;
    }

    /// The savepoint id of a savepoint directory of this job.
    fn savepoint_id(&self, path: &std::path::Path) -> String {
        format!(
            "{}/{}",
            self.id,
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
        )
    }

    /// The summary `GET /v1/jobs` lists.
    pub fn summary(&self) -> serde_json::Value {
        self.summary_locked(&self.life())
    }

    fn summary_locked(&self, l: &Lifecycle) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "state": self.state_locked(l).as_str(),
            "submitted_ms": self.submitted_ms,
            "ended_ms": l.ended.map(|(_, t)| t),
        })
    }

    fn state_locked(&self, l: &Lifecycle) -> JobState {
        match (&l.ended, &l.live) {
            (Some((s, _)), _) => *s,
            (None, None) => JobState::Created,
            (None, Some(live)) if live.restarting.load(Ordering::Relaxed) => JobState::Restarting,
            (None, Some(_)) => JobState::Running,
        }
    }

    /// Everything `GET /v1/jobs/{id}` shows.
    pub fn details(&self) -> serde_json::Value {
        let l = self.life();
        let now = SystemClock.now_ms();
        let operators: Vec<serde_json::Value> = match &l.live {
            Some(live) => live
                .metrics
                .iter()
                .map(|m| {
                    let wm = m.watermark();
                    serde_json::json!({
                        "name": m.name,
                        "parallelism": m.parallelism,
                        "records_in": m.records_in(),
                        "records_out": m.records_out(),
                        "records_failed": m.records_failed(),
                        "records_late": m.records_late(),
                        "busy_ms": m.busy().as_millis() as u64,
                        "backpressured_ms": m.backpressured().as_millis() as u64,
                        "watermark": wm,
                        "watermark_lag_ms": wm.filter(|w| *w != i64::MAX).map(|w| now - w),
                    })
                })
                .collect(),
            None => self
                .nodes
                .iter()
                .map(|(name, p)| serde_json::json!({"name": name, "parallelism": p}))
                .collect(),
        };
        let (restarts, checkpoints, exceptions) = match &l.live {
            Some(live) => {
                let c = &live.checkpoints;
                let last_id = c.last_id.load(Ordering::Relaxed);
                let last = (last_id > 0).then(|| {
                    serde_json::json!({
                        "id": last_id,
                        "duration_ms": c.last_duration_ms.load(Ordering::Relaxed),
                        "size_bytes": c.last_bytes.load(Ordering::Relaxed),
                    })
                });
                let ex: Vec<serde_json::Value> = live
                    .exceptions
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(t, m)| serde_json::json!({"time_ms": t, "message": m}))
                    .collect();
                (
                    live.restarts.load(Ordering::Relaxed),
                    serde_json::json!({
                        "completed": c.completed.load(Ordering::Relaxed),
                        "aborted": c.aborted.load(Ordering::Relaxed),
                        "last": last,
                    }),
                    ex,
                )
            }
            None => (0, serde_json::Value::Null, Vec::new()),
        };
        let mut v = self.summary_locked(&l);
        for (k, x) in [
            ("error", serde_json::json!(l.error)),
            ("stopped_with_savepoint", serde_json::json!(l.stopped_with)),
            ("restarts", restarts.into()),
            ("parallelism", self.parallelism.into()),
            ("components", serde_json::json!(self.components)),
            ("operators", operators.into()),
            ("checkpoints", checkpoints),
            ("exceptions", exceptions.into()),
        ] {
            v[k] = x;
        }
        v
    }

    /// Checkpoints (or, with `savepoints`, savepoints) kept for this job.
    pub fn stored_checkpoints(&self, savepoints: bool) -> Vec<serde_json::Value> {
        let Some(dir) = &self.checkpoint_dir else { return Vec::new() };
        let base = if savepoints { dir.join("savepoints") } else { dir.clone() };
        let prefix = if savepoints { "savepoint-" } else { "chk-" };
        let Ok(entries) = std::fs::read_dir(&base) else { return Vec::new() };
        let mut out: Vec<(u64, serde_json::Value)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path().join("_metadata.json")).ok()?;
                let meta: Metadata = serde_json::from_str(&text).ok()?;
                let bytes: u64 = meta.operators.iter().flat_map(|o| &o.files).map(|f| f.bytes).sum();
                let mut v = serde_json::json!({
                    "id": meta.checkpoint,
                    "kind": meta.kind,
                    "completed_ms": meta.completed_ms,
                    "size_bytes": bytes,
                });
                if savepoints {
                    v["savepoint"] = self.savepoint_id(&e.path()).into();
                }
                Some((meta.checkpoint, v))
            })
            .collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Take a savepoint (and with `stop`, stop the job after it); blocks
    /// until it is complete.
    pub fn savepoint(self: &Arc<Self>, stop: bool) -> Result<serde_json::Value, ApiError> {
        let Some(dir) = &self.checkpoint_dir else {
            return Err(ApiError::conflict(format!(
                "job {} has no `[checkpoints]`, so it cannot take savepoints",
                self.id
            )));
        };
        if self.state().is_terminal() {
            return Err(ApiError::conflict(format!("job {} has ended ({})", self.id, self.state().as_str())));
        }
        let me = self.clone();
        let path = request_savepoint_while(dir, stop, Duration::from_secs(300), move || !me.state().is_terminal())
            .map_err(|e| ApiError::conflict(format!("savepoint of job {}: {e:#}", self.id)))?;
        Ok(serde_json::json!({ "savepoint": self.savepoint_id(&path), "stopped": stop }))
    }
}

/// A tenant with its store, meter and jobs.
pub struct Tenant {
    /// Its config.
    pub config: TenantConfig,
    /// Its directory.
    pub store: TenantStore,
    /// What it uses.
    pub meter: Arc<TenantMeter>,
    /// Its jobs, oldest first.
    jobs: Mutex<Vec<Arc<ManagedJob>>>,
    /// Serializes uploads, so the component count is checked and changed
    /// as one step.
    pub uploads: Mutex<()>,
}

impl Tenant {
    /// A tenant whose directory is `root`.
    pub fn open(config: TenantConfig, root: PathBuf) -> std::io::Result<Self> {
        let meter = TenantMeter::new(Some(config.quotas.max_state_mb.saturating_mul(1 << 20)));
        Ok(Tenant {
            store: TenantStore::open(root)?,
            config,
            meter,
            jobs: Mutex::new(Vec::new()),
            uploads: Mutex::new(()),
        })
    }

    fn jobs_locked(&self) -> MutexGuard<'_, Vec<Arc<ManagedJob>>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its jobs, oldest first.
    pub fn jobs(&self) -> Vec<Arc<ManagedJob>> {
        self.jobs_locked().clone()
    }

    /// Its job `id`.
    pub fn job(&self, id: &str) -> Option<Arc<ManagedJob>> {
        self.jobs_locked().iter().find(|j| j.id == id).cloned()
    }

    /// True when a job that has not ended uses component `digest`.
    pub fn component_in_use(&self, digest: &str) -> Option<String> {
        self.jobs_locked()
            .iter()
            .find(|j| !j.state().is_terminal() && j.components.iter().any(|c| c == digest))
            .map(|j| j.id.clone())
    }

    /// Delete an ended job and its files; 409 while it runs.
    pub fn delete_job(&self, id: &str) -> Result<(), ApiError> {
        let mut jobs = self.jobs_locked();
        let Some(i) = jobs.iter().position(|j| j.id == id) else {
            return Err(ApiError::not_found(format!("job {id}")));
        };
        if !jobs[i].state().is_terminal() {
            return Err(ApiError::conflict(format!(
                "job {id} is {}; cancel it first",
                jobs[i].state().as_str()
            )));
        }
        let job = jobs.remove(i);
        drop(jobs);
        remove_dir(&job.dir);
        Ok(())
    }

    /// Delete the oldest ended jobs beyond the tenant's retention.
    fn prune(&self) {
        let keep = self.config.quotas.max_finished_jobs;
        let mut jobs = self.jobs_locked();
        let ended = jobs.iter().filter(|j| j.state().is_terminal()).count();
        let mut excess = ended.saturating_sub(keep);
        let mut removed = Vec::new();
        jobs.retain(|j| {
            if excess > 0 && j.state().is_terminal() {
                excess -= 1;
                removed.push(j.dir.clone());
                false
            } else {
                true
            }
        });
        drop(jobs);
        for d in removed {
            remove_dir(&d);
        }
    }
}

fn remove_dir(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not remove a job directory");
    }
}

/// A new job id: 16 hex digits, unique in this process and unlikely to
/// repeat across restarts.
fn new_job_id() -> String {
    use sha2::{Digest, Sha256};
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{}-{}-{:?}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
    );
    hex::encode(&Sha256::digest(seed.as_bytes())[..8])
}

fn is_job_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Parse a submit body; the error names the field that is wrong.
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." {
            format!("invalid job request: {inner}")
        } else {
            format!("invalid job request at `{path}`: {inner}")
        };
        ApiError::bad_request("invalid_job", msg)
    })
}

/// Make a tenant's spec safe to run: components named by digest become the
/// stored files, file paths are confined to the file area, the checkpoint
/// directory is the job's, and limits are capped by the quotas.
fn rewrite(spec: &mut JobSpec, tenant: &Tenant, job_dir: &std::path::Path) -> Result<Vec<String>, ApiError> {
    let q: &Quotas = &tenant.config.quotas;
    let mut digests = Vec::new();
    let mut resolve = |node: &str, c: &mut Option<String>| -> Result<(), ApiError> {
        let Some(digest) = c.as_deref() else { return Ok(()) };
        let Some(canonical) = canonical_digest(digest) else {
            return Err(ApiError::unprocessable(
                "invalid_job",
                format!(
                    "operator `{node}`: component {digest:?} must be the digest of an uploaded component (`sha256:<64 hex digits>`, as POST /v1/components returns)"
                ),
            ));
        };
        let path = tenant.store.component_path(digest).ok_or_else(|| {
            ApiError::unprocessable(
                "unknown_component",
                format!("operator `{node}`: no uploaded component has the digest {digest}"),
            )
        })?;
        if !digests.contains(&canonical) {
            digests.push(canonical);
        }
        *c = Some(path.display().to_string());
        Ok(())
    };
    for o in &mut spec.operators {
        resolve(&o.name, &mut o.component)?;
        if let Some(w) = &mut o.watermarks {
            resolve(&o.name, &mut w.component)?;
        }
    }
    for s in &mut spec.sources {
        if let Some(w) = &mut s.watermarks {
            resolve(&s.name, &mut w.component)?;
        }
        if let Some(p) = &s.path {
            safe_relative(p, &format!("source `{}`: path", s.name))?;
        }
    }
    for s in &spec.sinks {
        if s.kind == SinkKind::Stdout {
            return Err(ApiError::unprocessable(
                "invalid_job",
                format!(
                    "sink `{}`: stdout sinks are not available on a server; use a file sink and read it with GET /v1/files/…",
                    s.name
                ),
            ));
        }
        if let Some(p) = &s.path {
            safe_relative(p, &format!("sink `{}`: path", s.name))?;
        }
    }
    if let Some(c) = &mut spec.checkpoints {
        c.dir = job_dir.join("checkpoints").display().to_string();
    }
    let l = &mut spec.limits;
    l.memory_mb = l.memory_mb.min(q.memory_mb);
    l.call_timeout_ms = l.call_timeout_ms.min(q.call_timeout_ms);
    l.log_lines_per_sec = l.log_lines_per_sec.min(q.log_lines_per_sec);
    l.fuel_per_call = match (l.fuel_per_call, q.fuel_per_call) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(digests)
}

/// Check, register and start a job. Fails (4xx) before anything is stored
/// if the request is invalid or over a quota.
pub fn submit(
    tenant: &Arc<Tenant>,
    engine: &Arc<WasmEngine>,
    request: SubmitRequest,
    log_lines: usize,
) -> Result<Arc<ManagedJob>, ApiError> {
    let SubmitRequest {
        mut spec,
        savepoint,
        allow_non_restored_state,
    } = request;
    let id = new_job_id();
    let dir = tenant.store.job_dir(&id);
    let components = rewrite(&mut spec, tenant, &dir)?;
    let graph = JobGraph::build(spec, &tenant.store.files_dir()).map_err(|e| ApiError::unprocessable("invalid_job", e.to_string()))?;
    graph
        .load_components(engine)
        .map_err(|e| ApiError::unprocessable("invalid_job", e.to_string()))?;
    let restore = match &savepoint {
        None => None,
        Some(sp) => Some(Restore::Path(resolve_savepoint(tenant, sp)?)),
    };
    let parallelism: u32 = graph.nodes.iter().map(|n| n.parallelism).sum();
    let sinks: Vec<String> = graph.spec.sinks.iter().filter_map(|s| s.path.clone()).collect();
    tenant.prune();
    let job = {
        let mut jobs = tenant.jobs_locked();
        let active: Vec<&Arc<ManagedJob>> = jobs.iter().filter(|j| !j.state().is_terminal()).collect();
        let q = &tenant.config.quotas;
        if active.len() >= q.max_running_jobs {
            return Err(ApiError::quota(format!(
                "tenant `{}` already has {} jobs running; its limit is {}",
                tenant.config.id,
                active.len(),
                q.max_running_jobs
            )));
        }
        let used: u32 = active.iter().map(|j| j.parallelism).sum();
        if used + parallelism > q.max_total_parallelism {
            return Err(ApiError::quota(format!(
                "the job needs {parallelism} parallel subtasks and tenant `{}` runs {used}; its limit is {}",
                tenant.config.id, q.max_total_parallelism
            )));
        }
        if let Some((other, path)) = active
            .iter()
            .find_map(|j| j.sinks.iter().find(|p| sinks.contains(p)).map(|p| (j.id.clone(), p.clone())))
        {
            return Err(ApiError::conflict(format!(
                "job {other} already writes to {path:?}; two running jobs may not share a sink path"
            )));
        }
        std::fs::create_dir_all(&dir).map_err(|e| ApiError::internal(format!("creating the job directory: {e}")))?;
        let job = Arc::new(ManagedJob {
            id: id.clone(),
            name: graph.spec.name.clone(),
            submitted_ms: SystemClock.now_ms(),
            parallelism,
            components,
            sinks,
            nodes: graph.nodes.iter().map(|n| (n.name.clone(), n.parallelism)).collect(),
            dir,
            checkpoint_dir: graph.spec.checkpoints.as_ref().map(|c| PathBuf::from(&c.dir)),
            logs: Arc::new(GuestLogBuffer::new(log_lines)),
            life: Mutex::new(Lifecycle::default()),
        });
        jobs.push(job.clone());
        job
    };
    let options = RunOptions {
        restore,
        allow_non_restored_state,
        meter: Some(tenant.meter.clone()),
        logs: Some(job.logs.clone()),
        ..RunOptions::default()
    };
    let (runner, engine) = (job.clone(), engine.clone());
    let tenant_id = tenant.config.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("job-{id}"))
        .spawn(move || run(&runner, &graph, &engine, options, &tenant_id));
    if let Err(e) = spawned {
        job.end(JobState::Failed, Some(format!("could not start the job thread: {e}")), None);
    }
    Ok(job)
}

/// The job's thread: start it, wait for it, record how it ended.
fn run(job: &Arc<ManagedJob>, graph: &JobGraph, engine: &Arc<WasmEngine>, options: RunOptions, tenant: &crate::tenancy::TenantId) {
    let span = tracing::info_span!("job", tenant = %tenant, job = %job.id, name = %job.name);
    let _g = span.enter();
    let handle = match run_job(graph, engine, options) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "job could not start");
            job.end(JobState::Failed, Some(e.to_string()), None);
            return;
        }
    };
    {
        let mut l = job.life();
        l.live = Some(Live {
            metrics: handle.metrics.clone(),
            checkpoints: handle.checkpoints.clone(),
            restarts: handle.restarts.clone(),
            cancel: handle.cancel_token(),
            restarting: handle.restarting_flag(),
            exceptions: handle.exceptions.clone(),
        });
        if l.cancel_requested {
            handle.cancel();
        }
    }
    tracing::info!("job running");
    match handle.wait() {
        Ok(summary) => {
            let sp = summary.savepoint.as_deref().map(|p| job.savepoint_id(p));
            tracing::info!(
                records = summary.metrics.iter().map(|m| m.records_out()).sum::<u64>(),
                "job finished"
            );
            job.end(JobState::Finished, None, sp);
        }
        Err(JobError::Failed(TaskError::Cancelled)) => {
            tracing::info!("job canceled");
            job.end(JobState::Canceled, None, None);
        }
        Err(e) => {
            tracing::warn!(error = %e, "job failed");
            job.end(JobState::Failed, Some(e.to_string()), None);
        }
    }
}

/// The directory of savepoint `<job id>/savepoint-<n>` of this tenant.
fn resolve_savepoint(tenant: &Tenant, id: &str) -> Result<PathBuf, ApiError> {
    let not_found = || ApiError::not_found(format!("savepoint {id:?}"));
    let (job, name) = id.split_once('/').ok_or_else(not_found)?;
    let n = name.strip_prefix("savepoint-").ok_or_else(not_found)?;
    if !is_job_id(job) || n.len() != 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    let path = tenant.store.job_dir(job).join("checkpoints/savepoints").join(name);
    if !path.join("_metadata.json").is_file() {
        return Err(not_found());
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_request_names_the_field() {
        let e = parse_submit(br#"{"spec": {"name": "x", "operators": [{"name": "a", "kind": "map", "paralelism": 2}]}}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("spec.operators[0]"), "{}", e.message);
        assert!(e.message.contains("paralelism"), "{}", e.message);
        let e = parse_submit(b"{").unwrap_err();
        assert_eq!(e.code, "invalid_job");
        let e = parse_submit(br#"{"spec": {}}"#).unwrap_err();
        assert!(e.message.contains("missing field `name`"), "{}", e.message);
    }

    #[test]
    fn job_ids_are_distinct_hex() {
        let a = new_job_id();
        assert!(is_job_id(&a), "{a}");
        assert_ne!(a, new_job_id());
    }
}
