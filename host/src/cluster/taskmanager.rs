//! The TaskManager process: offers task slots to a JobManager and runs the
//! tasks deployed into them.
//!
//! ```text
//!  register (data address, slots) ─► id ─► read the command stream
//!  Deploy: fetch components by digest (sha256 checked, cached on disk),
//!          build the tasks from their descriptors, channels local or over
//!          the data plane ─► run ─► Report every task event
//!  Trigger / WriteFinal / Notify: carried out on the running attempt
//!  Cancel: stop the attempt's tasks, release its channels, report cancelled
//!  every 2 s: Heartbeat with the metrics of each job's tasks
//!  JobManager unreachable longer than the timeout (or it does not know this
//!  TaskManager): cancel every task, register again as a new TaskManager
//! ```
//!
//! Commands and reports carry the job's fencing token and attempt; a command
//! for an attempt this TaskManager does not run is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::rpc::service::job_manager_client::JobManagerClient;
use super::rpc::{self, AttemptId, CommandsRequest, Deploy, FetchComponent, Heartbeat, RegisterRequest, Report, ReportKind, command};
use super::shuffle::NetworkShuffle;
use crate::checkpoint::CheckpointStorage;
use crate::job::plan::{ExecutionPlan, RestoreHandles};
use crate::runtime::network::{DataPlane, NetworkConfig};
use crate::runtime::{AttemptContext, EventSink, LocalShuffle, OperatorMetrics, RunningAttempt, SubtaskSample, TaskEvent};
use crate::tenancy::StateBudget;
use crate::time::SystemClock;
use crate::wasm::{LoadedComponent, WasmEngine};

/// Largest component a TaskManager fetches.
const MAX_COMPONENT_BYTES: u64 = 512 << 20;

/// Longest a component fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How a TaskManager runs.
#[derive(Debug, Clone)]
pub struct TaskManagerOptions {
    /// The JobManagers' RPC addresses (`HOST:PORT`, comma-separated): with
    /// HA, every JobManager of the cluster; the one that leads accepts the
    /// registration, standbys turn it away.
    pub jobmanager: String,
    /// Task slots offered.
    pub slots: u32,
    /// Where the data plane listens (port 0: any).
    pub data_addr: SocketAddr,
    /// Where fetched components are kept.
    pub cache_dir: Option<PathBuf>,
    /// Credits, buffers and timeouts of the data plane.
    pub network: NetworkConfig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tasks of one attempt of one job here.
struct Hosted {
    id: AttemptId,
    running: RunningAttempt,
    metrics: Vec<Arc<OperatorMetrics>>,
}

/// One registration with the JobManager.
struct Session {
    id: String,
    data: Arc<DataPlane>,
    engines: Engines,
    client: JobManagerClient<Channel>,
    rt: tokio::runtime::Handle,
    reports: mpsc::UnboundedSender<Report>,
    /// By job id.
    attempts: Mutex<HashMap<String, Hosted>>,
    components: Mutex<HashMap<String, Arc<LoadedComponent>>>,
    cache_dir: Option<PathBuf>,
}

/// The engines, with and without fuel metering.
#[derive(Clone)]
struct Engines {
    plain: Arc<WasmEngine>,
    fuel: Arc<Mutex<Option<Arc<WasmEngine>>>>,
    cache_dir: Option<PathBuf>,
}

impl Engines {
    fn get(&self, fuel: bool) -> Result<Arc<WasmEngine>, String> {
        if !fuel {
            return Ok(self.plain.clone());
        }
        let mut f = lock(&self.fuel);
        if let Some(e) = &*f {
            return Ok(e.clone());
        }
        let e = WasmEngine::with_fuel(self.cache_dir.clone(), true).map_err(|e| e.to_string())?;
        *f = Some(e.clone());
        Ok(e)
    }
}

fn job_key(id: &AttemptId) -> String {
    format!("{}/{:016x}", id.job, id.fencing)
}

impl Session {
    fn report(&self, id: &AttemptId, kind: ReportKind, fill: impl FnOnce(&mut Report)) {
        let mut r = Report {
            taskmanager: self.id.clone(),
            id: Some(id.clone()),
            kind: kind as i32,
            ..Report::default()
        };
        fill(&mut r);
        let _ = self.reports.send(r);
    }

    /// Where an attempt's events go: reports to the JobManager.
    fn event_sink(self: &Arc<Self>, id: &AttemptId, metrics: &[Arc<OperatorMetrics>]) -> EventSink {
        let (me, id, metrics) = (self.clone(), id.clone(), metrics.to_vec());
        Arc::new(move |_attempt, event| match event {
            TaskEvent::Acked(ack) => {
                let json = serde_json::to_vec(&ack).unwrap_or_default();
                me.report(&id, ReportKind::Acked, |r| {
                    r.task = ack.task as u32;
                    r.checkpoint = ack.checkpoint;
                    r.ack_json = json;
                });
            }
            TaskEvent::Declined(d) => me.report(&id, ReportKind::Declined, |r| {
                r.checkpoint = d.checkpoint;
                r.message = d.reason;
            }),
            TaskEvent::Finished { task, last_barrier } => me.report(&id, ReportKind::Finished, |r| {
                r.task = task as u32;
                r.last_barrier = last_barrier;
                r.sample = Some(sample(&id, &metrics, 0));
            }),
            TaskEvent::Failed { task, error } => me.report(&id, ReportKind::Failed, |r| {
                r.task = task as u32;
                r.knock_on = error.is_knock_on();
                r.message = error.to_string();
            }),
        })
    }

    /// The component `digest`: loaded, from the disk cache, or fetched from
    /// the JobManager; its bytes must hash to its digest.
    fn component(&self, digest: &str, fuel: bool) -> Result<Arc<LoadedComponent>, String> {
        let key = format!("{digest}/{fuel}");
        if let Some(c) = lock(&self.components).get(&key) {
            return Ok(c.clone());
        }
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{digest:?} is not a component digest"));
        }
        let matches = |b: &[u8]| hex::encode(Sha256::digest(b)) == digest;
        let cached = self.cache_dir.as_ref().map(|d| d.join("fetched").join(format!("{digest}.wasm")));
        let bytes = match cached.as_ref().and_then(|p| std::fs::read(p).ok()).filter(|b| matches(b)) {
            Some(b) => b,
            None => {
                let b = self.fetch(digest)?;
                if !matches(&b) {
                    return Err(format!("component {digest} from the JobManager does not hash to its digest"));
                }
                if let Some(p) = &cached {
                    let tmp = p.with_extension("tmp");
                    let _ = std::fs::create_dir_all(p.parent().unwrap_or(p));
                    if std::fs::write(&tmp, &b).and_then(|()| std::fs::rename(&tmp, p)).is_err() {
                        tracing::warn!(path = %p.display(), "could not cache a fetched component");
                    }
                }
                b
            }
        };
        let loaded = self.engines.get(fuel)?.load(&bytes).map_err(|e| e.to_string())?;
        lock(&self.components).insert(key, loaded.clone());
        Ok(loaded)
    }

    fn fetch(&self, digest: &str) -> Result<Vec<u8>, String> {
        let mut client = self.client.clone();
        let digest = digest.to_owned();
        let fetch = async move {
            let mut stream = client
                .fetch_component(FetchComponent { digest: digest.clone() })
                .await
                .map_err(|e| format!("fetching component {digest}: {}", e.message()))?
                .into_inner();
            let mut out: Vec<u8> = Vec::new();
            let mut total = None;
            while let Some(chunk) = stream
                .message()
                .await
                .map_err(|e| format!("fetching component {digest}: {}", e.message()))?
            {
                if chunk.total > MAX_COMPONENT_BYTES || total.is_some_and(|t| t != chunk.total) {
                    return Err(format!(
                        "component {digest}: the JobManager announced an impossible size {}",
                        chunk.total
                    ));
                }
                total = Some(chunk.total);
                if out.len() as u64 + chunk.data.len() as u64 > chunk.total {
                    return Err(format!("component {digest}: more bytes than its size {}", chunk.total));
                }
                out.extend_from_slice(&chunk.data);
            }
            if total.is_none_or(|t| t != out.len() as u64) {
                return Err(format!("component {digest}: the transfer ended after {} bytes", out.len()));
            }
            Ok(out)
        };
        self.rt.block_on(async move {
            tokio::time::timeout(FETCH_TIMEOUT, fetch)
                .await
                .unwrap_or_else(|_| Err(format!("fetching a component took longer than {} s", FETCH_TIMEOUT.as_secs())))
        })
    }

    fn deploy(self: &Arc<Self>, d: Deploy) {
        let Some(id) = d.id.clone() else { return };
        let first = d.tasks.first().copied().unwrap_or(0);
        if let Err(e) = self.try_deploy(d) {
            tracing::warn!(job = %id.job, attempt = id.attempt, error = %e, "deployment failed");
            self.report(&id, ReportKind::Failed, |r| {
                r.task = first;
                r.message = format!("deploying on TaskManager {}: {e}", self.id);
            });
        }
    }

    fn try_deploy(self: &Arc<Self>, d: Deploy) -> Result<(), String> {
        let id = d.id.clone().ok_or("a deployment without an attempt id")?;
        // An older attempt of the job still here goes first.
        if let Some(old) = lock(&self.attempts).remove(&id.job) {
            tracing::info!(job = %id.job, attempt = old.id.attempt, "stopping an older attempt");
            old.running.shutdown(Duration::from_secs(60));
            self.data.release(&job_key(&old.id), old.id.attempt);
        }
        let plan: ExecutionPlan = serde_json::from_slice(&d.plan_json).map_err(|e| format!("malformed plan: {e}"))?;
        plan.validate().map_err(|e| format!("inconsistent plan: {e}"))?;
        let plan = Arc::new(plan);
        let restore: Option<RestoreHandles> = if d.restore_json.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&d.restore_json).map_err(|e| format!("malformed restore handles: {e}"))?)
        };
        let tasks: Vec<usize> = d.tasks.iter().map(|&t| t as usize).collect();
        if let Some(t) = tasks.iter().find(|&&t| t >= plan.tasks.len()) {
            return Err(format!("task {t} is not in the plan"));
        }
        let mut locations = vec![(String::new(), SocketAddr::from(([127, 0, 0, 1], 0))); plan.tasks.len()];
        for l in &d.locations {
            let addr = l.data_addr.parse().map_err(|_| format!("bad data address {:?}", l.data_addr))?;
            if let Some(slot) = locations.get_mut(l.task as usize) {
                *slot = (l.taskmanager.clone(), addr);
            }
        }
        let fuel = plan.limits.fuel_per_call.is_some();
        let mut components = HashMap::new();
        for digest in plan.components_of(&tasks) {
            let c = self.component(&digest, fuel)?;
            components.insert(digest, c);
        }
        let storage = if d.checkpoint_dir.is_empty() {
            None
        } else {
            Some(Arc::new(
                CheckpointStorage::open(std::path::Path::new(&d.checkpoint_dir)).map_err(|e| e.to_string())?,
            ))
        };
        let metrics: Vec<Arc<OperatorMetrics>> = plan
            .nodes
            .iter()
            .map(|n| Arc::new(OperatorMetrics::new(&n.name, n.parallelism)))
            .collect();
        let shuffle = NetworkShuffle {
            job: job_key(&id),
            attempt: id.attempt,
            me: self.id.clone(),
            locations,
            data: self.data.clone(),
            local: LocalShuffle::new(8, 32 << 20),
        };
        let running = RunningAttempt::start(AttemptContext {
            plan: &plan,
            attempt: id.attempt,
            tasks: &tasks,
            components: &components,
            shuffle: &shuffle,
            clock: Arc::new(SystemClock),
            meter: None,
            logs: None,
            metrics: &metrics,
            state_budget: StateBudget::new((d.max_state_bytes > 0).then_some(d.max_state_bytes), None),
            restore: restore.as_ref(),
            storage,
            events: self.event_sink(&id, &metrics),
        })
        .map_err(|e| e.to_string())?;
        tracing::info!(job = %id.job, attempt = id.attempt, tasks = ?tasks, "tasks started");
        lock(&self.attempts).insert(id.job.clone(), Hosted { id, running, metrics });
        Ok(())
    }

    /// The attempt `id` names, if it runs here.
    fn with_attempt(&self, id: &Option<AttemptId>, f: impl FnOnce(&Hosted)) {
        let Some(id) = id else { return };
        match lock(&self.attempts).get(&id.job) {
            Some(h) if h.id == *id => f(h),
            _ => tracing::debug!(job = %id.job, attempt = id.attempt, "dropping a command of an attempt not running here"),
        }
    }

    fn cancel(&self, id: AttemptId) {
        let hosted = {
            let mut a = lock(&self.attempts);
            match a.get(&id.job) {
                Some(h) if h.id.fencing == id.fencing && h.id.attempt <= id.attempt => a.remove(&id.job),
                _ => None,
            }
        };
        if let Some(h) = hosted {
            if !h.running.shutdown(Duration::from_secs(60)) {
                tracing::warn!(job = %id.job, "some tasks did not stop within 60 s");
            }
            self.data.release(&job_key(&h.id), h.id.attempt);
            tracing::info!(job = %id.job, attempt = h.id.attempt, "tasks cancelled");
            let last = sample(&h.id, &h.metrics, 0);
            self.report(&id, ReportKind::Cancelled, |r| r.sample = Some(last));
            return;
        }
        self.report(&id, ReportKind::Cancelled, |_| {});
    }

    fn execute(self: &Arc<Self>, c: command::Kind) {
        match c {
            command::Kind::Deploy(d) => self.deploy(d),
            command::Kind::Cancel(id) => self.cancel(id),
            command::Kind::Trigger(b) => self.with_attempt(&b.id, |h| h.running.trigger(b.task as usize, b.barrier())),
            command::Kind::WriteFinal(b) => self.with_attempt(&b.id, |h| h.running.write_final(b.task as usize, b.barrier())),
            command::Kind::Notify(n) => {
                let commits: Vec<(usize, String, Vec<String>)> = match serde_json::from_slice(&n.commits_json) {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("malformed notify: {e}");
                        return;
                    }
                };
                let mut outcome = None;
                self.with_attempt(&n.id, |h| {
                    let r = h.running.notify(n.checkpoint, &commits);
                    outcome = Some((h.id.clone(), h.running.tasks().first().copied().unwrap_or(0), r));
                });
                match outcome {
                    Some((id, task, Err(e))) => self.report(&id, ReportKind::Failed, |r| {
                        r.task = task as u32;
                        r.message = format!("committing checkpoint {}: {e}", n.checkpoint);
                    }),
                    Some((id, _, Ok(()))) => self.report(&id, ReportKind::Committed, |r| r.checkpoint = n.checkpoint),
                    None => {}
                }
            }
        }
    }

    fn heartbeat(&self) -> Heartbeat {
        let attempts = lock(&self.attempts);
        Heartbeat {
            taskmanager: self.id.clone(),
            jobs: attempts
                .values()
                .map(|h| {
                    let running = if h.running.is_finished() {
                        0
                    } else {
                        h.running.tasks().len() as u32
                    };
                    sample(&h.id, &h.metrics, running)
                })
                .collect(),
            bytes_sent: self.data.bytes_sent(),
            bytes_received: self.data.bytes_received(),
            rss_bytes: crate::tenancy::process_status_kb("VmRSS").map_or(0, |kb| kb * 1024),
        }
    }

    /// Stop every task (the JobManager is gone or forgot this TaskManager):
    /// every task is told to stop first, then each attempt is waited for.
    fn cancel_all(&self) {
        let all: Vec<Hosted> = lock(&self.attempts).drain().map(|(_, h)| h).collect();
        for h in &all {
            h.running.cancel();
            self.data.release(&job_key(&h.id), h.id.attempt);
        }
        for h in all {
            h.running.shutdown(Duration::from_secs(60));
        }
    }
}

/// The counters of an attempt's tasks here.
fn sample(id: &AttemptId, metrics: &[Arc<OperatorMetrics>], tasks_running: u32) -> rpc::JobSample {
    rpc::JobSample {
        id: Some(id.clone()),
        tasks_running,
        nodes: metrics
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = m.sample();
                let by = |f: fn(&SubtaskSample) -> u64| s.subtasks.iter().map(f).collect();
                rpc::NodeSample {
                    node: i as u32,
                    failed: s.failed,
                    late: s.late,
                    late_dropped: s.late_dropped,
                    watermarks: s.subtasks.iter().map(|t| t.watermark).collect(),
                    records_in: by(|t| t.records_in),
                    records_out: by(|t| t.records_out),
                    busy_ns: by(|t| t.busy_ns),
                    backpressured_ns: by(|t| t.backpressured_ns),
                    bytes_in: by(|t| t.bytes_in),
                    bytes_out: by(|t| t.bytes_out),
                    lag: s.subtasks.iter().map(|t| t.lag).collect(),
                }
            })
            .collect(),
    }
}

/// Run a TaskManager until SIGTERM or Ctrl-C. It prints `data HOST:PORT`
/// once its data plane listens and `registered as ID` on each registration.
pub fn run(options: TaskManagerOptions, engine: Arc<WasmEngine>) -> anyhow::Result<()> {
    if options.slots == 0 {
        anyhow::bail!("--slots must be at least 1");
    }
    let data = DataPlane::bind(options.data_addr, options.network.clone())?;
    println!("data {}", data.local_addr());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let engines = Engines {
        plain: engine,
        fuel: Arc::new(Mutex::new(None)),
        cache_dir: options.cache_dir.clone(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let addrs: Vec<String> = options
        .jobmanager
        .split(',')
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("--jobmanager must name at least one JobManager address");
    }
    // The newest leader epoch seen: a JobManager of an older one was deposed.
    let epoch = Arc::new(std::sync::atomic::AtomicI64::new(0));
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut next = 0usize;
        loop {
            let addr = addrs[next % addrs.len()].clone();
            next += 1;
            let session = run_session(&options, &addr, &data, &engines, &stop, &epoch);
            tokio::select! {
                r = session => {
                    if let Err(e) = r {
                        tracing::warn!(jobmanager = %addr, "{e:#}");
                    }
                }
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
            }
            // The next address at once; a pause after trying every one.
            let pause = if next.is_multiple_of(addrs.len()) { 1000 } else { 100 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        stop.store(true, Ordering::SeqCst);
        anyhow::Ok(())
    })?;
    Ok(())
}

/// Register, then serve commands and heartbeat until the JobManager is lost.
async fn run_session(
    options: &TaskManagerOptions,
    jobmanager: &str,
    data: &Arc<DataPlane>,
    engines: &Engines,
    stop: &Arc<AtomicBool>,
    epoch: &Arc<std::sync::atomic::AtomicI64>,
) -> anyhow::Result<()> {
    let uri = if jobmanager.contains("://") {
        jobmanager.to_owned()
    } else {
        format!("http://{jobmanager}")
    };
    let channel = tonic::transport::Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = JobManagerClient::new(channel)
        .max_decoding_message_size(rpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(rpc::MAX_MESSAGE_BYTES);
    let reg = client
        .register(RegisterRequest {
            data_addr: data.local_addr().to_string(),
            slots: options.slots,
            pid: std::process::id(),
        })
        .await
        .map_err(|e| anyhow::anyhow!("registering: {}", e.message()))?
        .into_inner();
    let seen = epoch.fetch_max(reg.leader_epoch, Ordering::SeqCst);
    if reg.leader_epoch < seen {
        anyhow::bail!(
            "the JobManager at {jobmanager} leads with epoch {}, older than epoch {seen} already seen: it was deposed; not following it",
            reg.leader_epoch
        );
    }
    let leader_epoch = reg.leader_epoch;
    let id = reg.taskmanager.clone();
    println!("registered as {id}");
    tracing::info!(taskmanager = %id, "registered with the JobManager");
    let interval = Duration::from_millis(reg.heartbeat_interval_ms.clamp(50, 60_000));
    // Give up a little before the JobManager does, so this TaskManager's
    // tasks stop before the job is restarted elsewhere.
    let jm_timeout = Duration::from_millis(reg.heartbeat_timeout_ms.clamp(100, 600_000));
    let timeout = jm_timeout.saturating_sub(interval).max(jm_timeout / 2);
    let mut commands = client
        .commands(CommandsRequest { taskmanager: id.clone() })
        .await
        .map_err(|e| anyhow::anyhow!("opening the command stream: {}", e.message()))?
        .into_inner();
    let (reports, mut report_rx) = mpsc::unbounded_channel::<Report>();
    let session = Arc::new(Session {
        id: id.clone(),
        data: data.clone(),
        engines: engines.clone(),
        client: client.clone(),
        rt: tokio::runtime::Handle::current(),
        reports,
        attempts: Mutex::new(HashMap::new()),
        components: Mutex::new(HashMap::new()),
        cache_dir: options.cache_dir.clone(),
    });
    let mut report_client = client.clone();
    let reporter = tokio::spawn(async move {
        while let Some(r) = report_rx.recv().await {
            // A report is retried (in order) while the session lasts: a lost
            // `finished` or `cancelled` would leave the JobMaster waiting.
            let start = Instant::now();
            loop {
                match report_client.report(r.clone()).await {
                    Ok(_) => break,
                    Err(e) if start.elapsed() > timeout => {
                        tracing::warn!("report not delivered: {}", e.message());
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
    });
    // Commands run in order on their own thread: a deployment may block.
    let (cmd_tx, cmd_rx) = crossbeam_channel::unbounded::<command::Kind>();
    let worker_session = session.clone();
    let worker = std::thread::Builder::new().name("tm-commands".into()).spawn(move || {
        for c in cmd_rx {
            let s = worker_session.clone();
            if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || s.execute(c))) {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!("a command panicked: {message}");
            }
        }
    })?;
    let mut ticker = tokio::time::interval(interval.min(Duration::from_millis(500)));
    let mut last_beat = Instant::now() - interval;
    let mut last_contact = Instant::now();
    let mut stream_open = true;
    let why = loop {
        if stop.load(Ordering::SeqCst) {
            break "stopping".to_owned();
        }
        tokio::select! {
            msg = commands.message(), if stream_open => match msg {
                Ok(Some(rpc::Command { kind: Some(c) })) => {
                    last_contact = Instant::now();
                    let newest = epoch.load(Ordering::SeqCst);
                    match c.attempt().map(|a| a.leader_epoch) {
                        Some(e) if e < newest || e != leader_epoch => {
                            tracing::warn!(epoch = e, newest, "dropping a command of a deposed JobManager (fenced)");
                        }
                        _ => {
                            let _ = cmd_tx.send(c);
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    tracing::warn!("the JobManager's command stream ended");
                    stream_open = false;
                }
            },
            _ = ticker.tick() => {
                if last_contact.elapsed() > timeout {
                    break format!("no contact with the JobManager for {} s", last_contact.elapsed().as_secs());
                }
                if last_beat.elapsed() < interval {
                    continue;
                }
                last_beat = Instant::now();
                let beat = session.heartbeat();
                match tokio::time::timeout(interval.max(Duration::from_secs(1)), client.heartbeat(beat)).await {
                    Ok(Ok(r)) if r.get_ref().known => last_contact = Instant::now(),
                    Ok(Ok(_)) => break "the JobManager does not know this TaskManager any more".to_owned(),
                    _ => {}
                }
                if last_contact.elapsed() > timeout {
                    break format!("no contact with the JobManager for {} s", last_contact.elapsed().as_secs());
                }
            }
        }
    };
    tracing::warn!(taskmanager = %id, "leaving the JobManager: {why}; cancelling every task");
    drop(cmd_tx);
    let s = session.clone();
    tokio::task::spawn_blocking(move || {
        // Stop what runs now, then once more for a deployment the worker
        // was still making.
        s.cancel_all();
        let _ = worker.join();
        s.cancel_all();
    })
    .await?;
    reporter.abort();
    if stop.load(Ordering::SeqCst) {
        return Ok(());
    }
    Err(anyhow::anyhow!("session ended: {why}"))
}
