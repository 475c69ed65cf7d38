//! The server side of a highly available JobManager: each job's record in
//! etcd, uploaded components on the object store, what a new leader does
//! when it takes over, and how a standby answers.
//!
//! ```text
//!  submit ─► record {spec with digests, tenant, state: running} (fenced) ─► start
//!  cancel ─► record state: canceling (fenced) ─► stop ─► canceled
//!  end ─► record state: finished | canceled | failed, result (fenced)
//!  upload ─► local store + s3://…/components/<hex>.wasm (create-only)
//!  takeover: every record ─► running: components fetched (hash checked),
//!            restarted under its id from its checkpoint pointer;
//!            canceling: canceled; ended: kept for inspection
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sha2::{Digest, Sha256};

use super::ApiError;
use super::jobs::{self, JobState, Resume, SubmitRequest, Tenant};
use super::store::{canonical_digest, digest_hex, validate_component};
use crate::checkpoint::CheckpointStore;
use crate::checkpoint::object::ObjectStoreStore;
use crate::cluster::ha::{CheckpointPointer, Ha, HaError, JobRecord, checkpoint_key, counter_key, job_key};
use crate::job::JobSpec;
use crate::wasm::WasmEngine;

/// Largest component fetched back from the object store.
const MAX_COMPONENT_BYTES: u64 = 512 << 20;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A job's record in etcd.
pub struct HaJob {
    ha: Arc<Ha>,
    record: Mutex<JobRecord>,
    /// Set at shutdown: the process stops, the job does not end (a standby
    /// takes it over), so nothing more is recorded.
    detached: AtomicBool,
}

fn refused(e: HaError) -> ApiError {
    match e {
        HaError::Fenced(_) => ApiError::unavailable(format!("{e}; ask the leader")),
        HaError::Unavailable(_) => ApiError::unavailable(format!("recording the job in etcd failed: {e}")),
    }
}

impl HaJob {
    /// The record of a job.
    pub fn new(ha: Arc<Ha>, record: JobRecord) -> Arc<Self> {
        Arc::new(HaJob {
            ha,
            record: Mutex::new(record),
            detached: AtomicBool::new(false),
        })
    }

    /// When the job was first submitted.
    pub fn submitted_ms(&self) -> i64 {
        lock(&self.record).submitted_ms
    }

    /// Write the record (fenced).
    pub fn write(&self) -> Result<(), ApiError> {
        let r = lock(&self.record);
        self.ha.put(&job_key(&r.id), &*r).map_err(refused)
    }

    /// Record that the tenant cancelled the job.
    pub fn canceling(&self) -> Result<(), ApiError> {
        lock(&self.record).state = "canceling".into();
        self.write()
    }

    /// Record how the job ended; its counter goes (its checkpoint pointer
    /// stays while its retained checkpoints do).
    pub fn ended(&self, state: JobState, error: Option<String>, stopped_with: Option<String>, at: i64) {
        if self.detached.load(Ordering::SeqCst) {
            return;
        }
        let id = {
            let mut r = lock(&self.record);
            r.state = state.as_str().into();
            r.error = error;
            r.stopped_with = stopped_with;
            r.ended_ms = Some(at);
            r.id.clone()
        };
        if let Err(e) = self.write() {
            tracing::warn!(job = %id, "the job's end was not recorded: {e}");
            return;
        }
        if let Err(e) = self.ha.delete(&[counter_key(&id)]) {
            tracing::warn!(job = %id, "the job's checkpoint counter was not removed: {e}");
        }
    }

    /// Stop recording (the process shuts down; a standby takes the job).
    pub fn detach(&self) {
        self.detached.store(true, Ordering::SeqCst);
    }

    /// Remove the job's keys and its checkpoints (the job was deleted).
    pub fn forget(&self, checkpoints: Option<&Path>) {
        let id = lock(&self.record).id.clone();
        if let Some(dir) = checkpoints {
            match crate::checkpoint::open_store(dir, false) {
                Ok(store) => {
                    if let Err(e) = store.remove_all("") {
                        tracing::warn!(job = %id, "the job's checkpoints were not removed: {e}");
                    }
                }
                Err(e) => tracing::warn!(job = %id, "the job's checkpoints were not removed: {e}"),
            }
        }
        if let Err(e) = self.ha.delete(&[job_key(&id), checkpoint_key(&id), counter_key(&id)]) {
            tracing::warn!(job = %id, "the job's records were not removed: {e}");
        }
    }
}

fn components(ha: &Ha) -> Result<ObjectStoreStore, ApiError> {
    ObjectStoreStore::open(&ha.config().component_location()).map_err(|e| ApiError::internal(format!("the component store: {e}")))
}

/// Keep an uploaded component on the object store too (content-addressed,
/// create-only: the same bytes are stored once), so a new leader can load
/// the jobs that use it.
pub fn store_component(ha: &Ha, digest: &str, bytes: &[u8]) -> Result<(), ApiError> {
    let hex = digest_hex(digest).ok_or_else(|| ApiError::internal("bad digest"))?;
    match components(ha)?.put_atomic(&format!("{hex}.wasm"), bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ApiError::unavailable(format!("storing the component on the object store: {e}"))),
    }
}

/// Make component `digest` available to `tenant` here: fetched from the
/// object store (its bytes must hash to the digest) when this JobManager
/// does not have it yet.
fn ensure_component(ha: &Ha, tenant: &Tenant, engine: &WasmEngine, digest: &str, now: i64) -> Result<(), ApiError> {
    if tenant.store.component_path(digest).is_some() {
        return Ok(());
    }
    let hex = digest_hex(digest).ok_or_else(|| ApiError::internal(format!("{digest:?} is not a digest")))?;
    let (mut reader, _) = components(ha)?
        .open(&format!("{hex}.wasm"), MAX_COMPONENT_BYTES)
        .map_err(|e| ApiError::unavailable(format!("fetching component {digest} from the object store: {e}")))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut bytes).map_err(|e| ApiError::unavailable(format!("reading component {digest}: {e}")))?;
    if hex::encode(Sha256::digest(&bytes)) != hex {
        return Err(ApiError::internal(format!(
            "component {digest} on the object store does not hash to its digest"
        )));
    }
    let meta = validate_component(engine, &bytes, now)?;
    tenant.store.put_component(&meta, &bytes)
}

/// The component digests a spec names.
fn digests(spec: &JobSpec) -> Vec<String> {
    let mut out: Vec<String> = spec
        .operators
        .iter()
        .flat_map(|o| [o.component.as_deref(), o.watermarks.as_ref().and_then(|w| w.component.as_deref())])
        .chain(
            spec.sources
                .iter()
                .map(|s| s.watermarks.as_ref().and_then(|w| w.component.as_deref())),
        )
        .flatten()
        .filter_map(canonical_digest)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What a new leader needs of the server to take the jobs over.
pub struct Takeover<'a> {
    /// etcd and the object store.
    pub ha: &'a Arc<Ha>,
    /// Log lines kept per job.
    pub log_lines: usize,
    /// The server's limits.
    pub limits: &'a super::ServerLimits,
    /// The cluster the jobs run on.
    pub cluster: Option<Arc<crate::cluster::jobmanager::ClusterCore>>,
}

impl Takeover<'_> {
    /// Take over every recorded job: restart those that ran, keep the
    /// ended ones for inspection. Returns how many were restarted.
    pub fn run(&self, tenant_of: impl Fn(&str) -> Option<(Arc<Tenant>, Arc<WasmEngine>)>) -> std::io::Result<usize> {
        let mut restarted = 0;
        for record in self.ha.jobs()? {
            let Some((tenant, engine)) = tenant_of(&record.tenant) else {
                tracing::warn!(job = %record.id, tenant = %record.tenant, "a recorded job of an unknown tenant is left alone");
                continue;
            };
            if tenant.has_job(&record.id) {
                continue;
            }
            match record.state.as_str() {
                "running" => match self.restart(&tenant, &engine, record.clone()) {
                    Ok(()) => restarted += 1,
                    Err(e) => {
                        tracing::warn!(job = %record.id, "the job could not be restarted: {e}");
                        let mut failed = record;
                        failed.state = "failed".into();
                        failed.error = Some(format!("restarting it on a new leader failed: {e}"));
                        failed.ended_ms = Some(crate::time::Clock::now_ms(&crate::time::SystemClock));
                        let job = jobs::ended_job(&tenant, failed);
                        if let Some(h) = &job.ha {
                            let _ = h.write();
                        }
                        tenant.insert_ended(job);
                    }
                },
                "canceling" => {
                    // Cancelled before the failover: it stays cancelled.
                    let mut r = record;
                    r.state = "canceled".into();
                    r.ended_ms = Some(crate::time::Clock::now_ms(&crate::time::SystemClock));
                    let job = jobs::ended_job(&tenant, r);
                    if let Some(h) = &job.ha {
                        let _ = h.write();
                    }
                    tenant.insert_ended(job);
                }
                _ => tenant.insert_ended(jobs::ended_job(&tenant, record)),
            }
        }
        Ok(restarted)
    }

    fn restart(&self, tenant: &Arc<Tenant>, engine: &Arc<WasmEngine>, record: JobRecord) -> Result<(), ApiError> {
        let spec: JobSpec = serde_json::from_value(record.spec.clone())
            .map_err(|e| ApiError::internal(format!("the recorded spec does not parse: {e}")))?;
        let now = crate::time::Clock::now_ms(&crate::time::SystemClock);
        for d in digests(&spec) {
            ensure_component(self.ha, tenant, engine, &d, now)?;
        }
        let pointer: Option<CheckpointPointer> = self
            .ha
            .get(&checkpoint_key(&record.id))
            .map_err(|e| ApiError::unavailable(format!("reading the checkpoint pointer: {e}")))?;
        let restore = pointer
            .map(|p| p.location)
            .or_else(|| record.savepoint.clone())
            .map(std::path::PathBuf::from);
        tracing::info!(job = %record.id, restore = ?restore, "taking the job over");
        let request = SubmitRequest {
            spec,
            savepoint: None,
            allow_non_restored_state: record.allow_non_restored_state,
        };
        jobs::submit(
            tenant,
            engine,
            request,
            self.log_lines,
            self.limits,
            self.cluster.clone(),
            Some(Resume { record, restore }),
        )
        .map(|_| ())
    }
}
