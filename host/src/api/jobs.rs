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
//! server that runs jobs for months does not fill its disk. Within a job,
//! savepoints beyond `max_savepoints_per_job` are pruned oldest first, and
//! the tenant's disk use is measured while its jobs run: over `max_disk_mb`
//! (or `max_files`) the jobs that write fail, naming the quota.
//!
//! A submission is checked cheapest first: the running-job quota before the
//! body is parsed, the spec's size (nodes, edges, name lengths) before it is
//! validated, so a huge spec costs no CPU. A job thread that panics ends its
//! job as `failed` with the panic's message.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ApiError;
use super::budget::BodyBudget;
use super::config::ServerLimits;
use super::files::{FileError, JobPath, Usage};
use super::ha::HaJob;
use super::store::{TenantStore, canonical_digest, safe_relative};
use crate::checkpoint::coordinator::CheckpointStats;
use crate::checkpoint::storage::Metadata;
use crate::cluster::ha::{Ha, JobPointers, JobRecord};
use crate::cluster::jobmanager::{ClusterCore, RemoteJob, run_job_on_cluster};
use crate::cluster::{Restore, RunOptions, SavepointRequester, run_job};
use crate::job::{JobError, JobGraph, JobSpec};
use crate::runtime::{OperatorMetrics, TaskError};
use crate::spec::SinkKind;
use crate::tenancy::limits::{DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_MAX_OUTPUT_RECORDS, DEFAULT_MAX_RECORD_BYTES};
use crate::tenancy::logs::escape_control;
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
    savepoints: SavepointRequester,
}

#[derive(Default)]
struct Lifecycle {
    ended: Option<(JobState, i64)>,
    error: Option<String>,
    stopped_with: Option<String>,
    live: Option<Live>,
    cancel_requested: bool,
    /// Why the server stopped it (a quota), making the stop a failure.
    failure: Option<String>,
    /// On a JobManager: where its tasks run, and why it waits.
    cluster: Option<Arc<RemoteJob>>,
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
    /// The spec as submitted (digests and paths of the tenant's area).
    pub spec: serde_json::Value,
    /// The plan ([`crate::job::Plan`] as JSON): nodes, edges with their
    /// partitioners (defaulted ones resolved, saying why) and tasks.
    pub graph: serde_json::Value,
    /// Its directory (checkpoints and savepoints).
    pub dir: PathBuf,
    /// Where its checkpoints go, when it has `[checkpoints]`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Its guests' log.
    pub logs: Arc<GuestLogBuffer>,
    /// The savepoint it was started from (kept while it runs).
    pub restored_from: Option<PathBuf>,
    /// True when it writes to the disk (file sinks, checkpoints).
    pub writes_disk: bool,
    /// Its record in etcd, on a highly available JobManager.
    pub(super) ha: Option<Arc<HaJob>>,
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
        if let Some(c) = &l.cluster {
            c.abandon();
        }
        true
    }

    /// Stop it as failed with `reason` (a quota it crossed); false if it
    /// had already ended.
    pub fn fail(&self, reason: String) -> bool {
        let mut l = self.life();
        if l.ended.is_some() {
            return false;
        }
        l.failure.get_or_insert(reason);
        l.cancel_requested = true;
        if let Some(live) = &l.live {
            live.cancel.store(true, Ordering::SeqCst);
        }
        if let Some(c) = &l.cluster {
            c.abandon();
        }
        true
    }

    /// The reason given to [`fail`](Self::fail), if any.
    fn failure(&self) -> Option<String> {
        self.life().failure.clone()
    }

    /// Record how it ended; the first ending is kept.
    fn end(&self, state: JobState, error: Option<String>, stopped_with: Option<String>) {
        let mut l = self.life();
        if l.ended.is_some() {
            return;
        }
        let now = SystemClock.now_ms();
        l.ended = Some((state, now));
        l.error = error.clone();
        l.stopped_with = stopped_with.clone();
        drop(l);
        if let Some(h) = &self.ha {
            h.ended(state, error, stopped_with, now);
        }
    }

    /// Cancel it for its tenant: on a highly available JobManager the
    /// intent is recorded first, so a new leader does not restart it.
    pub fn cancel_by_tenant(&self) -> Result<bool, ApiError> {
        if self.state().is_terminal() {
            return Ok(false);
        }
        if let Some(h) = &self.ha {
            h.canceling()?;
        }
        Ok(self.cancel())
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
                    let subtasks: Vec<serde_json::Value> = m
                        .subtasks()
                        .iter()
                        .enumerate()
                        .map(|(i, s)| {
                            serde_json::json!({
                                "subtask": i,
                                "records_in": s.records_in,
                                "records_out": s.records_out,
                                "busy_ms": s.busy_ns / 1_000_000,
                                "backpressured_ms": s.backpressured_ns / 1_000_000,
                                "watermark": (s.watermark != i64::MIN).then_some(s.watermark),
                                "bytes_in": s.bytes_in,
                                "bytes_out": s.bytes_out,
                                "lag": (s.lag >= 0).then_some(s.lag),
                            })
                        })
                        .collect();
                    serde_json::json!({
                        "name": m.name,
                        "parallelism": m.parallelism,
                        "records_in": m.records_in(),
                        "records_out": m.records_out(),
                        "records_failed": m.records_failed(),
                        "records_late": m.records_late(),
                        "records_late_dropped": m.records_late_dropped(),
                        "bytes_in": m.bytes_in(),
                        "bytes_out": m.bytes_out(),
                        "lag": m.lag(),
                        "busy_ms": m.busy().as_millis() as u64,
                        "backpressured_ms": m.backpressured().as_millis() as u64,
                        "watermark": wm,
                        "watermark_lag_ms": wm.filter(|w| *w != i64::MAX).map(|w| now - w),
                        "subtasks": subtasks,
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
                        "history": c.history(),
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
            ("graph", self.graph.clone()),
            ("checkpoints", checkpoints),
            ("exceptions", exceptions.into()),
        ] {
            v[k] = x;
        }
        if let Some(c) = &l.cluster {
            v["status"] = serde_json::json!(c.waiting_for());
            v["subtasks"] = c
                .placement()
                .into_iter()
                .map(|(task, tm)| serde_json::json!({"task": task, "taskmanager": tm}))
                .collect();
        }
        v
    }

    /// Checkpoints (or, with `savepoints`, savepoints) kept for this job.
    pub fn stored_checkpoints(&self, savepoints: bool) -> Vec<serde_json::Value> {
        let Some(dir) = &self.checkpoint_dir else { return Vec::new() };
        let Ok(store) = crate::checkpoint::open_store(dir, false) else {
            return Vec::new();
        };
        let base = if savepoints { "savepoints" } else { "" };
        let prefix = if savepoints { "savepoint-" } else { "chk-" };
        let mut out: Vec<(u64, serde_json::Value)> = store
            .list(base)
            .into_iter()
            .filter(|name| name.starts_with(prefix))
            .filter_map(|name| {
                let rel = crate::checkpoint::store::join(&crate::checkpoint::store::join(base, &name), "_metadata.json");
                let (mut reader, _) = store
                    .open(&rel, crate::checkpoint::RestoreLimits::default().max_metadata_bytes)
                    .ok()?;
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut reader, &mut text).ok()?;
                let meta: Metadata = serde_json::from_slice(&text).ok()?;
                let bytes: u64 = meta.operators.iter().flat_map(|o| &o.files).map(|f| f.bytes).sum();
                let mut v = serde_json::json!({
                    "id": meta.checkpoint,
                    "kind": meta.kind,
                    "completed_ms": meta.completed_ms,
                    "size_bytes": bytes,
                });
                if savepoints {
                    v["savepoint"] = format!("{}/{name}", self.id).into();
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
        if self.checkpoint_dir.is_none() {
            return Err(ApiError::conflict(format!(
                "job {} has no `[checkpoints]`, so it cannot take savepoints",
                self.id
            )));
        }
        if self.state().is_terminal() {
            return Err(ApiError::conflict(format!("job {} has ended ({})", self.id, self.state().as_str())));
        }
        let requester = self.life().live.as_ref().map(|l| l.savepoints.clone());
        let Some(requester) = requester else {
            return Err(ApiError::conflict(format!("job {} is not running yet", self.id)));
        };
        let path = requester
            .request(stop, Duration::from_secs(300))
            .map_err(|e| ApiError::conflict(format!("savepoint of job {}: {e}", self.id)))?;
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
    /// Its request bodies in flight.
    pub bodies: Arc<BodyBudget>,
    /// Serializes file puts, so disk use is checked and changed as one step.
    pub disk: Mutex<()>,
    /// On a highly available JobManager: etcd and the object store.
    pub ha: Option<Arc<Ha>>,
}

impl Tenant {
    /// A tenant whose directory is `root`.
    pub fn open(config: TenantConfig, root: PathBuf, ha: Option<Arc<Ha>>) -> std::io::Result<Self> {
        let files = ha
            .as_ref()
            .and_then(|h| h.config().files_dir.as_ref())
            .map(|f| f.join(config.id.as_str()));
        let meter = TenantMeter::new(Some(config.quotas.max_state_mb.saturating_mul(1 << 20)));
        let store = match files {
            Some(f) => TenantStore::open_with_files(root, f)?,
            None => TenantStore::open(root)?,
        };
        Ok(Tenant {
            store,
            bodies: BodyBudget::new(
                format!("tenant `{}`", config.id),
                ("max_bodies_in_flight", "max_body_mb_in_flight"),
                config.quotas.max_bodies_in_flight,
                config.quotas.max_body_mb_in_flight.saturating_mul(1 << 20),
            ),
            config,
            meter,
            jobs: Mutex::new(Vec::new()),
            uploads: Mutex::new(()),
            disk: Mutex::new(()),
            ha,
        })
    }

    /// Where job `id` keeps its checkpoints: on the object store of a
    /// highly available JobManager, else in the job's directory.
    pub fn checkpoint_location(&self, id: &str) -> PathBuf {
        match &self.ha {
            Some(h) => PathBuf::from(h.config().checkpoint_location(self.config.id.as_str(), id)),
            None => self.store.job_dir(id).join("checkpoints"),
        }
    }

    /// True if it has a job `id`.
    pub fn has_job(&self, id: &str) -> bool {
        self.jobs_locked().iter().any(|j| j.id == id)
    }

    /// Keep a job that ended under an earlier leader, for inspection.
    pub(super) fn insert_ended(&self, job: Arc<ManagedJob>) {
        self.jobs_locked().push(job);
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

    /// How many of its jobs have not ended.
    pub fn active_jobs(&self) -> usize {
        self.jobs_locked().iter().filter(|j| !j.state().is_terminal()).count()
    }

    /// Its disk use now (files and job directories), walking one entry
    /// past its file quota at most.
    pub fn disk_usage(&self) -> Usage {
        self.store.disk_usage(self.config.quotas.max_files.saturating_add(1))
    }

    /// Why its disk use `u` is over its quotas, if it is.
    pub fn over_disk_quota(&self, u: Usage) -> Option<String> {
        let q = &self.config.quotas;
        if u.entries > q.max_files {
            return Some(format!(
                "file quota exceeded: tenant `{}` has more than {} files and directories in its files and job directories (`max_files`)",
                self.config.id, q.max_files
            ));
        }
        (u.bytes > q.max_disk_bytes()).then(|| {
            format!(
                "disk quota exceeded: tenant `{}` holds {} bytes in its files and job directories; its limit is {} bytes (`max_disk_mb` = {})",
                self.config.id,
                u.bytes,
                q.max_disk_bytes(),
                q.max_disk_mb
            )
        })
    }

    /// Admit a put of `cost` given the disk use `u` measured before it.
    pub fn admit_put(&self, u: Usage, cost: super::files::PutCost) -> Result<(), FileError> {
        let q = &self.config.quotas;
        let used = u.bytes.saturating_sub(cost.replaced);
        if used.saturating_add(cost.bytes) > q.max_disk_bytes() {
            return Err(FileError::DiskQuota {
                used: u.bytes,
                adding: cost.bytes.saturating_sub(cost.replaced),
                limit: q.max_disk_bytes(),
            });
        }
        if u.entries.saturating_add(cost.new_entries) > q.max_files {
            return Err(FileError::FileQuota {
                used: u.entries,
                adding: cost.new_entries,
                limit: q.max_files,
            });
        }
        Ok(())
    }

    /// Measure its disk use if a job of it writes, and fail those jobs
    /// when it is over its quota. Called every `disk_check_interval_ms`.
    pub fn enforce_disk_quota(&self) {
        let writers: Vec<Arc<ManagedJob>> = self
            .jobs()
            .into_iter()
            .filter(|j| j.writes_disk && !j.state().is_terminal())
            .collect();
        if writers.is_empty() {
            return;
        }
        let Some(reason) = self.over_disk_quota(self.disk_usage()) else {
            return;
        };
        for j in writers {
            if j.fail(reason.clone()) {
                tracing::warn!(tenant = %self.config.id, job = %j.id, reason = %reason, "job stopped by the disk quota");
            }
        }
    }

    /// Delete `job`'s oldest savepoints beyond `max_savepoints_per_job`
    /// (one a running job was started from is kept).
    pub fn prune_savepoints(&self, job: &ManagedJob) {
        let Some(dir) = &job.checkpoint_dir else { return };
        let Ok(store) = crate::checkpoint::open_store(dir, false) else {
            return;
        };
        let in_use: Vec<PathBuf> = self
            .jobs()
            .iter()
            .filter(|j| !j.state().is_terminal())
            .filter_map(|j| j.restored_from.clone())
            .collect();
        let mut names: Vec<String> = store
            .list("savepoints")
            .into_iter()
            .filter(|n| n.starts_with("savepoint-"))
            .collect();
        // `savepoint-<8 digits>`: by name is by number.
        names.sort();
        let excess = names.len().saturating_sub(self.config.quotas.max_savepoints_per_job);
        for name in names.into_iter().take(excess) {
            if !in_use.contains(&dir.join("savepoints").join(&name)) {
                let rel = format!("savepoints/{name}");
                if let Err(e) = store.remove_all(&rel) {
                    tracing::warn!(savepoint = %dir.join(&rel).display(), error = %e, "could not remove a savepoint");
                }
            }
        }
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
        remove_job_files(&job);
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
                removed.push(j.clone());
                false
            } else {
                true
            }
        });
        drop(jobs);
        for j in removed {
            remove_job_files(&j);
        }
    }
}

/// Remove an ended job's directory and, on a highly available JobManager,
/// its records in etcd and its checkpoints on the object store.
fn remove_job_files(job: &ManagedJob) {
    remove_dir(&job.dir);
    if let Some(h) = &job.ha {
        h.forget(job.checkpoint_dir.as_deref());
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

/// The body of a `POST /v1/jobs` sent as `Content-Type: application/toml`:
/// the spec in TOML (the dashboard's paste box, `curl --data-binary
/// @job.toml`), the savepoint and `allow_non_restored_state` from the query.
pub fn parse_submit_toml(body: &[u8], savepoint: Option<String>, allow: Option<&str>) -> Result<SubmitRequest, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad_request("invalid_job", format!("the TOML spec is not UTF-8: {e}")))?;
    let spec = JobSpec::from_toml(text).map_err(|e| ApiError::bad_request("invalid_job", format!("invalid job spec: {e}")))?;
    let allow_non_restored_state = match allow {
        None | Some("false") => false,
        Some("true" | "") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_job",
                format!("query parameter `allow_non_restored_state` is {other:?}; it takes true or false"),
            ));
        }
    };
    Ok(SubmitRequest {
        spec,
        savepoint: savepoint.filter(|s| !s.is_empty()),
        allow_non_restored_state,
    })
}

/// Make a tenant's spec safe to run: components named by digest become the
/// stored files, file paths are confined to the file area, the checkpoint
/// directory is the job's, and limits are capped by the quotas.
fn rewrite(spec: &mut JobSpec, tenant: &Tenant, id: &str) -> Result<Vec<String>, ApiError> {
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
            let what = format!("source `{}`: path", s.name);
            check_job_path(tenant, &safe_relative(p, &what)?, JobPath::Source, &what)?;
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
            let what = format!("sink `{}`: path", s.name);
            check_job_path(tenant, &safe_relative(p, &what)?, JobPath::Sink, &what)?;
        }
    }
    if spec.mode == crate::spec::ExecutionMode::Batch {
        let b = spec.batch.get_or_insert_with(Default::default);
        if b.spill_dir.is_some() {
            return Err(ApiError::unprocessable(
                "invalid_job",
                "batch.spill_dir: a server chooses where a batch job's intermediate results go; leave it out",
            ));
        }
        // Sort memory is host memory, like keyed state: capped by the same quota.
        b.sort_memory_mb = b.sort_memory_mb.min(q.max_state_mb.max(1));
    }
    if let Some(c) = &mut spec.checkpoints {
        c.dir = tenant.checkpoint_location(id).display().to_string();
        c.retain = c.retain.min(q.max_checkpoints_retained);
    }
    let l = &mut spec.limits;
    l.memory_mb = l.memory_mb.min(q.memory_mb);
    l.call_timeout_ms = l.call_timeout_ms.min(q.call_timeout_ms);
    l.log_lines_per_sec = l.log_lines_per_sec.min(q.log_lines_per_sec);
    l.max_state_mb = Some(l.max_state_mb.unwrap_or(q.max_state_mb).min(q.max_state_mb));
    l.max_record_bytes = l.max_record_bytes.min(DEFAULT_MAX_RECORD_BYTES);
    l.max_output_bytes_per_call = l.max_output_bytes_per_call.min(DEFAULT_MAX_OUTPUT_BYTES);
    l.max_output_records_per_call = l.max_output_records_per_call.min(DEFAULT_MAX_OUTPUT_RECORDS);
    l.fuel_per_call = match (l.fuel_per_call, q.fuel_per_call) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok(digests)
}

/// A path of a job through the file area: no link or special file on it.
fn check_job_path(tenant: &Tenant, rel: &std::path::Path, how: JobPath, what: &str) -> Result<(), ApiError> {
    tenant.store.files().check_job_path(rel, how).map_err(|e| match e {
        FileError::Io { .. } => ApiError::internal(format!("{what}: {e}")),
        e => ApiError::unprocessable("invalid_job", format!("{what}: {e}")),
    })
}

/// The checks of a submission that need no parsing: the running-job quota.
/// Called before the body is parsed, so a tenant at its limit costs no CPU.
pub fn precheck(tenant: &Tenant) -> Result<(), ApiError> {
    let (active, q) = (tenant.active_jobs(), &tenant.config.quotas);
    if active >= q.max_running_jobs {
        return Err(running_jobs_quota(tenant, active));
    }
    Ok(())
}

fn running_jobs_quota(tenant: &Tenant, active: usize) -> ApiError {
    ApiError::quota(format!(
        "tenant `{}` already has {active} jobs running; its limit is {}",
        tenant.config.id, tenant.config.quotas.max_running_jobs
    ))
}

/// Refuse a spec whose size alone makes it unusable, before any costly
/// validation: too many nodes or edges, or a name longer than
/// `max_name_bytes` (names are in every `/metrics` answer). The error names
/// the field and the limit.
pub fn check_bounds(spec: &JobSpec, limits: &ServerLimits) -> Result<(), ApiError> {
    let nodes = spec.sources.len() + spec.operators.len() + spec.sinks.len();
    if nodes > limits.max_spec_nodes {
        return Err(ApiError::unprocessable(
            "invalid_job",
            format!(
                "the job has {nodes} nodes (sources, operators and sinks); at most {} are allowed (server limit `max_spec_nodes`)",
                limits.max_spec_nodes
            ),
        ));
    }
    if spec.edges.len() > limits.max_spec_edges {
        return Err(ApiError::unprocessable(
            "invalid_job",
            format!(
                "the job has {} edges; at most {} are allowed (server limit `max_spec_edges`)",
                spec.edges.len(),
                limits.max_spec_edges
            ),
        ));
    }
    let names = std::iter::once(("spec.name".to_owned(), &spec.name))
        .chain(
            spec.sources
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.sources[{i}].name"), &s.name)),
        )
        .chain(
            spec.operators
                .iter()
                .enumerate()
                .map(|(i, o)| (format!("spec.operators[{i}].name"), &o.name)),
        )
        .chain(
            spec.sinks
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("spec.sinks[{i}].name"), &s.name)),
        )
        .chain(
            spec.edges
                .iter()
                .enumerate()
                .flat_map(|(i, e)| [(format!("spec.edges[{i}].from"), &e.from), (format!("spec.edges[{i}].to"), &e.to)]),
        );
    for (field, name) in names {
        if name.len() > limits.max_name_bytes {
            return Err(ApiError::unprocessable(
                "invalid_job",
                format!(
                    "`{field}` is {} bytes long; names may have at most {} bytes (server limit `max_name_bytes`)",
                    name.len(),
                    limits.max_name_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// A job a new leader starts again: its record, and where it restores from
/// (its latest completed checkpoint, else the savepoint it was submitted
/// with).
pub struct Resume {
    /// Its record in etcd.
    pub record: JobRecord,
    /// The checkpoint or savepoint location.
    pub restore: Option<PathBuf>,
}

/// Check, register and start a job. Fails (4xx) before anything is stored
/// if the request is invalid or over a quota. On a highly available
/// JobManager the job's record goes to etcd before it starts (`resume`:
/// a new leader restarts a recorded job under its id).
pub fn submit(
    tenant: &Arc<Tenant>,
    engine: &Arc<WasmEngine>,
    request: SubmitRequest,
    log_lines: usize,
    limits: &ServerLimits,
    cluster: Option<Arc<ClusterCore>>,
    resume: Option<Resume>,
) -> Result<Arc<ManagedJob>, ApiError> {
    let SubmitRequest {
        mut spec,
        savepoint,
        allow_non_restored_state,
    } = request;
    check_bounds(&spec, limits)?;
    let submitted = serde_json::to_value(spec.redacted()).unwrap_or_default();
    let writes_disk = spec.checkpoints.is_some() || spec.sinks.iter().any(|s| s.path.is_some());
    if writes_disk && let Some(reason) = tenant.over_disk_quota(tenant.disk_usage()) {
        return Err(ApiError::insufficient_storage(reason));
    }
    let id = resume.as_ref().map_or_else(new_job_id, |r| r.record.id.clone());
    let dir = tenant.store.job_dir(&id);
    let as_submitted = serde_json::to_value(&spec).unwrap_or_default();
    let components = rewrite(&mut spec, tenant, &id)?;
    let graph = JobGraph::build(spec, &tenant.store.files_dir()).map_err(|e| ApiError::unprocessable("invalid_job", e.to_string()))?;
    graph
        .load_components(engine)
        .map_err(|e| ApiError::unprocessable("invalid_job", e.to_string()))?;
    let restored_from = match (&resume, &savepoint) {
        (Some(r), _) => r.restore.clone(),
        (None, None) => None,
        (None, Some(sp)) => Some(resolve_savepoint(tenant, sp)?),
    };
    let restore = restored_from.clone().map(Restore::Path);
    let parallelism: u32 = graph.nodes.iter().map(|n| n.parallelism).sum();
    let sinks: Vec<String> = graph.spec.sinks.iter().filter_map(|s| s.path.clone()).collect();
    tenant.prune();
    let job = {
        let mut jobs = tenant.jobs_locked();
        let active: Vec<&Arc<ManagedJob>> = jobs.iter().filter(|j| !j.state().is_terminal()).collect();
        let q = &tenant.config.quotas;
        if active.len() >= q.max_running_jobs {
            return Err(running_jobs_quota(tenant, active.len()));
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
        let ha = match (&tenant.ha, resume) {
            (None, _) => None,
            (Some(ha), Some(r)) => Some(HaJob::new(ha.clone(), r.record)),
            (Some(ha), None) => {
                let record = JobRecord {
                    id: id.clone(),
                    tenant: tenant.config.id.as_str().to_owned(),
                    spec: as_submitted,
                    submitted_ms: SystemClock.now_ms(),
                    state: "running".into(),
                    error: None,
                    ended_ms: None,
                    savepoint: restored_from.as_ref().map(|p| p.display().to_string()),
                    allow_non_restored_state,
                    stopped_with: None,
                };
                let h = HaJob::new(ha.clone(), record);
                h.write()?;
                Some(h)
            }
        };
        let job = Arc::new(ManagedJob {
            id: id.clone(),
            name: graph.spec.name.clone(),
            submitted_ms: ha.as_ref().map_or_else(|| SystemClock.now_ms(), |h| h.submitted_ms()),
            parallelism,
            components,
            sinks,
            nodes: graph.nodes.iter().map(|n| (n.name.clone(), n.parallelism)).collect(),
            spec: submitted,
            graph: serde_json::to_value(crate::job::Plan::of(&graph)).unwrap_or_default(),
            dir,
            checkpoint_dir: graph.spec.checkpoints.as_ref().map(|c| PathBuf::from(&c.dir)),
            logs: Arc::new(GuestLogBuffer::new(log_lines)),
            restored_from,
            writes_disk,
            ha,
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
        savepoint_request_files: false,
        registry: tenant.ha.as_ref().map(|h| {
            let r: Arc<dyn crate::checkpoint::coordinator::CheckpointRegistry> = JobPointers::new(h.clone(), &id);
            r
        }),
        ..RunOptions::default()
    };
    let (runner, engine) = (job.clone(), engine.clone());
    let tenant_id = tenant.config.id.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("job-{id}"))
        .spawn(move || run_guarded(&runner, || run(&runner, &graph, &engine, options, &tenant_id, cluster.as_ref())));
    if let Err(e) = spawned {
        job.end(JobState::Failed, Some(format!("could not start the job thread: {e}")), None);
    }
    Ok(job)
}

/// A job that had ended (or was being cancelled) under an earlier leader,
/// as its record in etcd says, kept for inspection.
pub(super) fn ended_job(tenant: &Tenant, record: JobRecord) -> Arc<ManagedJob> {
    let state = match record.state.as_str() {
        "finished" => JobState::Finished,
        "failed" => JobState::Failed,
        _ => JobState::Canceled,
    };
    let name = record.spec.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_owned();
    let has_checkpoints = record.spec.get("checkpoints").is_some_and(|c| !c.is_null());
    let life = Lifecycle {
        ended: Some((state, record.ended_ms.unwrap_or(record.submitted_ms))),
        error: record.error.clone(),
        stopped_with: record.stopped_with.clone(),
        ..Lifecycle::default()
    };
    Arc::new(ManagedJob {
        id: record.id.clone(),
        name,
        submitted_ms: record.submitted_ms,
        parallelism: 0,
        components: Vec::new(),
        sinks: Vec::new(),
        nodes: Vec::new(),
        spec: record.spec.clone(),
        graph: serde_json::Value::Null,
        dir: tenant.store.job_dir(&record.id),
        checkpoint_dir: has_checkpoints.then(|| tenant.checkpoint_location(&record.id)),
        logs: Arc::new(GuestLogBuffer::new(1)),
        restored_from: None,
        writes_disk: false,
        ha: tenant.ha.as_ref().map(|h| HaJob::new(h.clone(), record)),
        life: Mutex::new(life),
    })
}

/// Run the job thread's `body`; a panic in it cancels what of the job still
/// runs and ends the job as `failed` with the panic's message, instead of
/// leaving it `created` or `running` for ever.
fn run_guarded(job: &ManagedJob, body: impl FnOnce()) {
    let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) else {
        return;
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    tracing::error!(job = %job.id, panic = %escape_control(&message), "job thread panicked");
    job.cancel();
    job.end(JobState::Failed, Some(format!("the job's thread panicked: {message}")), None);
}

/// The job's thread: start it, wait for it, record how it ended.
fn run(
    job: &Arc<ManagedJob>,
    graph: &JobGraph,
    engine: &Arc<WasmEngine>,
    options: RunOptions,
    tenant: &crate::tenancy::TenantId,
    cluster: Option<&Arc<ClusterCore>>,
) {
    let span = tracing::info_span!("job", tenant = %tenant, job = %job.id, name = %job.name);
    let _g = span.enter();
    let started = match cluster {
        Some(core) => run_job_on_cluster(graph, engine, options, core, &job.id, |remote| {
            let mut l = job.life();
            if l.cancel_requested {
                remote.abandon();
            }
            l.cluster = Some(remote.clone());
        }),
        None => run_job(graph, engine, options),
    };
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %escape_control(&e.to_string()), "job could not start");
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
            savepoints: handle.savepoints(),
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
        Err(e) if job.failure().is_some() => {
            tracing::info!(error = %escape_control(&e.to_string()), "job stopped by a quota");
            job.end(JobState::Failed, job.failure(), None);
        }
        Err(JobError::Failed(TaskError::Cancelled)) => {
            tracing::info!("job canceled");
            job.end(JobState::Canceled, None, None);
        }
        Err(e) => {
            // Guest text (stderr, log lines) may be in it: no raw newline reaches the log.
            tracing::warn!(error = %escape_control(&e.to_string()), "job failed");
            job.end(JobState::Failed, Some(e.to_string()), None);
        }
    }
}

/// The location of savepoint `<job id>/savepoint-<n>` of this tenant.
fn resolve_savepoint(tenant: &Tenant, id: &str) -> Result<PathBuf, ApiError> {
    let not_found = || ApiError::not_found(format!("savepoint {id:?}"));
    let (job, name) = id.split_once('/').ok_or_else(not_found)?;
    let n = name.strip_prefix("savepoint-").ok_or_else(not_found)?;
    if !is_job_id(job) || n.len() != 8 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(not_found());
    }
    let path = tenant.checkpoint_location(job).join("savepoints").join(name);
    let exists = crate::checkpoint::open_store(&path, false).is_ok_and(|s| s.exists("_metadata.json"));
    if !exists {
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

    fn spec(json: serde_json::Value) -> JobSpec {
        serde_json::from_value(json).unwrap()
    }

    fn tenant(name: &str, quotas: Quotas) -> (PathBuf, Tenant) {
        let root = std::env::temp_dir().join(format!("sluice-jobs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let config = TenantConfig {
            id: crate::tenancy::TenantId::try_from(name.to_owned()).unwrap(),
            token_sha256: "0".repeat(64),
            quotas,
        };
        (root.clone(), Tenant::open(config, root, None).unwrap())
    }

    fn job(id: &str, checkpoint_dir: Option<PathBuf>) -> Arc<ManagedJob> {
        Arc::new(ManagedJob {
            id: id.into(),
            name: "j".into(),
            submitted_ms: 0,
            parallelism: 1,
            components: Vec::new(),
            sinks: Vec::new(),
            nodes: Vec::new(),
            spec: serde_json::Value::Null,
            graph: serde_json::Value::Null,
            dir: PathBuf::new(),
            checkpoint_dir,
            logs: Arc::new(GuestLogBuffer::new(1)),
            restored_from: None,
            writes_disk: true,
            ha: None,
            life: Mutex::new(Lifecycle::default()),
        })
    }

    #[test]
    fn sizes_are_bounded_before_validation_naming_the_field() {
        let limits = ServerLimits {
            max_name_bytes: 8,
            max_spec_nodes: 3,
            max_spec_edges: 2,
            ..ServerLimits::default()
        };
        let ok = spec(serde_json::json!({"name": "12345678", "sources": [{"name": "s", "kind": "generator"}]}));
        check_bounds(&ok, &limits).unwrap();
        let long = spec(serde_json::json!({"name": "x", "sinks": [{"name": "123456789", "kind": "file"}]}));
        let e = check_bounds(&long, &limits).unwrap_err();
        assert_eq!(e.status, 422);
        assert!(
            e.message
                .contains("`spec.sinks[0].name` is 9 bytes long; names may have at most 8 bytes"),
            "{}",
            e.message
        );
        let edge = spec(serde_json::json!({"name": "x", "edges": [{"from": "a", "to": "123456789"}]}));
        assert!(check_bounds(&edge, &limits).unwrap_err().message.contains("`spec.edges[0].to`"));
        let nodes: Vec<_> = (0..4)
            .map(|i| serde_json::json!({"name": format!("s{i}"), "kind": "generator"}))
            .collect();
        let many = spec(serde_json::json!({"name": "x", "sources": nodes}));
        assert!(check_bounds(&many, &limits).unwrap_err().message.contains("4 nodes"));
        let edges: Vec<_> = (0..3).map(|_| serde_json::json!({"from": "a", "to": "b"})).collect();
        let many = spec(serde_json::json!({"name": "x", "edges": edges}));
        assert!(check_bounds(&many, &limits).unwrap_err().message.contains("max_spec_edges"));
    }

    #[test]
    fn a_panicking_job_thread_fails_its_job_with_the_message() {
        let j = job("0000000000000001", None);
        run_guarded(&j, || panic!("boom at record {}", 7));
        assert_eq!(j.state(), JobState::Failed);
        let d = j.details();
        assert_eq!(d["error"], "the job's thread panicked: boom at record 7", "{d}");
        // A thread that ends normally keeps the state it recorded.
        let k = job("0000000000000002", None);
        run_guarded(&k, || k.end(JobState::Finished, None, None));
        assert_eq!(k.state(), JobState::Finished);
    }

    #[test]
    fn a_stop_by_the_server_is_a_failure_naming_the_reason() {
        let j = job("0000000000000003", None);
        assert!(j.fail("disk quota exceeded".into()));
        assert_eq!(j.failure().as_deref(), Some("disk quota exceeded"));
        j.end(JobState::Failed, j.failure(), None);
        assert!(!j.fail("again".into()), "an ended job cannot fail again");
        assert_eq!(j.details()["error"], "disk quota exceeded");
    }

    #[test]
    fn disk_use_is_checked_against_both_quotas() {
        let q = Quotas {
            max_disk_mb: 1,
            max_files: 10,
            ..Quotas::default()
        };
        let (root, t) = tenant("disk", q);
        let u = |bytes, entries| Usage {
            bytes,
            entries,
            truncated: false,
        };
        let cost = |replaced, bytes, new_entries| super::super::files::PutCost {
            replaced,
            bytes,
            new_entries,
        };
        assert!(t.over_disk_quota(u(1 << 20, 10)).is_none());
        assert!(t.over_disk_quota(u((1 << 20) + 1, 0)).unwrap().contains("`max_disk_mb` = 1"));
        assert!(t.over_disk_quota(u(0, 11)).unwrap().contains("max_files"));
        t.admit_put(u(1000, 1), cost(0, (1 << 20) - 1000, 1)).unwrap();
        assert!(matches!(
            t.admit_put(u(1000, 1), cost(0, 1 << 20, 1)),
            Err(FileError::DiskQuota { .. })
        ));
        // A replacement counts only what it adds.
        t.admit_put(u(1 << 20, 1), cost(1 << 20, 1 << 20, 0)).unwrap();
        assert!(matches!(t.admit_put(u(0, 9), cost(0, 1, 2)), Err(FileError::FileQuota { .. })));
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn savepoints_beyond_the_retention_are_pruned_oldest_first() {
        let q = Quotas {
            max_savepoints_per_job: 2,
            ..Quotas::default()
        };
        let (root, t) = tenant("savepoints", q);
        let dir = root.join("jobs/x/checkpoints");
        for n in [3, 1, 2, 10] {
            std::fs::create_dir_all(dir.join(format!("savepoints/savepoint-{n:08}"))).unwrap();
        }
        let j = job("0000000000000004", Some(dir.clone()));
        t.prune_savepoints(&j);
        let mut left: Vec<String> = std::fs::read_dir(dir.join("savepoints"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["savepoint-00000003", "savepoint-00000010"]);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn job_ids_are_distinct_hex() {
        let a = new_job_id();
        assert!(is_job_id(&a), "{a}");
        assert_ne!(a, new_job_id());
    }
}
