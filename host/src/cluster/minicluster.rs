//! The mini cluster of `sluice run` and `sluice serve`: a JobMaster and one
//! in-process TaskManager behind the same interfaces as the distributed
//! case (plan, deployer, shuffle environment, coordinator commands).
//!
//! ```text
//!  run_job: load components (world check) ─► ExecutionPlan ─► restore
//!  handles ─► coordinator ─► LocalDeployer: every task here, in-process
//!  channels ─► JobMaster on its own thread ─► JobHandle
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::jobmaster::{Deployer, JobMaster, JobMessage, JobStatus, channel_sink};
use super::restart::RestartPolicy;
use crate::checkpoint::coordinator::{CheckpointStats, Command, Coordinator, OperatorInfo};
use crate::checkpoint::{CheckpointStorage, ExpectedState, LoadedCheckpoint, RestoreLimits, load_path, resolve_location};
use crate::job::JobError;
use crate::job::graph::{JobGraph, NodeKind};
use crate::job::plan::{ExecutionPlan, JobComponents, RestoreHandles, state_kind};
use crate::runtime::{AttemptContext, EventSink, LocalShuffle, OperatorMetrics, RunningAttempt, TaskError};
use crate::spec::RestartSpec;
use crate::tenancy::{GuestLogBuffer, StateBudget, TenantMeter};
use crate::time::{Clock, SystemClock};
use crate::wasm::{LoadedComponent, WasmEngine};

pub use super::jobmaster::MAX_EXCEPTIONS;

/// Where to restore a job from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The newest complete checkpoint in the job's checkpoint directory
    /// (start from the beginning when there is none).
    Latest,
    /// A checkpoint or savepoint directory.
    Path(PathBuf),
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Processing time for guests.
    pub clock: Arc<dyn Clock>,
    /// Batches a channel holds before its producer blocks. Default 8.
    pub channel_capacity: usize,
    /// Bytes of record batches a channel holds beyond its first batch
    /// before its producer blocks. Default 32 MiB.
    pub channel_bytes: usize,
    /// Resume from a checkpoint or savepoint.
    pub restore: Option<Restore>,
    /// Restore even when the checkpoint has state of operators the job no
    /// longer has (that state is dropped).
    pub allow_non_restored_state: bool,
    /// The tenant's meter (guest CPU, memory, state, instances) and its
    /// state ceiling; none outside a server.
    pub meter: Option<Arc<TenantMeter>>,
    /// Where guest log lines are kept for the API; none: `tracing` only.
    pub logs: Option<Arc<GuestLogBuffer>>,
    /// Answer `sluice savepoint` request files in the checkpoint directory
    /// (for `sluice run`; a server's jobs are asked through the API).
    pub savepoint_request_files: bool,
    /// Where a highly available JobManager records the job's checkpoints
    /// (etcd); none: the checkpoint storage alone.
    pub registry: Option<Arc<dyn crate::checkpoint::coordinator::CheckpointRegistry>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            channel_capacity: 8,
            channel_bytes: 32 << 20,
            restore: None,
            allow_non_restored_state: false,
            meter: None,
            logs: None,
            savepoint_request_files: true,
            registry: None,
        }
    }
}

/// What a finished job did.
#[derive(Debug)]
pub struct JobSummary {
    /// Per node, in spec order.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    /// Wall time.
    pub duration: Duration,
    /// Restarts after failures.
    pub restarts: u32,
    /// Checkpoints and savepoints completed.
    pub checkpoints: u64,
    /// The savepoint the job stopped with, if it was stopped with one.
    pub savepoint: Option<PathBuf>,
}

/// Asks a running job for savepoints.
#[derive(Clone)]
pub struct SavepointRequester(Sender<JobMessage>);

impl SavepointRequester {
    /// Take a savepoint (with `stop`, the job stops after it) and wait at
    /// most `timeout` for its path.
    pub fn request(&self, stop: bool, timeout: Duration) -> Result<PathBuf, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.0
            .send(JobMessage::Savepoint { stop, reply: tx })
            .map_err(|_| "the job has ended".to_owned())?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(format!("no savepoint within {} s", timeout.as_secs())),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err("the job ended before the savepoint completed".into()),
        }
    }
}

/// A running job.
pub struct JobHandle {
    master: Option<JoinHandle<Result<Option<PathBuf>, JobError>>>,
    cancel: Arc<AtomicBool>,
    mailbox: Sender<JobMessage>,
    /// Per node, in spec order.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    /// Checkpoint figures.
    pub checkpoints: Arc<CheckpointStats>,
    /// Restarts so far.
    pub restarts: Arc<std::sync::atomic::AtomicU32>,
    restarting: Arc<AtomicBool>,
    /// The newest failures that restarted the job (oldest first, at most
    /// [`MAX_EXCEPTIONS`]), with the Unix time in ms they happened.
    pub exceptions: Arc<Mutex<std::collections::VecDeque<(i64, String)>>>,
    started: Instant,
}

impl JobHandle {
    /// Start `master` on its own thread.
    pub(crate) fn spawn(
        master: JobMaster,
        metrics: Vec<Arc<OperatorMetrics>>,
        checkpoints: Arc<CheckpointStats>,
        mailbox: Sender<JobMessage>,
    ) -> Result<Self, JobError> {
        let cancel = master.cancel.clone();
        let status = master.status.clone();
        let name = format!("{}-jobmaster", master.plan.job);
        Self::spawn_with(&name, move || master.run(), cancel, status, metrics, checkpoints, mailbox)
    }

    /// Start `run` (a JobMaster's or a batch scheduler's loop) on a thread
    /// named `name`.
    pub(crate) fn spawn_with(
        name: &str,
        run: impl FnOnce() -> Result<Option<PathBuf>, JobError> + Send + 'static,
        cancel: Arc<AtomicBool>,
        status: super::jobmaster::JobStatus,
        metrics: Vec<Arc<OperatorMetrics>>,
        checkpoints: Arc<CheckpointStats>,
        mailbox: Sender<JobMessage>,
    ) -> Result<Self, JobError> {
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(run)
            .map_err(|e| JobError::Failed(TaskError::Internal(format!("spawning the job's master thread: {e}"))))?;
        Ok(JobHandle {
            master: Some(thread),
            cancel,
            mailbox,
            metrics,
            checkpoints,
            restarts: status.restarts,
            restarting: status.restarting,
            exceptions: status.exceptions,
            started: Instant::now(),
        })
    }

    /// True when the job has ended.
    pub fn is_finished(&self) -> bool {
        self.master.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Ask every task to stop; `wait` then reports the job as cancelled.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A flag that cancels the job when set (for whoever does not own the
    /// handle, such as an API waiting on another thread).
    pub fn cancel_token(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Asks the job for savepoints, through its coordinator's mailbox.
    pub fn savepoints(&self) -> SavepointRequester {
        SavepointRequester(self.mailbox.clone())
    }

    /// True while the job waits to restart after a failure.
    pub fn is_restarting(&self) -> bool {
        self.restarting.load(Ordering::Relaxed)
    }

    /// The shared flag behind [`is_restarting`](Self::is_restarting).
    pub fn restarting_flag(&self) -> Arc<AtomicBool> {
        self.restarting.clone()
    }

    /// Wait for the job to end.
    pub fn wait(mut self) -> Result<JobSummary, JobError> {
        let result = match self.master.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(JobError::Failed(TaskError::Internal("the JobMaster panicked".into()))),
        };
        result.map(|savepoint| JobSummary {
            metrics: self.metrics,
            duration: self.started.elapsed(),
            restarts: self.restarts.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.completed.load(Ordering::Relaxed),
            savepoint,
        })
    }
}

/// Runs every task of a job in this process.
pub struct LocalDeployer {
    components: HashMap<String, Arc<LoadedComponent>>,
    options: RunOptions,
    metrics: Vec<Arc<OperatorMetrics>>,
    state_budget: StateBudget,
    storage: Option<Arc<CheckpointStorage>>,
    running: Option<RunningAttempt>,
}

impl Deployer for LocalDeployer {
    fn deploy(
        &mut self,
        plan: &Arc<ExecutionPlan>,
        attempt: u32,
        restore: Option<&RestoreHandles>,
        events: &EventSink,
    ) -> Result<(), JobError> {
        let shuffle = LocalShuffle::for_plan(self.options.channel_capacity, self.options.channel_bytes, plan);
        let tasks: Vec<usize> = (0..plan.tasks.len()).collect();
        let running = RunningAttempt::start(AttemptContext {
            plan,
            attempt,
            tasks: &tasks,
            components: &self.components,
            shuffle: &shuffle,
            clock: self.options.clock.clone(),
            meter: self.options.meter.clone(),
            logs: self.options.logs.clone(),
            metrics: &self.metrics,
            state_budget: self.state_budget.clone(),
            restore,
            storage: self.storage.clone(),
            events: events.clone(),
        })?;
        self.running = Some(running);
        Ok(())
    }

    fn command(&mut self, command: &Command) -> Result<(), TaskError> {
        let Some(r) = &self.running else { return Ok(()) };
        match command {
            Command::TriggerSource { task, barrier } => r.trigger(*task, *barrier),
            Command::WriteFinal { task, barrier } => r.write_final(*task, *barrier),
            Command::Notify { checkpoint, commits } => r.notify(*checkpoint, commits)?,
            Command::Abort { .. } => {}
        }
        Ok(())
    }

    fn cancel(&mut self) {
        if let Some(r) = self.running.take()
            && !r.shutdown(Duration::from_secs(60))
        {
            tracing::warn!("some tasks did not stop within 60 s");
        }
    }
}

/// The kind of state each node keeps, and its component, for the metadata.
fn operator_infos(graph: &JobGraph, components: &JobComponents) -> HashMap<String, OperatorInfo> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let kind = state_kind(&n.kind)?;
            Some((
                n.name.clone(),
                OperatorInfo {
                    kind: kind.into(),
                    parallelism: n.parallelism,
                    component: components.operators.get(i).and_then(|c| c.as_ref()).map(|c| c.digest.to_string()),
                },
            ))
        })
        .collect()
}

/// The operators whose state a checkpoint to restore must hold; all of
/// them (`require_all`) for the job's own checkpoints.
pub(crate) fn expected_state(graph: &JobGraph, require_all: bool) -> ExpectedState {
    ExpectedState {
        operators: graph
            .nodes
            .iter()
            .filter(|n| state_kind(&n.kind).is_some())
            .map(|n| n.name.clone())
            .collect(),
        require_all,
    }
}

/// Does the checkpoint fit the job? Operators are matched by name; a
/// keyed operator may change its parallelism (key groups are reassigned), a
/// source may not.
pub(crate) fn check_restore(graph: &JobGraph, c: &LoadedCheckpoint, allow_non_restored: bool) -> Result<(), JobError> {
    let spec = &graph.spec;
    let err = |m: String| JobError::Restore(format!("{}: {m}", c.path.display()));
    if c.meta.max_parallelism != spec.max_parallelism {
        return Err(err(format!(
            "it was taken with max_parallelism {}, the job has {}: key groups would not match",
            c.meta.max_parallelism, spec.max_parallelism
        )));
    }
    for op in &c.meta.operators {
        match graph.nodes.iter().find(|n| n.name == op.name) {
            None if allow_non_restored => {
                tracing::warn!(operator = %op.name, "dropping the state of an operator the job no longer has");
            }
            None => {
                return Err(err(format!(
                    "it has state of operator `{}`, which the job does not have; pass --allow-non-restored-state to drop that state",
                    op.name
                )));
            }
            Some(n) => {
                let kind = state_kind(&n.kind).unwrap_or("stateless operator");
                if kind != op.kind {
                    return Err(err(format!("`{}` was a {} and is now a {kind}", op.name, op.kind)));
                }
                // A Kafka source's partitions move between subtasks (union state).
                let union = matches!(&n.kind, crate::job::NodeKind::Source(s) if s.kind == crate::spec::SourceKind::Kafka);
                if kind == "source" && n.parallelism != op.parallelism && !union {
                    return Err(err(format!(
                        "source `{}` had parallelism {} and now has {}: source positions cannot be redistributed",
                        op.name, op.parallelism, n.parallelism
                    )));
                }
                if op.files.len() as u32 != op.parallelism {
                    return Err(err(format!(
                        "`{}` has {} state files for parallelism {}",
                        op.name,
                        op.files.len(),
                        op.parallelism
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Everything a JobMaster is made of besides its deployer, prepared from a
/// validated graph: its plan, storage, restore point and coordinator.
pub(crate) struct PreparedJob {
    /// The plan.
    pub plan: Arc<ExecutionPlan>,
    /// Loaded components by digest.
    pub components: HashMap<String, Arc<LoadedComponent>>,
    /// Checkpoint storage.
    pub storage: Option<Arc<CheckpointStorage>>,
    /// The restore point of attempt 0.
    pub restore: Option<RestoreHandles>,
    /// The coordinator.
    pub coordinator: Option<Coordinator>,
    /// Checkpoint figures.
    pub stats: Arc<CheckpointStats>,
    /// Counters per node.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    /// The restart strategy.
    pub policy: RestartPolicy,
    /// What the job's own checkpoints must hold.
    pub expected: ExpectedState,
    /// The file of each component, by digest (for TaskManagers to fetch).
    pub component_files: Vec<(String, PathBuf)>,
}

/// Load, plan and check `graph` for running: fails before anything runs if
/// a component is missing or of the wrong world, or if the checkpoint to
/// restore does not fit the job.
pub(crate) fn prepare(graph: &JobGraph, engine: &Arc<WasmEngine>, options: &RunOptions) -> Result<PreparedJob, JobError> {
    let components = JobComponents {
        operators: graph.load_components(engine)?,
        watermarks: graph.load_watermark_components(engine)?,
    };
    let plan = Arc::new(ExecutionPlan::build(graph, &components));
    let mut component_files = Vec::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        if let (NodeKind::Operator(_, Some(path)), Some(Some(c))) = (&n.kind, components.operators.get(i)) {
            component_files.push((c.digest.0.clone(), path.clone()));
        }
        let wm = match &n.kind {
            NodeKind::Source(s) => s.watermarks.as_ref(),
            NodeKind::Operator(o, _) => o.watermarks.as_ref(),
            NodeKind::Sink(_) => None,
        };
        if let (Some(path), Some(Some(c))) = (wm.and_then(|w| w.component.as_ref()), components.watermarks.get(i)) {
            component_files.push((c.digest.0.clone(), graph.base_dir.join(path)));
        }
    }
    let spec = &graph.spec;
    let metrics: Vec<Arc<OperatorMetrics>> = graph
        .nodes
        .iter()
        .map(|n| Arc::new(OperatorMetrics::new(&n.name, n.parallelism)))
        .collect();
    let storage = match &spec.checkpoints {
        Some(c) => Some(Arc::new(
            CheckpointStorage::open(&resolve_location(&graph.base_dir, &c.dir)).map_err(|e| JobError::Restore(e.to_string()))?,
        )),
        None => None,
    };
    let restored: Option<LoadedCheckpoint> = match (&options.restore, &storage) {
        (None, _) => None,
        (Some(Restore::Path(p)), _) => {
            Some(load_path(p, &expected_state(graph, false), &RestoreLimits::default()).map_err(|e| JobError::Restore(e.to_string()))?)
        }
        (Some(Restore::Latest), None) => {
            return Err(JobError::Restore(
                "`--restore latest` needs `[checkpoints]` in the job spec: they say where checkpoints are".into(),
            ));
        }
        (Some(Restore::Latest), Some(st)) => {
            let c = st.load_latest(0, &expected_state(graph, true));
            let refused = st.complete_checkpoints().len();
            if c.is_none() && refused > 0 {
                // Starting over would clear committed output the job may not
                // reproduce (a changed job, a source that cannot replay).
                return Err(JobError::Restore(format!(
                    "{}: none of its {refused} complete checkpoints can be restored (the warnings above say why); \
                     run without `--restore` to start the job from the beginning",
                    st.path().display()
                )));
            }
            if c.is_none() {
                tracing::warn!(dir = %st.path().display(), "no complete checkpoint to restore; starting from the beginning");
            }
            c
        }
    };
    if let Some(c) = &restored {
        check_restore(graph, c, options.allow_non_restored_state)?;
        tracing::info!(checkpoint = c.meta.checkpoint, path = %c.path.display(), "restoring");
        if let Some(logs) = &options.logs {
            let name = c.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            logs.host(
                "info",
                &spec.name,
                0,
                format!(
                    "restored {} ({}, checkpoint {}) with the state of {} operators",
                    name,
                    if name.starts_with("savepoint-") {
                        "savepoint"
                    } else {
                        "checkpoint"
                    },
                    c.meta.checkpoint,
                    c.meta.operators.len()
                ),
            );
        }
    }
    for w in graph.warnings() {
        tracing::warn!(job = %spec.name, "{w}");
        if let Some(logs) = &options.logs {
            logs.host("warn", &spec.name, 0, w);
        }
    }
    // The tasks read their own state files from the handles; the decoded
    // copy verified here is dropped.
    let restore = restored.map(|c| RestoreHandles::of(&c.path, &c.meta));
    let stats = Arc::new(CheckpointStats::default());
    let coordinator = match (&spec.checkpoints, &storage) {
        (Some(cfg), Some(st)) => Some(Coordinator::new(
            st.clone(),
            cfg.clone(),
            spec.name.clone(),
            spec.max_parallelism,
            operator_infos(graph, &components),
            restore.as_ref().map(|c| c.checkpoint),
            stats.clone(),
        ))
        .map(|c| match &options.registry {
            Some(r) => c.with_registry(r.clone()),
            None => c,
        }),
        _ => None,
    };
    let default_restart = if spec.checkpoints.is_some() || spec.mode == crate::spec::ExecutionMode::Batch {
        RestartSpec::FixedDelay {
            attempts: 3,
            delay_ms: 1000,
        }
    } else {
        RestartSpec::None
    };
    Ok(PreparedJob {
        components: components.by_digest(),
        plan,
        storage,
        restore,
        coordinator,
        stats,
        metrics,
        policy: RestartPolicy::new(spec.restart.clone().unwrap_or(default_restart)),
        expected: expected_state(graph, true),
        component_files,
    })
}

/// Validate, load and start `graph` in this process. Fails before anything
/// runs if a component is missing, of the wrong world, or fails to open, or
/// if the checkpoint to restore does not fit the job.
pub fn run_job(graph: &JobGraph, engine: &Arc<WasmEngine>, options: RunOptions) -> Result<JobHandle, JobError> {
    let p = prepare(graph, engine, &options)?;
    let spec = &graph.spec;
    let state_budget = StateBudget::new(spec.limits.max_state_mb.map(|mb| mb.saturating_mul(1 << 20)), options.meter.clone());
    let request_dir = match (&spec.checkpoints, options.savepoint_request_files) {
        // Requests are files beside local checkpoints only.
        (Some(c), true) if !crate::checkpoint::object::is_url(std::path::Path::new(&c.dir)) => Some(graph.base_dir.join(&c.dir)),
        _ => None,
    };
    let mut p = p;
    if p.plan.mode == crate::spec::ExecutionMode::Batch {
        return super::batch::launch(p, options, state_budget);
    }
    let deployer = LocalDeployer {
        components: std::mem::take(&mut p.components),
        options: options.clone(),
        metrics: p.metrics.clone(),
        state_budget,
        storage: p.storage.take(),
        running: None,
    };
    launch(p, deployer, request_dir, options.clock.clone())
}

/// Deploy attempt 0 of a prepared job with `deployer`, then hand the job to
/// its JobMaster on its own thread.
pub(crate) fn launch(
    p: PreparedJob,
    mut deployer: impl Deployer + 'static,
    request_dir: Option<PathBuf>,
    clock: Arc<dyn Clock>,
) -> Result<JobHandle, JobError> {
    let (events_tx, events_rx) = crossbeam_channel::unbounded();
    let events = channel_sink(events_tx);
    deployer.deploy(&p.plan, 0, p.restore.as_ref(), &events)?;
    let (mailbox_tx, mailbox) = crossbeam_channel::unbounded();
    let master = JobMaster {
        plan: p.plan,
        deployer: Box::new(deployer),
        coordinator: p.coordinator,
        policy: p.policy,
        initial: p.restore,
        expected: p.expected,
        events_rx,
        events,
        mailbox,
        cancel: Arc::new(AtomicBool::new(false)),
        status: JobStatus::default(),
        request_dir,
        clock,
    };
    JobHandle::spawn(master, p.metrics, p.stats, mailbox_tx)
}
