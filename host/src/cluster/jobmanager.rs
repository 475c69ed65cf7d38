//! The JobManager's cluster side: the registry of TaskManagers (heartbeats,
//! slots), the control RPC service they call, and the deployer that puts a
//! job's tasks into their slots.
//!
//! ```text
//!  TaskManager ─Register─► registry: id, data address, slots, last heartbeat
//!              ─Commands─► stream fed by deployers (deploy, cancel, trigger, …)
//!              ─Heartbeat─► metrics per job; silence > timeout ─► lost
//!              ─Report─► the job's JobMaster (fencing token + attempt checked)
//!  RemoteDeployer: wait for slots (slot sharing: a job needs as many as its
//!  highest parallelism) ─► subtask i of every operator into slot i ─► Deploy
//! ```
//!
//! A TaskManager that stops heartbeating or whose command stream closes (its
//! process died) is lost: every job with a task on it fails its attempt and
//! restarts on the slots that remain. A restarted TaskManager registers anew
//! and gets a new id; nothing of an older attempt is sent to it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::jobmaster::Deployer;
use super::rpc::service::job_manager_server::{JobManager, JobManagerServer};
use super::rpc::{
    self, AttemptId, BarrierCommand, Command, CommandsRequest, ComponentChunk, Deploy, Empty, FetchComponent, Heartbeat, HeartbeatResponse,
    Notify, RegisterRequest, RegisterResponse, Report, ReportKind, TaskLocation, command,
};
use crate::checkpoint::coordinator::{Ack, Command as CoordinatorCommand, Decline};
use crate::job::JobError;
use crate::job::plan::{ExecutionPlan, RestoreHandles};
use crate::runtime::{EventSink, MetricsSample, OperatorMetrics, SubtaskSample, TaskError, TaskEvent};

/// How the JobManager treats its TaskManagers.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Where the control RPC listens (port 0: any).
    pub rpc: SocketAddr,
    /// How often TaskManagers heartbeat. Default 2 s.
    pub heartbeat_interval: Duration,
    /// Silence after which a TaskManager is lost. Default 10 s.
    pub heartbeat_timeout: Duration,
    /// How long a job waits for enough free slots before it fails. Default 5 min.
    pub slot_timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            rpc: SocketAddr::from(([127, 0, 0, 1], 0)),
            heartbeat_interval: Duration::from_secs(2),
            heartbeat_timeout: Duration::from_secs(10),
            slot_timeout: Duration::from_secs(300),
        }
    }
}

type CommandSender = mpsc::UnboundedSender<Result<Command, Status>>;

/// A registered TaskManager.
struct TaskManagerEntry {
    data_addr: String,
    slots: u32,
    pid: u32,
    registered_ms: i64,
    last_heartbeat: Instant,
    /// Commands to it; the receiver waits for its `Commands` call.
    commands: CommandSender,
    receiver: Option<mpsc::UnboundedReceiver<Result<Command, Status>>>,
    /// Slots held per job id.
    allocated: HashMap<String, u32>,
    /// Tasks per job id.
    tasks: HashMap<String, Vec<String>>,
    bytes_sent: u64,
    bytes_received: u64,
    rss_bytes: u64,
}

impl TaskManagerEntry {
    fn free(&self) -> u32 {
        self.slots.saturating_sub(self.allocated.values().sum())
    }
}

/// What the JobManager keeps of a job running on the cluster.
pub struct RemoteJob {
    id: String,
    fencing: u64,
    /// The current attempt and where its events go.
    events: Mutex<Option<(u32, EventSink)>>,
    /// (TaskManager id, attempt) pairs that confirmed a cancel.
    cancelled: Mutex<HashSet<(String, u32)>>,
    cancelled_cv: Condvar,
    /// (TaskManager id, checkpoint) pairs whose commit is confirmed.
    committed: Mutex<HashSet<(String, u64)>>,
    committed_cv: Condvar,
    /// Why the current attempt lost a TaskManager.
    lost: Mutex<Option<String>>,
    /// Counters per node, summed over the TaskManagers' heartbeats.
    metrics: Vec<Arc<OperatorMetrics>>,
    /// The latest sample of each TaskManager.
    samples: Mutex<HashMap<String, rpc::JobSample>>,
    /// Where each task of the current attempt runs: (task name, TaskManager id).
    pub placement: Arc<Mutex<Vec<(String, String)>>>,
    /// Why the job is not running yet (waiting for slots).
    pub waiting: Arc<Mutex<Option<String>>>,
    /// Set when the job is cancelled while it waits for slots.
    abandoned: std::sync::atomic::AtomicBool,
}

impl RemoteJob {
    /// Give up waiting for slots (the job was cancelled).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    /// Why the job waits, if it does.
    pub fn waiting_for(&self) -> Option<String> {
        lock(&self.waiting).clone()
    }

    /// Where each task of the current attempt runs: (task, TaskManager id).
    pub fn placement(&self) -> Vec<(String, String)> {
        lock(&self.placement).clone()
    }
}

/// The cluster state of a JobManager, shared by its RPC service, its
/// deployers and its API.
pub struct ClusterCore {
    settings: ClusterSettings,
    tms: Mutex<BTreeMap<String, TaskManagerEntry>>,
    slots_changed: Condvar,
    next_tm: AtomicU64,
    jobs: Mutex<HashMap<String, Arc<RemoteJob>>>,
    /// Component files by digest, for TaskManagers to fetch.
    components: Mutex<HashMap<String, PathBuf>>,
    /// HA: the epoch this JobManager leads with (0: it does not use HA).
    epoch: std::sync::atomic::AtomicI64,
    /// HA: set while it stands by, with where the leader is (for the
    /// TaskManagers it turns away).
    standby: Mutex<Option<String>>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ClusterCore {
    /// A cluster with no TaskManager yet.
    pub fn new(settings: ClusterSettings) -> Arc<Self> {
        Arc::new(ClusterCore {
            settings,
            tms: Mutex::new(BTreeMap::new()),
            slots_changed: Condvar::new(),
            next_tm: AtomicU64::new(1),
            jobs: Mutex::new(HashMap::new()),
            components: Mutex::new(HashMap::new()),
            epoch: std::sync::atomic::AtomicI64::new(0),
            standby: Mutex::new(None),
        })
    }

    /// Stand by (HA): TaskManagers are turned away, told `leader`.
    pub fn stand_by(&self, leader: String) {
        *lock(&self.standby) = Some(leader);
    }

    /// Lead with `epoch` (HA): TaskManagers may register.
    pub fn lead(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
        *lock(&self.standby) = None;
    }

    /// The epoch it leads with (0 without HA).
    pub fn epoch(&self) -> i64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Refuse a TaskManager's call while standing by.
    fn check_leading(&self) -> Result<(), Status> {
        match &*lock(&self.standby) {
            Some(leader) => Err(Status::failed_precondition(format!(
                "this JobManager is a standby; the leader is {leader}"
            ))),
            None => Ok(()),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    /// Serve the control RPC on `listener` until the process ends, and
    /// watch heartbeats.
    pub async fn serve(self: Arc<Self>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        let watcher = self.clone();
        std::thread::Builder::new().name("heartbeat-watch".into()).spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(200));
                watcher.expire();
            }
        })?;
        let service = JobManagerServer::new(Rpc(self))
            .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tonic::transport::Server::builder()
            .serve_with_incoming(service, incoming)
            .await
            .map_err(|e| anyhow::anyhow!("control RPC: {e}"))
    }

    /// Forget TaskManagers that stopped heartbeating or whose command
    /// stream closed, failing the attempts that had tasks on them.
    fn expire(&self) {
        let timeout = self.settings.heartbeat_timeout;
        let lost: Vec<(String, String)> = {
            let tms = lock(&self.tms);
            tms.iter()
                .filter_map(|(id, t)| {
                    if t.last_heartbeat.elapsed() > timeout {
                        Some((id.clone(), format!("no heartbeat for {} s", t.last_heartbeat.elapsed().as_secs())))
                    } else if t.receiver.is_none() && t.commands.is_closed() {
                        Some((id.clone(), "its connection closed (the process ended?)".into()))
                    } else {
                        None
                    }
                })
                .collect()
        };
        for (id, why) in lost {
            self.lose(&id, &why);
        }
    }

    fn lose(&self, id: &str, why: &str) {
        let Some(entry) = lock(&self.tms).remove(id) else { return };
        tracing::warn!(taskmanager = id, "TaskManager lost: {why}");
        let jobs = lock(&self.jobs);
        for job in entry.tasks.keys().chain(entry.allocated.keys()) {
            if let Some(j) = jobs.get(job) {
                lock(&j.lost).get_or_insert_with(|| format!("TaskManager {id} ({}) was lost: {why}", entry.data_addr));
                j.cancelled_cv.notify_all();
            }
        }
        self.slots_changed.notify_all();
    }

    /// A JSON list of the TaskManagers, for `GET /v1/taskmanagers`.
    pub fn taskmanagers(&self) -> serde_json::Value {
        let tms = lock(&self.tms);
        serde_json::Value::Array(
            tms.iter()
                .map(|(id, t)| {
                    let tasks: Vec<&String> = t.tasks.values().flatten().collect();
                    serde_json::json!({
                        "id": id,
                        "data_address": t.data_addr,
                        "pid": t.pid,
                        "slots_total": t.slots,
                        "slots_free": t.free(),
                        "registered_ms": t.registered_ms,
                        "last_heartbeat_ms_ago": t.last_heartbeat.elapsed().as_millis() as u64,
                        "tasks": tasks,
                        "bytes_sent": t.bytes_sent,
                        "bytes_received": t.bytes_received,
                        "rss_bytes": t.rss_bytes,
                    })
                })
                .collect(),
        )
    }

    /// Prometheus lines per TaskManager.
    pub fn metrics_text(&self) -> String {
        let tms = lock(&self.tms);
        let mut out = String::new();
        out.push_str("# HELP sluice_taskmanagers Registered TaskManagers.\n# TYPE sluice_taskmanagers gauge\n");
        out.push_str(&format!("sluice_taskmanagers {}\n", tms.len()));
        type Gauge = (&'static str, &'static str, fn(&TaskManagerEntry) -> f64);
        let gauges: [Gauge; 7] = [
            ("sluice_taskmanager_slots_total", "Task slots a TaskManager offers.", |t| {
                f64::from(t.slots)
            }),
            ("sluice_taskmanager_slots_free", "Task slots not held by a job.", |t| {
                f64::from(t.free())
            }),
            ("sluice_taskmanager_tasks", "Tasks a TaskManager runs.", |t| {
                t.tasks.values().map(Vec::len).sum::<usize>() as f64
            }),
            ("sluice_taskmanager_heartbeat_age_seconds", "Time since the last heartbeat.", |t| {
                t.last_heartbeat.elapsed().as_secs_f64()
            }),
            ("sluice_taskmanager_network_sent_bytes_total", "Data-plane bytes sent.", |t| {
                t.bytes_sent as f64
            }),
            (
                "sluice_taskmanager_network_received_bytes_total",
                "Data-plane bytes received.",
                |t| t.bytes_received as f64,
            ),
            (
                "sluice_taskmanager_resident_memory_bytes",
                "A TaskManager's resident memory.",
                |t| t.rss_bytes as f64,
            ),
        ];
        for (name, help, f) in gauges {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
            for (id, t) in tms.iter() {
                out.push_str(&format!("{name}{{taskmanager=\"{id}\"}} {}\n", f(t)));
            }
        }
        out
    }

    /// Make component files fetchable by digest.
    pub fn offer_components(&self, components: impl IntoIterator<Item = (String, PathBuf)>) {
        lock(&self.components).extend(components);
    }

    /// A deployer for job `id` whose nodes have `metrics`.
    pub fn deployer(
        self: &Arc<Self>,
        id: &str,
        metrics: Vec<Arc<OperatorMetrics>>,
        checkpoint_dir: Option<PathBuf>,
        max_state_bytes: Option<u64>,
    ) -> RemoteDeployer {
        let job = Arc::new(RemoteJob {
            id: id.to_owned(),
            fencing: rand_u64(),
            events: Mutex::new(None),
            cancelled: Mutex::new(HashSet::new()),
            cancelled_cv: Condvar::new(),
            committed: Mutex::new(HashSet::new()),
            committed_cv: Condvar::new(),
            lost: Mutex::new(None),
            metrics,
            samples: Mutex::new(HashMap::new()),
            placement: Arc::new(Mutex::new(Vec::new())),
            waiting: Arc::new(Mutex::new(None)),
            abandoned: std::sync::atomic::AtomicBool::new(false),
        });
        lock(&self.jobs).insert(id.to_owned(), job.clone());
        RemoteDeployer {
            core: self.clone(),
            job,
            attempt: None,
            locations: Vec::new(),
            checkpoint_dir,
            max_state_bytes,
        }
    }

    /// Hold `n` slots for `job`, spread over the TaskManagers; waits while
    /// there are too few (saying so in `waiting`), up to the slot timeout.
    fn allocate(&self, job: &RemoteJob, n: u32) -> Result<Vec<(String, String)>, JobError> {
        let deadline = Instant::now() + self.settings.slot_timeout;
        let mut tms = lock(&self.tms);
        loop {
            let free: u32 = tms.values().map(TaskManagerEntry::free).sum();
            if free >= n {
                let mut got = Vec::new();
                while (got.len() as u32) < n {
                    for (id, t) in tms.iter_mut() {
                        if (got.len() as u32) < n && t.free() > 0 {
                            *t.allocated.entry(job.id.clone()).or_default() += 1;
                            got.push((id.clone(), t.data_addr.clone()));
                        }
                    }
                }
                *lock(&job.waiting) = None;
                return Ok(got);
            }
            let total: u32 = tms.values().map(|t| t.slots).sum();
            let msg = format!(
                "waiting for task slots: the job needs {n} (its highest parallelism), the cluster has {free} free of {total} on {} TaskManagers",
                tms.len()
            );
            if lock(&job.waiting).as_deref() != Some(&msg) {
                tracing::info!(job = %job.id, "{msg}");
            }
            *lock(&job.waiting) = Some(msg.clone());
            let now = Instant::now();
            if job.abandoned.load(Ordering::SeqCst) {
                *lock(&job.waiting) = None;
                return Err(JobError::Failed(TaskError::Cancelled));
            }
            if now >= deadline {
                return Err(JobError::Failed(TaskError::Remote(format!(
                    "not enough task slots within {} s: {msg}",
                    self.settings.slot_timeout.as_secs()
                ))));
            }
            tms = self
                .slots_changed
                .wait_timeout(tms, (deadline - now).min(Duration::from_millis(500)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Give back every slot and task of `job`.
    fn release(&self, job: &str) {
        let mut tms = lock(&self.tms);
        for t in tms.values_mut() {
            t.allocated.remove(job);
            t.tasks.remove(job);
        }
        self.slots_changed.notify_all();
    }

    fn send(&self, tm: &str, command: command::Kind) -> Result<(), String> {
        let tms = lock(&self.tms);
        let t = tms.get(tm).ok_or_else(|| format!("TaskManager {tm} is gone"))?;
        t.commands
            .send(Ok(Command { kind: Some(command) }))
            .map_err(|_| format!("TaskManager {tm} is not connected"))
    }

    /// Forget job `id` (it ended).
    pub fn forget(&self, id: &str) {
        lock(&self.jobs).remove(id);
        self.release(id);
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b = (now_ms() as u64 ^ u64::from(std::process::id()) << 32).to_le_bytes();
    }
    u64::from_le_bytes(b).max(1)
}

/// Puts a job's tasks into TaskManagers' slots.
pub struct RemoteDeployer {
    core: Arc<ClusterCore>,
    job: Arc<RemoteJob>,
    attempt: Option<u32>,
    /// TaskManager of each task of the current attempt.
    locations: Vec<String>,
    checkpoint_dir: Option<PathBuf>,
    max_state_bytes: Option<u64>,
}

impl RemoteDeployer {
    /// The job's shared cluster record.
    pub fn job(&self) -> &Arc<RemoteJob> {
        &self.job
    }

    fn id(&self, attempt: u32) -> AttemptId {
        AttemptId {
            job: self.job.id.clone(),
            fencing: self.job.fencing,
            attempt,
            leader_epoch: self.core.epoch(),
        }
    }
}

impl Drop for RemoteDeployer {
    fn drop(&mut self) {
        self.core.forget(&self.job.id);
    }
}

impl Deployer for RemoteDeployer {
    fn deploy(
        &mut self,
        plan: &Arc<ExecutionPlan>,
        attempt: u32,
        restore: Option<&RestoreHandles>,
        events: &EventSink,
    ) -> Result<(), JobError> {
        let slots = self.core.allocate(&self.job, plan.slots_needed())?;
        let internal = |e: String| JobError::Failed(TaskError::Internal(e));
        self.locations = plan
            .tasks
            .iter()
            .map(|t| slots[t.subtask as usize % slots.len()].0.clone())
            .collect();
        let locations: Vec<TaskLocation> = plan
            .tasks
            .iter()
            .map(|t| {
                let (tm, addr) = &slots[t.subtask as usize % slots.len()];
                TaskLocation {
                    task: t.index as u32,
                    taskmanager: tm.clone(),
                    data_addr: addr.clone(),
                }
            })
            .collect();
        *lock(&self.job.events) = Some((attempt, events.clone()));
        *lock(&self.job.lost) = None;
        lock(&self.job.samples).clear();
        lock(&self.job.committed).clear();
        lock(&self.job.cancelled).retain(|(_, a)| *a >= attempt);
        *lock(&self.job.placement) = plan
            .tasks
            .iter()
            .zip(&self.locations)
            .map(|(t, tm)| (t.name.clone(), tm.clone()))
            .collect();
        let plan_json = serde_json::to_vec(plan.as_ref()).map_err(|e| internal(e.to_string()))?;
        let restore_json = match restore {
            Some(r) => serde_json::to_vec(r).map_err(|e| internal(e.to_string()))?,
            None => Vec::new(),
        };
        let mut by_tm: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (t, tm) in self.locations.iter().enumerate() {
            by_tm.entry(tm.clone()).or_default().push(t as u32);
        }
        {
            let mut tms = lock(&self.core.tms);
            for (tm, tasks) in &by_tm {
                if let Some(e) = tms.get_mut(tm) {
                    e.tasks.insert(
                        self.job.id.clone(),
                        tasks.iter().map(|&t| plan.tasks[t as usize].name.clone()).collect(),
                    );
                }
            }
        }
        self.attempt = Some(attempt);
        let mut failed = None;
        for (tm, tasks) in by_tm {
            let deploy = Deploy {
                id: Some(self.id(attempt)),
                plan_json: plan_json.clone(),
                tasks,
                locations: locations.clone(),
                restore_json: restore_json.clone(),
                checkpoint_dir: self
                    .checkpoint_dir
                    .as_ref()
                    .map(|d| d.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                max_state_bytes: self.max_state_bytes.unwrap_or(0),
            };
            if let Err(e) = self.core.send(&tm, command::Kind::Deploy(deploy)) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            // Take back what was deployed and the slots.
            self.cancel();
            return Err(JobError::Failed(TaskError::Remote(e)));
        }
        tracing::info!(job = %self.job.id, attempt, taskmanagers = ?lock(&self.job.placement).iter().map(|p| &p.1).collect::<HashSet<_>>(), "deployed");
        Ok(())
    }

    fn command(&mut self, command: &CoordinatorCommand) -> Result<(), TaskError> {
        let Some(attempt) = self.attempt else { return Ok(()) };
        let id = self.id(attempt);
        let (tms, kind): (Vec<String>, command::Kind) = match command {
            CoordinatorCommand::TriggerSource { task, barrier } => (
                self.locations.get(*task).cloned().into_iter().collect(),
                command::Kind::Trigger(BarrierCommand::new(id, *task, *barrier)),
            ),
            CoordinatorCommand::WriteFinal { task, barrier } => (
                self.locations.get(*task).cloned().into_iter().collect(),
                command::Kind::WriteFinal(BarrierCommand::new(id, *task, *barrier)),
            ),
            CoordinatorCommand::Notify { checkpoint, commits } => {
                let mut tms: Vec<String> = self.locations.clone();
                tms.sort();
                tms.dedup();
                let commits_json = serde_json::to_vec(commits).map_err(|e| TaskError::Internal(e.to_string()))?;
                (
                    tms,
                    command::Kind::Notify(Notify {
                        id: Some(id),
                        checkpoint: *checkpoint,
                        commits_json,
                    }),
                )
            }
            CoordinatorCommand::Abort { .. } => return Ok(()),
        };
        for tm in tms {
            // A TaskManager that is gone shows up as lost; the command is moot.
            if let Err(e) = self.core.send(&tm, kind.clone()) {
                tracing::debug!(job = %self.job.id, "command not sent: {e}");
            }
        }
        Ok(())
    }

    fn cancel(&mut self) {
        let Some(attempt) = self.attempt.take() else { return };
        let mut tms: Vec<String> = std::mem::take(&mut self.locations);
        tms.sort();
        tms.dedup();
        for tm in &tms {
            let _ = self.core.send(tm, command::Kind::Cancel(self.id(attempt)));
        }
        // Wait until every TaskManager that is still there confirms.
        let deadline = Instant::now() + Duration::from_secs(70);
        let mut done = lock(&self.job.cancelled);
        loop {
            let alive: Vec<String> = {
                let registry = lock(&self.core.tms);
                tms.iter().filter(|t| registry.contains_key(*t)).cloned().collect()
            };
            if alive.iter().all(|t| done.contains(&(t.clone(), attempt))) || Instant::now() >= deadline {
                break;
            }
            done = self
                .job
                .cancelled_cv
                .wait_timeout(done, Duration::from_millis(200))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(done);
        *lock(&self.job.events) = None;
        self.core.release(&self.job.id);
    }

    fn poll_failure(&mut self) -> Option<TaskError> {
        self.attempt?;
        lock(&self.job.lost).take().map(TaskError::Remote)
    }

    fn confirm_commits(&mut self, checkpoint: u64) -> Result<(), TaskError> {
        let mut tms: Vec<String> = self.locations.clone();
        tms.sort();
        tms.dedup();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = lock(&self.job.committed);
        loop {
            let missing: Vec<&String> = tms.iter().filter(|t| !done.contains(&((*t).clone(), checkpoint))).collect();
            if missing.is_empty() {
                return Ok(());
            }
            if let Some(lost) = lock(&self.job.lost).take() {
                return Err(TaskError::Remote(format!("committing checkpoint {checkpoint}: {lost}")));
            }
            if Instant::now() >= deadline {
                return Err(TaskError::Remote(format!(
                    "TaskManagers {missing:?} did not confirm committing checkpoint {checkpoint} within 60 s"
                )));
            }
            done = self
                .job
                .committed_cv
                .wait_timeout(done, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The RPC service.
struct Rpc(Arc<ClusterCore>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

impl Rpc {
    /// Take a TaskManager's counters of the current attempt of a job.
    fn accept_sample(&self, tm: &str, sample: rpc::JobSample) {
        if !lock(&self.0.tms).contains_key(tm) {
            return;
        }
        if let Some((job, id)) = self.job_for(&sample.id)
            && lock(&job.events).as_ref().is_some_and(|(a, _)| *a == id.attempt)
        {
            let mut samples = lock(&job.samples);
            samples.insert(tm.to_owned(), sample);
            sum_samples(&job.metrics, samples.values());
        }
    }

    fn job_for(&self, id: &Option<AttemptId>) -> Option<(Arc<RemoteJob>, AttemptId)> {
        let id = id.as_ref()?;
        let job = lock(&self.0.jobs).get(&id.job).cloned()?;
        (job.fencing == id.fencing && id.leader_epoch == self.0.epoch()).then(|| (job, id.clone()))
    }
}

#[tonic::async_trait]
impl JobManager for Rpc {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<RegisterResponse>, Status> {
        self.0.check_leading()?;
        let r = request.into_inner();
        if r.slots == 0 || r.slots > 4096 {
            return Err(Status::invalid_argument(format!("slots must be 1 to 4096, not {}", r.slots)));
        }
        if r.data_addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!("data address {:?} is not HOST:PORT", r.data_addr)));
        }
        let n = self.0.next_tm.fetch_add(1, Ordering::Relaxed);
        let id = format!("tm-{n}-{:04x}", rand_u64() & 0xffff);
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.0.tms).insert(
            id.clone(),
            TaskManagerEntry {
                data_addr: r.data_addr.clone(),
                slots: r.slots,
                pid: r.pid,
                registered_ms: now_ms(),
                last_heartbeat: Instant::now(),
                commands: tx,
                receiver: Some(rx),
                allocated: HashMap::new(),
                tasks: HashMap::new(),
                bytes_sent: 0,
                bytes_received: 0,
                rss_bytes: 0,
            },
        );
        self.0.slots_changed.notify_all();
        tracing::info!(taskmanager = %id, data = %r.data_addr, slots = r.slots, "TaskManager registered");
        Ok(Response::new(RegisterResponse {
            taskmanager: id,
            heartbeat_interval_ms: self.0.settings.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: self.0.settings.heartbeat_timeout.as_millis() as u64,
            leader_epoch: self.0.epoch(),
        }))
    }

    type CommandsStream = BoxStream<Command>;

    async fn commands(&self, request: Request<CommandsRequest>) -> Result<Response<Self::CommandsStream>, Status> {
        self.0.check_leading()?;
        let id = request.into_inner().taskmanager;
        let rx = lock(&self.0.tms)
            .get_mut(&id)
            .ok_or_else(|| Status::not_found(format!("no TaskManager {id}: register first")))?
            .receiver
            .take()
            .ok_or_else(|| Status::already_exists(format!("TaskManager {id} already reads its commands")))?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))))
    }

    async fn heartbeat(&self, request: Request<Heartbeat>) -> Result<Response<HeartbeatResponse>, Status> {
        self.0.check_leading()?;
        let h = request.into_inner();
        let known = {
            let mut tms = lock(&self.0.tms);
            match tms.get_mut(&h.taskmanager) {
                Some(t) => {
                    t.last_heartbeat = Instant::now();
                    t.bytes_sent = h.bytes_sent;
                    t.bytes_received = h.bytes_received;
                    t.rss_bytes = h.rss_bytes;
                    true
                }
                None => false,
            }
        };
        if known {
            for sample in h.jobs {
                self.accept_sample(&h.taskmanager, sample);
            }
        }
        Ok(Response::new(HeartbeatResponse { known }))
    }

    async fn report(&self, request: Request<Report>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let Some((job, id)) = self.job_for(&r.id) else {
            return Ok(Response::new(Empty {}));
        };
        let kind = ReportKind::try_from(r.kind).map_err(|_| Status::invalid_argument(format!("unknown report kind {}", r.kind)))?;
        if let Some(sample) = r.sample.clone() {
            self.accept_sample(&r.taskmanager, sample);
        }
        if kind == ReportKind::Cancelled {
            lock(&job.cancelled).insert((r.taskmanager.clone(), id.attempt));
            job.cancelled_cv.notify_all();
            return Ok(Response::new(Empty {}));
        }
        if kind == ReportKind::Committed {
            if lock(&job.events).as_ref().is_some_and(|(a, _)| *a == id.attempt) {
                lock(&job.committed).insert((r.taskmanager.clone(), r.checkpoint));
                job.committed_cv.notify_all();
            }
            return Ok(Response::new(Empty {}));
        }
        let sink = lock(&job.events).as_ref().filter(|(a, _)| *a == id.attempt).map(|(_, s)| s.clone());
        let Some(sink) = sink else {
            return Ok(Response::new(Empty {}));
        };
        let task = r.task as usize;
        let event = match kind {
            ReportKind::Acked => {
                let ack: Ack = serde_json::from_slice(&r.ack_json).map_err(|e| Status::invalid_argument(format!("malformed ack: {e}")))?;
                TaskEvent::Acked(ack)
            }
            ReportKind::Declined => TaskEvent::Declined(Decline {
                checkpoint: r.checkpoint,
                reason: r.message,
            }),
            ReportKind::Finished => TaskEvent::Finished {
                task,
                last_barrier: r.last_barrier,
            },
            ReportKind::Failed => TaskEvent::Failed {
                task,
                error: if r.knock_on {
                    TaskError::UpstreamClosed
                } else {
                    TaskError::Remote(format!("{} (on TaskManager {})", r.message, r.taskmanager))
                },
            },
            ReportKind::Cancelled | ReportKind::Committed => return Ok(Response::new(Empty {})),
        };
        sink(id.attempt, event);
        Ok(Response::new(Empty {}))
    }

    type FetchComponentStream = BoxStream<ComponentChunk>;

    async fn fetch_component(&self, request: Request<FetchComponent>) -> Result<Response<Self::FetchComponentStream>, Status> {
        self.0.check_leading()?;
        let digest = request.into_inner().digest;
        let path = lock(&self.0.components)
            .get(&digest)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("no component {digest} is offered")))?;
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(&path))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::unavailable(format!("reading component {digest}: {e}")))?;
        let total = bytes.len() as u64;
        let chunks: Vec<Result<ComponentChunk, Status>> = bytes
            .chunks(rpc::COMPONENT_CHUNK_BYTES)
            .map(|c| Ok(ComponentChunk { total, data: c.to_vec() }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// Store the sum of the TaskManagers' samples into the job's counters.
fn sum_samples<'a>(metrics: &[Arc<OperatorMetrics>], samples: impl Iterator<Item = &'a rpc::JobSample>) {
    let mut totals: Vec<MetricsSample> = metrics
        .iter()
        .map(|m| MetricsSample {
            subtasks: vec![SubtaskSample::default(); m.parallelism as usize],
            ..MetricsSample::default()
        })
        .collect();
    for s in samples {
        for n in &s.nodes {
            let Some(t) = totals.get_mut(n.node as usize) else { continue };
            let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
            let subtasks = (0..t.subtasks.len())
                .map(|i| SubtaskSample {
                    records_in: at(&n.records_in, i),
                    records_out: at(&n.records_out, i),
                    busy_ns: at(&n.busy_ns, i),
                    backpressured_ns: at(&n.backpressured_ns, i),
                    watermark: n.watermarks.get(i).copied().unwrap_or(i64::MIN),
                    bytes_in: at(&n.bytes_in, i),
                    bytes_out: at(&n.bytes_out, i),
                    lag: n.lag.get(i).copied().unwrap_or(-1),
                })
                .collect();
            t.add(&MetricsSample {
                failed: n.failed,
                late: n.late,
                late_dropped: n.late_dropped,
                subtasks,
            });
        }
    }
    for (m, t) in metrics.iter().zip(&totals) {
        m.set_sample(t);
    }
}

/// Validate, load and start `graph` on the cluster as job `id`: like
/// [`run_job`](super::run_job), but its tasks go into the slots of the
/// cluster's TaskManagers. Blocks while the cluster has too few free slots
/// (saying so in the job's `waiting`), up to the slot timeout.
pub fn run_job_on_cluster(
    graph: &crate::job::JobGraph,
    engine: &Arc<crate::wasm::WasmEngine>,
    options: super::RunOptions,
    core: &Arc<ClusterCore>,
    id: &str,
    on_deployer: impl FnOnce(&Arc<RemoteJob>),
) -> Result<super::JobHandle, JobError> {
    if graph.spec.mode == crate::spec::ExecutionMode::Batch {
        return Err(JobError::Invalid {
            node: "job".into(),
            message: "mode = \"batch\" runs in one process (`sluice run`, `sluice serve`); a cluster runs streaming jobs".into(),
        });
    }
    if graph.edges.iter().any(|e| e.feedback) {
        return Err(JobError::Invalid {
            node: "job".into(),
            message: "an iteration runs in one process (`sluice run`, `sluice serve`): its subtasks share the count of \
                      records in its loop; a cluster runs jobs without feedback edges"
                .into(),
        });
    }
    let mut p = super::minicluster::prepare(graph, engine, &options)?;
    if spec_restart_default(graph) {
        // Flink's default for a cluster: exponential delay, 1 s doubling to 1 min.
        p.policy = super::restart::RestartPolicy::new(crate::spec::RestartSpec::ExponentialDelay {
            initial_ms: 1000,
            max_ms: 60_000,
            multiplier: 2.0,
            reset_ms: 3_600_000,
            attempts: None,
        });
    }
    core.offer_components(p.component_files.clone());
    let spec = &graph.spec;
    let checkpoint_dir = spec
        .checkpoints
        .as_ref()
        .map(|c| crate::checkpoint::resolve_location(&graph.base_dir, &c.dir));
    let max_state = spec.limits.max_state_mb.map(|mb| mb.saturating_mul(1 << 20));
    let deployer = core.deployer(id, p.metrics.clone(), checkpoint_dir, max_state);
    on_deployer(deployer.job());
    super::minicluster::launch(p, deployer, None, options.clock.clone())
}

/// True when the job is checkpointed and names no restart strategy.
fn spec_restart_default(graph: &crate::job::JobGraph) -> bool {
    graph.spec.checkpoints.is_some() && graph.spec.restart.is_none()
}
