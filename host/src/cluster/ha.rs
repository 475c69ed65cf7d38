//! High availability of the JobManager: leader election and pointers in
//! etcd, as Flink's HA services do with ZooKeeper or Kubernetes ConfigMaps.
//! Only pointers live in etcd; checkpoints and components are on the object
//! store (`[ha] storage`).
//!
//! ```text
//!  /sluice/<cluster id>/leader            {api, rpc, pid}, bound to the leader's lease;
//!                                          its create revision is the leader's epoch
//!  /sluice/<cluster id>/jobs/<job>        JobRecord: tenant, spec (component digests), state, result
//!  /sluice/<cluster id>/checkpoints/<job> the latest completed checkpoint: {id, location}
//!  /sluice/<cluster id>/counters/<job>    the highest checkpoint id handed out
//! ```
//!
//! Every JobManager with the same `[ha]` settings campaigns: the first to
//! create the leader key (a transaction comparing its create revision with
//! 0) leads; the others poll until the key is gone (its lease expired or
//! was revoked). Every write of a leader is a transaction that first
//! compares the leader key's create revision with the leader's epoch, so a
//! deposed leader's writes fail ([`HaError::Fenced`]). A leader that cannot
//! renew its lease stops acting before etcd can expire it: a watchdog
//! calls `on_lost` when the last renewal that etcd answered is older than
//! the lease time minus a margin (the JobManager process exits; its
//! TaskManagers see their command streams close and stop their tasks).

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

/// `[ha]` of a JobManager's config.
///
/// ```toml
/// [ha]
/// etcd = ["http://127.0.0.1:2379"]
/// cluster_id = "default"
/// lease_ttl_s = 5
/// storage = "s3://sluice-ha/cluster-a"   # checkpoints and components
/// files_dir = "/shared/sluice-files"     # tenant file areas every process mounts
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// etcd endpoints.
    pub etcd: Vec<String>,
    /// Names this cluster's keys (several clusters may share an etcd).
    #[serde(default = "default_cluster_id")]
    pub cluster_id: String,
    /// The leader's lease, seconds: a dead leader is replaced after about
    /// this long. Default 5.
    #[serde(default = "default_ttl")]
    pub lease_ttl_s: u64,
    /// Where checkpoints and uploaded components live:
    /// `s3://bucket/prefix`.
    pub storage: String,
    /// The root of the tenants' file areas (`<files_dir>/<tenant>`), on a
    /// volume every JobManager and TaskManager mounts at this path: file
    /// sources read and file sinks write there. Default: each
    /// JobManager's own `data_dir`.
    #[serde(default)]
    pub files_dir: Option<PathBuf>,
}

fn default_cluster_id() -> String {
    "default".into()
}

fn default_ttl() -> u64 {
    5
}

impl HaConfig {
    /// Check the settings.
    pub fn check(&self) -> Result<(), String> {
        if self.etcd.is_empty() {
            return Err("[ha] etcd must list at least one endpoint".into());
        }
        if !(2..=120).contains(&self.lease_ttl_s) {
            return Err(format!("[ha] lease_ttl_s must be 2 to 120, not {}", self.lease_ttl_s));
        }
        let id_ok = !self.cluster_id.is_empty()
            && self.cluster_id.len() <= 64
            && self.cluster_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            return Err(format!(
                "[ha] cluster_id must be 1 to 64 letters, digits, `-` or `_`, not {:?}",
                self.cluster_id
            ));
        }
        crate::checkpoint::object::parse_url(&self.storage).map_err(|e| format!("[ha] storage: {e}"))?;
        Ok(())
    }

    /// Where a tenant's job keeps its checkpoints.
    pub fn checkpoint_location(&self, tenant: &str, job: &str) -> String {
        format!("{}/tenants/{tenant}/jobs/{job}/checkpoints", self.storage.trim_end_matches('/'))
    }

    /// Where uploaded components are kept, by digest.
    pub fn component_location(&self) -> String {
        format!("{}/components", self.storage.trim_end_matches('/'))
    }
}

/// Why an HA write failed.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    /// This JobManager does not lead (any more): the write was refused.
    #[error("this JobManager is not the leader (its epoch {0} was superseded or its lease expired)")]
    Fenced(i64),
    /// etcd could not be reached or answered an error; the outcome of the
    /// write is unknown.
    #[error("etcd: {0}")]
    Unavailable(String),
}

/// What the leader advertises.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaderInfo {
    /// Its HTTP API, `http://HOST:PORT`.
    pub api: String,
    /// Its control RPC, `HOST:PORT`.
    pub rpc: String,
    /// Its process id.
    pub pid: u32,
    /// Its epoch (the leader key's create revision); 0 in what it writes.
    #[serde(default)]
    pub epoch: i64,
}

/// A job as etcd keeps it: enough for a new leader to start it again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// The spec as submitted (component digests, paths in the tenant's area).
    pub spec: serde_json::Value,
    /// When it was submitted, ms since the Unix epoch.
    pub submitted_ms: i64,
    /// `running`, `canceling`, `finished`, `canceled` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub error: Option<String>,
    /// When it ended, ms since the Unix epoch.
    #[serde(default)]
    pub ended_ms: Option<i64>,
    /// The savepoint it was submitted with (a location), if any.
    #[serde(default)]
    pub savepoint: Option<String>,
    /// Restore with state of operators the job no longer has.
    #[serde(default)]
    pub allow_non_restored_state: bool,
    /// The savepoint it stopped with (`<job>/savepoint-<n>`).
    #[serde(default)]
    pub stopped_with: Option<String>,
}

/// The latest completed checkpoint of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointPointer {
    /// Its id.
    pub id: u64,
    /// Its directory (`s3://…/chk-<id>`).
    pub location: String,
}

/// How long one etcd call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A JobManager's connection to etcd, its lease and (once it leads) its
/// epoch.
pub struct Ha {
    client: Client,
    config: HaConfig,
    prefix: String,
    lease: AtomicI64,
    /// The epoch while leading; 0 before.
    epoch: AtomicI64,
    /// While leading: until when the lease surely holds (the last renewal
    /// etcd answered, plus the lease time, minus a margin).
    valid_until: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn etcd_err(e: etcd_client::Error) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl Ha {
    /// Connect to etcd (the first call fails if it cannot be reached).
    pub fn connect(config: &HaConfig) -> std::io::Result<Arc<Ha>> {
        config
            .check()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let endpoints = config.etcd.clone();
        let client = crate::blocking::block(CALL_TIMEOUT * 2, "connecting to etcd".into(), async move {
            let options = ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(2))
                .with_timeout(CALL_TIMEOUT)
                .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
            Client::connect(endpoints, Some(options)).await.map_err(etcd_err)
        })?;
        Ok(Arc::new(Ha {
            client,
            prefix: format!("/sluice/{}/", config.cluster_id),
            config: config.clone(),
            lease: AtomicI64::new(0),
            epoch: AtomicI64::new(0),
            valid_until: Mutex::new(None),
        }))
    }

    /// The settings.
    pub fn config(&self) -> &HaConfig {
        &self.config
    }

    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.prefix)
    }

    fn ttl(&self) -> Duration {
        Duration::from_secs(self.config.lease_ttl_s)
    }

    fn call<T, F, Fut>(&self, what: &str, f: F) -> std::io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let fut = f(self.client.clone());
        crate::blocking::block(CALL_TIMEOUT, format!("etcd: {what}"), async move { fut.await.map_err(etcd_err) })
    }

    /// The epoch this JobManager leads with, if it leads.
    pub fn epoch(&self) -> Option<i64> {
        let e = self.epoch.load(Ordering::SeqCst);
        (e > 0 && self.lease_holds()).then_some(e)
    }

    fn lease_holds(&self) -> bool {
        lock(&self.valid_until).is_some_and(|t| Instant::now() < t)
    }

    /// The current leader, if there is one.
    pub fn leader(&self) -> std::io::Result<Option<LeaderInfo>> {
        let key = self.key("leader");
        let kv = self.call("reading the leader", move |mut c| async move { c.get(key, None).await })?;
        Ok(kv.kvs().first().and_then(|kv| {
            let mut info: LeaderInfo = serde_json::from_slice(kv.value()).ok()?;
            info.epoch = kv.create_revision();
            Some(info)
        }))
    }

    /// Grant a lease and keep renewing it for the life of the process;
    /// the watchdog calls `on_lost` once a lease this JobManager leads with
    /// may have expired.
    fn start_lease(self: &Arc<Self>, on_lost: Arc<dyn Fn(String) + Send + Sync>) -> std::io::Result<()> {
        let ttl = self.config.lease_ttl_s as i64;
        let granted = self.call("granting a lease", move |mut c| async move { c.lease_grant(ttl, None).await })?;
        self.lease.store(granted.id(), Ordering::SeqCst);
        let margin = (self.ttl() / 5).max(Duration::from_millis(500));
        // Called once, by whichever notices first.
        let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let on_lost: Arc<dyn Fn(String) + Send + Sync> = Arc::new(move |why| {
            if !fired.swap(true, Ordering::SeqCst) {
                on_lost(why);
            }
        });
        let lost = on_lost.clone();
        let me = self.clone();
        let valid_for = self.ttl().saturating_sub(margin);
        *lock(&self.valid_until) = Some(Instant::now() + valid_for);
        crate::blocking::spawn(async move {
            let interval = (me.ttl() / 3).max(Duration::from_millis(300));
            let mut keeper: Option<(i64, etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)> = None;
            loop {
                let sent = Instant::now();
                let id = me.lease.load(Ordering::SeqCst);
                if keeper.as_ref().is_none_or(|k| k.0 != id) {
                    let mut c = me.client.clone();
                    keeper = match tokio::time::timeout(CALL_TIMEOUT, c.lease_keep_alive(id)).await {
                        Ok(Ok((k, stream))) => Some((id, k, stream)),
                        _ => None,
                    };
                }
                if let Some((_, k, stream)) = keeper.as_mut() {
                    let r = tokio::time::timeout(CALL_TIMEOUT, async {
                        k.keep_alive().await?;
                        stream.message().await
                    })
                    .await;
                    match r {
                        Ok(Ok(Some(resp))) if resp.ttl() > 0 => *lock(&me.valid_until) = Some(sent + valid_for),
                        Ok(Ok(Some(_))) => {
                            // etcd says the lease is gone: a leader stops; a
                            // standby's campaign grants a new one.
                            *lock(&me.valid_until) = None;
                            keeper = None;
                            if me.epoch.load(Ordering::SeqCst) > 0 {
                                lost("the leader's lease expired in etcd".into());
                                return;
                            }
                        }
                        _ => keeper = None,
                    }
                }
                tokio::time::sleep(interval.saturating_sub(sent.elapsed())).await;
            }
        });
        let me = self.clone();
        std::thread::Builder::new().name("ha-watchdog".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if me.epoch.load(Ordering::SeqCst) > 0 && !me.lease_holds() {
                    on_lost(format!(
                        "the leader's lease was not renewed within {} s (etcd unreachable?)",
                        me.config.lease_ttl_s
                    ));
                    return;
                }
            }
        })?;
        Ok(())
    }

    /// Campaign until this JobManager leads; returns its epoch. `on_lost`
    /// is called (once) if it loses the lead afterwards.
    pub fn campaign(self: &Arc<Self>, me: &LeaderInfo, on_lost: impl Fn(String) + Send + Sync + 'static) -> std::io::Result<i64> {
        self.start_lease(Arc::new(on_lost))?;
        let value = serde_json::to_vec(&LeaderInfo { epoch: 0, ..me.clone() }).map_err(std::io::Error::other)?;
        let mut announced = None;
        loop {
            let (key, lease, value) = (self.key("leader"), self.lease.load(Ordering::SeqCst), value.clone());
            let r = self.call("campaigning", move |mut c| async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(lease)))])
                    .or_else([TxnOp::get(key, None)]);
                c.txn(txn).await
            });
            match r {
                Ok(resp) if resp.succeeded() => {
                    let epoch = resp.header().map_or(0, |h| h.revision());
                    if !self.lease_holds() {
                        return Err(std::io::Error::other("the lease expired while campaigning"));
                    }
                    self.epoch.store(epoch, Ordering::SeqCst);
                    return Ok(epoch);
                }
                Ok(_) => {
                    if let Ok(Some(l)) = self.leader()
                        && announced != Some(l.epoch)
                    {
                        tracing::info!(leader = %l.api, epoch = l.epoch, "standing by: another JobManager leads");
                        announced = Some(l.epoch);
                    }
                }
                Err(e) => tracing::warn!("campaigning: {e}"),
            }
            if !self.lease_holds() {
                // A standby whose lease lapsed (etcd was away): a new one.
                let ttl = self.config.lease_ttl_s as i64;
                if let Ok(g) = self.call("granting a lease", move |mut c| async move { c.lease_grant(ttl, None).await }) {
                    self.lease.store(g.id(), Ordering::SeqCst);
                    *lock(&self.valid_until) = Some(Instant::now() + self.ttl() / 2);
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Give up the lead (at shutdown): the lease is revoked, so a standby
    /// takes over at once.
    pub fn resign(&self) {
        self.epoch.store(0, Ordering::SeqCst);
        self.revoke_lease();
    }

    /// Revoke the lease in etcd (its keys go at once) without telling this
    /// process first: what etcd does when the lease expires, for tests of
    /// fencing.
    pub fn revoke_lease(&self) {
        let lease = self.lease.load(Ordering::SeqCst);
        let _ = self.call("revoking the lease", move |mut c| async move { c.lease_revoke(lease).await });
    }

    fn fenced(&self, what: &str, ops: Vec<TxnOp>) -> Result<(), HaError> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        if epoch == 0 || !self.lease_holds() {
            return Err(HaError::Fenced(epoch));
        }
        let key = self.key("leader");
        let r = self
            .call(what, move |mut c| async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key, CompareOp::Equal, epoch)])
                    .and_then(ops);
                c.txn(txn).await
            })
            .map_err(|e| HaError::Unavailable(e.to_string()))?;
        if r.succeeded() { Ok(()) } else { Err(HaError::Fenced(epoch)) }
    }

    /// Write `value` under `suffix`, if this JobManager still leads.
    pub fn put(&self, suffix: &str, value: &impl Serialize) -> Result<(), HaError> {
        let bytes = serde_json::to_vec(value).map_err(|e| HaError::Unavailable(e.to_string()))?;
        self.fenced(&format!("writing {suffix}"), vec![TxnOp::put(self.key(suffix), bytes, None)])
    }

    /// Delete the keys under `suffix`s, if this JobManager still leads.
    pub fn delete(&self, suffixes: &[String]) -> Result<(), HaError> {
        let ops = suffixes.iter().map(|s| TxnOp::delete(self.key(s), None)).collect();
        self.fenced("deleting pointers", ops)
    }

    /// The value under `suffix`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, suffix: &str) -> std::io::Result<Option<T>> {
        let key = self.key(suffix);
        let r = self.call("reading", move |mut c| async move { c.get(key, None).await })?;
        match r.kvs().first() {
            Some(kv) => serde_json::from_slice(kv.value())
                .map(Some)
                .map_err(|e| std::io::Error::other(format!("etcd key {suffix}: {e}"))),
            None => Ok(None),
        }
    }

    /// Every (key suffix, value) under `prefix`.
    pub fn list(&self, prefix: &str) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let key = self.key(prefix);
        let r = self.call("listing", move |mut c| async move {
            c.get(key, Some(GetOptions::new().with_prefix())).await
        })?;
        Ok(r.kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                (k.strip_prefix(&self.prefix).unwrap_or(&k).to_owned(), kv.value().to_vec())
            })
            .collect())
    }

    /// The job records.
    pub fn jobs(&self) -> std::io::Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for (k, v) in self.list("jobs/")? {
            match serde_json::from_slice(&v) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(key = %k, "skipping a malformed job record: {e}"),
            }
        }
        Ok(out)
    }
}

/// The keys of a job.
pub fn job_key(job: &str) -> String {
    format!("jobs/{job}")
}

/// The key of a job's latest completed checkpoint.
pub fn checkpoint_key(job: &str) -> String {
    format!("checkpoints/{job}")
}

/// The key of a job's checkpoint id counter.
pub fn counter_key(job: &str) -> String {
    format!("counters/{job}")
}

/// Ids a leader reserves at once: the counter is written once per this many
/// checkpoints.
const RESERVE: u64 = 100;

/// A job's pointers, written by its checkpoint coordinator
/// ([`crate::checkpoint::coordinator::CheckpointRegistry`]).
pub struct JobPointers {
    ha: Arc<Ha>,
    job: String,
    reserved: Mutex<u64>,
}

impl std::fmt::Debug for JobPointers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPointers").field("job", &self.job).finish()
    }
}

impl JobPointers {
    /// The pointers of `job`.
    pub fn new(ha: Arc<Ha>, job: &str) -> Arc<Self> {
        Arc::new(JobPointers {
            ha,
            job: job.to_owned(),
            reserved: Mutex::new(0),
        })
    }
}

impl crate::checkpoint::coordinator::CheckpointRegistry for JobPointers {
    fn first_id(&self) -> u64 {
        match self.ha.get::<u64>(&counter_key(&self.job)) {
            Ok(n) => n.unwrap_or(0) + 1,
            Err(e) => {
                tracing::warn!(job = %self.job, "reading the checkpoint id counter: {e}");
                0
            }
        }
    }

    fn reserve(&self, id: u64) -> Result<(), String> {
        let mut r = lock(&self.reserved);
        if id <= *r {
            return Ok(());
        }
        let upto = id + RESERVE - 1;
        self.ha.put(&counter_key(&self.job), &upto).map_err(|e| e.to_string())?;
        *r = upto;
        Ok(())
    }

    fn completed(&self, id: u64, location: &std::path::Path) -> Result<(), String> {
        let p = CheckpointPointer {
            id,
            location: location.display().to_string(),
        };
        self.ha.put(&checkpoint_key(&self.job), &p).map_err(|e| e.to_string())
    }
}
