//! The checkpoint coordinator: a state machine of the JobMaster.
//!
//! ```text
//!  in:  tick · ack(task, state handles, sealed sink files) · decline
//!       · task finished(last barrier) · savepoint request(stop, reply)
//!       · finish (every task ended: take the last checkpoint)
//!  out: commands — trigger source task t with barrier n · write the final
//!       state of finished task t for barrier n · notify complete n (with
//!       the sink files each task sealed for it) · abort n
//!       events  — stopped with savepoint · stop failed · finished
//! ```
//!
//! It never touches tasks or sink directories: whoever runs the tasks
//! (in-process, or a TaskManager over RPC) carries out the commands, and each
//! sink subtask commits its own sealed output when told checkpoint n is
//! complete. The metadata is written here, last, once every task has acked.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use super::storage::{CheckpointError, CheckpointStorage, Metadata, OperatorMeta, SinkMeta, StateFile};
use super::{Barrier, BarrierKind};
use crate::spec::CheckpointSpec;

/// A task's snapshot for a checkpoint is written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    /// The checkpoint.
    pub checkpoint: u64,
    /// The task (index in the plan).
    pub task: usize,
    /// State files by operator name.
    pub files: Vec<(String, StateFile)>,
    /// Sealed sink files by sink name, to commit when the checkpoint completes.
    pub sinks: Vec<(String, Vec<String>)>,
}

/// Writing a task's snapshot failed: the checkpoint is aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decline {
    /// The checkpoint.
    pub checkpoint: u64,
    /// Why.
    pub reason: String,
}

/// Where the answer to a savepoint request goes: its path, or why it failed.
pub type SavepointReply = Sender<Result<PathBuf, String>>;

/// What the coordinator asks of the tasks' hosts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Source task `task` injects `barrier`.
    TriggerSource {
        /// The task.
        task: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// Finished task `task` writes its final state for `barrier` and acks.
    WriteFinal {
        /// The task.
        task: usize,
        /// The barrier.
        barrier: Barrier,
    },
    /// Checkpoint `checkpoint` is complete: each task commits the sink files
    /// it sealed for it, `(task, sink, files)`.
    Notify {
        /// The checkpoint.
        checkpoint: u64,
        /// Sealed files by task and sink.
        commits: Vec<(usize, String, Vec<String>)>,
    },
    /// Checkpoint `checkpoint` was aborted.
    Abort {
        /// The checkpoint.
        checkpoint: u64,
    },
}

/// What the coordinator tells the JobMaster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorEvent {
    /// A stop-with-savepoint completed: the job ends.
    Stopped(PathBuf),
    /// The final checkpoint of a finished job completed.
    Finished(u64),
}

/// What the coordinator knows of an operator, for the metadata.
#[derive(Debug, Clone)]
pub struct OperatorInfo {
    /// `source`, `keyed-process`, `window` or `join`.
    pub kind: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// Its component's digest.
    pub component: Option<String>,
}

struct Pending {
    barrier: Barrier,
    started: Instant,
    acks: Vec<bool>,
    files: Vec<(String, StateFile)>,
    sinks: Vec<(usize, String, Vec<String>)>,
    reply: Option<SavepointReply>,
    last: bool,
}

/// One checkpoint or savepoint as the API's history shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointRecord {
    /// Its id.
    pub id: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: &'static str,
    /// `completed` or `aborted`.
    pub status: &'static str,
    /// When it was triggered, ms since the Unix epoch.
    pub started_ms: u64,
    /// Trigger to completion (or abort), ms.
    pub duration_ms: u64,
    /// Bytes of state files acknowledged.
    pub size_bytes: u64,
    /// Why it was aborted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Checkpoints the history keeps, newest last.
pub const CHECKPOINT_HISTORY: usize = 32;

/// Figures of the coordinator, readable while the job runs.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Checkpoints and savepoints completed.
    pub completed: AtomicU64,
    /// Id of the newest one.
    pub last_id: AtomicU64,
    /// Its duration (ms).
    pub last_duration_ms: AtomicU64,
    /// Its size (bytes of state files).
    pub last_bytes: AtomicU64,
    /// Checkpoints aborted (timeout or failure).
    pub aborted: AtomicU64,
    /// The newest [`CHECKPOINT_HISTORY`] checkpoints, completed or not.
    history: std::sync::Mutex<VecDeque<CheckpointRecord>>,
}

impl CheckpointStats {
    /// The newest checkpoints and savepoints, oldest first.
    pub fn history(&self) -> Vec<CheckpointRecord> {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect()
    }

    fn record(&self, barrier: &Barrier, started: Instant, size_bytes: u64, reason: Option<&str>) {
        let elapsed = started.elapsed();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let r = CheckpointRecord {
            id: barrier.id,
            kind: if matches!(barrier.kind, BarrierKind::Savepoint { .. }) {
                "savepoint"
            } else {
                "checkpoint"
            },
            status: if reason.is_some() { "aborted" } else { "completed" },
            started_ms: now.saturating_sub(elapsed).as_millis() as u64,
            duration_ms: elapsed.as_millis() as u64,
            size_bytes,
            reason: reason.map(str::to_owned),
        };
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == CHECKPOINT_HISTORY {
            h.pop_front();
        }
        h.push_back(r);
    }
}

/// Where a highly available JobManager records its checkpoints (etcd): the
/// id counter and, once a checkpoint's metadata is written, the pointer to
/// it. Sinks are told to commit only after the pointer is written, so the
/// output a new leader finds committed never runs ahead of the checkpoint
/// it restores.
pub trait CheckpointRegistry: Send + Sync + std::fmt::Debug {
    /// The lowest id the coordinator may use (above every id handed out).
    fn first_id(&self) -> u64;
    /// Record that ids up to `id` are handed out (before its barrier).
    fn reserve(&self, id: u64) -> Result<(), String>;
    /// Record checkpoint `id`, complete at `location`.
    fn completed(&self, id: u64, location: &std::path::Path) -> Result<(), String>;
}

/// Triggers checkpoints, collects acks, completes checkpoints.
pub struct Coordinator {
    /// Where checkpoints are stored.
    pub storage: Arc<CheckpointStorage>,
    cfg: CheckpointSpec,
    job: String,
    max_parallelism: u32,
    operators: HashMap<String, OperatorInfo>,
    /// Newest completed checkpoint id.
    pub completed: Arc<AtomicU64>,
    /// The first id of this run: restarts never go back before it.
    pub first_id: u64,
    next_id: u64,
    pending: Option<Pending>,
    last_end: Option<Instant>,
    last_start: Option<Instant>,
    requests: VecDeque<(bool, SavepointReply)>,
    /// Figures for the API.
    pub stats: Arc<CheckpointStats>,
    /// Set when a stop-with-savepoint failed: its sources have stopped, so
    /// the attempt must restart from the latest checkpoint.
    failure: Option<String>,
    commands: Vec<Command>,
    // Per attempt.
    running: bool,
    sources: Vec<bool>,
    finished: Vec<Option<u64>>,
    registry: Option<std::sync::Arc<dyn CheckpointRegistry>>,
    /// Set when the registry refused a write: this JobManager no longer
    /// leads, and takes no more checkpoints.
    deposed: Option<String>,
}

impl Coordinator {
    /// A coordinator for a job; `restored` is the checkpoint it starts from.
    pub fn new(
        storage: Arc<CheckpointStorage>,
        cfg: CheckpointSpec,
        job: String,
        max_parallelism: u32,
        operators: HashMap<String, OperatorInfo>,
        restored: Option<u64>,
        stats: Arc<CheckpointStats>,
    ) -> Self {
        let next_id = storage.max_id().max(restored.unwrap_or(0)) + 1;
        Coordinator {
            storage,
            cfg,
            job,
            max_parallelism,
            operators,
            completed: Arc::new(AtomicU64::new(restored.unwrap_or(0))),
            first_id: next_id,
            next_id,
            pending: None,
            last_end: None,
            last_start: None,
            requests: VecDeque::new(),
            stats,
            failure: None,
            commands: Vec::new(),
            running: false,
            sources: Vec::new(),
            finished: Vec::new(),
            registry: None,
            deposed: None,
        }
    }

    /// Record checkpoints in `registry` too; ids start above its counter.
    pub fn with_registry(mut self, registry: std::sync::Arc<dyn CheckpointRegistry>) -> Self {
        self.next_id = self.next_id.max(registry.first_id());
        self.first_id = self.next_id;
        self.registry = Some(registry);
        self
    }

    /// The barrier mode of periodic checkpoints.
    pub fn aligned(&self) -> bool {
        self.cfg.mode == crate::spec::CheckpointMode::ExactlyOnce
    }

    /// Begin an attempt whose tasks are `sources[t]`: true for source tasks.
    pub fn start_attempt(&mut self, sources: Vec<bool>) {
        if let Some(p) = self.pending.take() {
            self.abort(p, "the job restarted");
        }
        self.finished = vec![None; sources.len()];
        self.sources = sources;
        self.running = true;
        // The first checkpoint of an attempt comes one interval after its start.
        self.last_start = Some(Instant::now());
        self.last_end = None;
    }

    /// End the attempt.
    pub fn end_attempt(&mut self) {
        if let Some(p) = self.pending.take() {
            self.abort(p, "the attempt ended");
        }
        self.failure = None;
        self.running = false;
    }

    /// The commands issued since the last call, in order.
    pub fn take_commands(&mut self) -> Vec<Command> {
        std::mem::take(&mut self.commands)
    }

    fn abort(&mut self, p: Pending, why: &str) {
        self.abort_keeping(p, why, false);
    }

    /// Abort `p`; with `keep_files`, leave its files (the metadata write
    /// failed, and on an object store its outcome is unknown: deleting
    /// could destroy a checkpoint that did complete; a later prune removes
    /// the files if it did not).
    fn abort_keeping(&mut self, p: Pending, why: &str, keep_files: bool) {
        tracing::warn!(checkpoint = p.barrier.id, "checkpoint aborted: {why}");
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        let bytes = p.files.iter().map(|(_, f)| f.bytes).sum();
        self.stats.record(&p.barrier, p.started, bytes, Some(why));
        if !keep_files {
            self.storage.remove(&super::barrier_dir(&p.barrier));
        }
        if let Some(reply) = p.reply {
            let _ = reply.send(Err(format!("savepoint {} aborted: {why}", p.barrier.id)));
        }
        if p.barrier.kind == (BarrierKind::Savepoint { stop: true }) && self.running {
            self.failure = Some(format!("stop with savepoint {} failed: {why}", p.barrier.id));
        }
        if p.last && self.running {
            self.failure = Some(format!("the final checkpoint {} failed: {why}", p.barrier.id));
        }
        self.commands.push(Command::Abort { checkpoint: p.barrier.id });
        self.last_end = Some(Instant::now());
    }

    /// A failure the attempt must restart for, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    /// Queue a savepoint (with `stop`, the job stops after it); the answer
    /// goes to `reply`.
    pub fn request_savepoint(&mut self, stop: bool, reply: SavepointReply) {
        self.requests.push_back((stop, reply));
    }

    /// Task `task` ended its input after barrier `last_barrier`.
    pub fn on_finished(&mut self, task: usize, last_barrier: u64) {
        if let Some(p) = &self.pending
            && last_barrier < p.barrier.id
        {
            // The task ended before barrier n reached it: its final state
            // is its state at n.
            self.commands.push(Command::WriteFinal { task, barrier: p.barrier });
        }
        if let Some(slot) = self.finished.get_mut(task) {
            *slot = Some(last_barrier);
        }
    }

    /// A task's ack; may complete the checkpoint.
    pub fn on_ack(&mut self, ack: Ack) -> Option<CoordinatorEvent> {
        let p = self.pending.as_mut().filter(|p| p.barrier.id == ack.checkpoint)?;
        if ack.task < p.acks.len() && !p.acks[ack.task] {
            p.acks[ack.task] = true;
            p.files.extend(ack.files);
            p.sinks.extend(ack.sinks.into_iter().map(|(sink, files)| (ack.task, sink, files)));
        }
        if p.acks.iter().all(|a| *a) {
            let p = self.pending.take()?;
            // A failed metadata write aborts the checkpoint (and says so); the job goes on.
            return self.complete(p).unwrap_or(None);
        }
        None
    }

    /// A task could not write its snapshot.
    pub fn on_decline(&mut self, decline: Decline) {
        if self.pending.as_ref().is_some_and(|p| p.barrier.id == decline.checkpoint)
            && let Some(p) = self.pending.take()
        {
            self.abort(p, &decline.reason);
        }
    }

    /// Trigger a checkpoint or a requested savepoint when due; abort one
    /// that timed out.
    pub fn tick(&mut self) {
        if let Some(p) = &self.pending {
            if p.started.elapsed() >= Duration::from_millis(self.cfg.timeout_ms)
                && let Some(p) = self.pending.take()
            {
                let why = format!("not complete after {} ms", self.cfg.timeout_ms);
                self.abort(p, &why);
            }
            return;
        }
        if !self.running {
            return;
        }
        let running_sources = self.sources.iter().zip(&self.finished).any(|(s, f)| *s && f.is_none());
        if !running_sources {
            return;
        }
        if let Some((stop, reply)) = self.requests.pop_front() {
            self.trigger(BarrierKind::Savepoint { stop }, Some(reply), false);
            return;
        }
        let interval_due = self
            .last_start
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(self.cfg.interval_ms));
        let pause_done = self
            .last_end
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(self.cfg.min_pause_ms));
        if interval_due && pause_done {
            self.trigger(BarrierKind::Checkpoint, None, false);
        }
    }

    fn trigger(&mut self, kind: BarrierKind, reply: Option<SavepointReply>, last: bool) {
        if let Some(why) = self.refused_id(self.next_id) {
            tracing::warn!(checkpoint = self.next_id, "checkpoint not triggered: {why}");
            if let Some(reply) = reply {
                let _ = reply.send(Err(format!("savepoint not taken: {why}")));
            }
            self.last_start = Some(Instant::now());
            return;
        }
        let barrier = Barrier {
            id: self.next_id,
            kind,
            aligned: self.aligned() || kind != BarrierKind::Checkpoint,
        };
        self.next_id += 1;
        self.last_start = Some(Instant::now());
        self.pending = Some(Pending {
            barrier,
            started: Instant::now(),
            acks: vec![false; self.sources.len()],
            files: Vec::new(),
            sinks: Vec::new(),
            reply,
            last,
        });
        for t in 0..self.sources.len() {
            if self.finished[t].is_some() {
                self.commands.push(Command::WriteFinal { task: t, barrier });
            } else if self.sources[t] {
                self.commands.push(Command::TriggerSource { task: t, barrier });
            }
        }
    }

    /// Why checkpoint `id` may not be taken: the registry refused its id.
    fn refused_id(&mut self, id: u64) -> Option<String> {
        if let Some(d) = &self.deposed {
            return Some(d.clone());
        }
        let r = self.registry.as_ref()?.reserve(id).err()?;
        if r.contains("not the leader") {
            self.deposed = Some(r.clone());
            return Some(r);
        }
        // etcd is away: the id is above every stored one anyway, and the
        // completion is recorded (fenced) or the checkpoint does not count.
        tracing::warn!(checkpoint = id, "reserving the checkpoint id: {r}");
        None
    }

    /// Every task has finished: take the last checkpoint from their final
    /// states; [`CoordinatorEvent::Finished`] follows its completion.
    /// Savepoints still queued are answered with an error. A pending stop
    /// with savepoint is let complete (nothing flows after its barrier, so
    /// its state is final) and ends the job as stopped.
    pub fn finish(&mut self) {
        if let Some(p) = &mut self.pending
            && p.barrier.kind == (BarrierKind::Savepoint { stop: true })
        {
            p.last = true;
            return;
        }
        if let Some(p) = self.pending.take() {
            self.abort(p, "every task finished");
        }
        for (_, reply) in self.requests.drain(..) {
            let _ = reply.send(Err("the job finished before the savepoint was taken".into()));
        }
        self.trigger(BarrierKind::Checkpoint, None, true);
    }

    /// Write the metadata (the checkpoint is then complete) and tell the
    /// tasks. A metadata failure aborts the checkpoint.
    fn complete(&mut self, p: Pending) -> Result<Option<CoordinatorEvent>, CheckpointError> {
        let id = p.barrier.id;
        let dir = super::barrier_dir(&p.barrier);
        let mut by_op: HashMap<String, Vec<StateFile>> = HashMap::new();
        let mut bytes = 0;
        for (node, f) in &p.files {
            bytes += f.bytes;
            by_op.entry(node.clone()).or_default().push(f.clone());
        }
        let mut operators: Vec<OperatorMeta> = by_op
            .into_iter()
            .map(|(name, mut files)| {
                files.sort_by_key(|f| f.subtask);
                let info = self.operators.get(&name).cloned().unwrap_or(OperatorInfo {
                    kind: "unknown".into(),
                    parallelism: files.len() as u32,
                    component: None,
                });
                OperatorMeta {
                    name,
                    kind: info.kind,
                    parallelism: info.parallelism,
                    component: info.component,
                    files,
                }
            })
            .collect();
        operators.sort_by(|a, b| a.name.cmp(&b.name));
        let mut sinks: HashMap<String, Vec<String>> = HashMap::new();
        for (_, node, pending) in &p.sinks {
            sinks.entry(node.clone()).or_default().extend(pending.iter().cloned());
        }
        let mut sinks: Vec<SinkMeta> = sinks.into_iter().map(|(name, pending)| SinkMeta { name, pending }).collect();
        sinks.sort_by(|a, b| a.name.cmp(&b.name));
        let savepoint = matches!(p.barrier.kind, BarrierKind::Savepoint { .. });
        let meta = Metadata {
            format: super::storage::METADATA_FORMAT,
            job: self.job.clone(),
            checkpoint: id,
            kind: if savepoint { "savepoint" } else { "checkpoint" }.into(),
            completed_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            max_parallelism: self.max_parallelism,
            mode: self.cfg.mode.as_str().into(),
            operators,
            sinks,
        };
        if let Err(e) = self.storage.write_metadata(&dir, &meta) {
            let reason = e.to_string();
            self.abort_keeping(p, &reason, true);
            return Err(e);
        }
        if let Some(r) = &self.registry {
            let path = self.storage.path().join(&dir);
            if let Err(e) = r.completed(id, &path) {
                // Not recorded: no sink commits it, and its files stay (a
                // later prune removes them).
                let reason = format!("recording the checkpoint: {e}");
                if e.contains("not the leader") {
                    self.deposed = Some(reason.clone());
                }
                self.abort_keeping(p, &reason, true);
                return Ok(None);
            }
        }
        self.completed.store(id, Ordering::SeqCst);
        self.last_end = Some(Instant::now());
        let duration = p.started.elapsed();
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        self.stats.last_id.store(id, Ordering::Relaxed);
        self.stats.last_duration_ms.store(duration.as_millis() as u64, Ordering::Relaxed);
        self.stats.last_bytes.store(bytes, Ordering::Relaxed);
        self.stats.record(&p.barrier, p.started, bytes, None);
        let path = self.storage.path().join(&dir);
        tracing::info!(
            checkpoint = id,
            bytes,
            ms = duration.as_millis() as u64,
            savepoint,
            "checkpoint complete"
        );
        if !savepoint {
            self.storage.prune(self.cfg.retain);
        }
        // An intermediate savepoint commits no output (as in Flink): the
        // next checkpoint does; restoring the savepoint commits what it sealed.
        if !savepoint || p.barrier.kind == (BarrierKind::Savepoint { stop: true }) {
            self.commands.push(Command::Notify {
                checkpoint: id,
                commits: p.sinks,
            });
        }
        if let Some(reply) = &p.reply {
            let _ = reply.send(Ok(path.clone()));
        }
        Ok(match p.barrier.kind {
            BarrierKind::Savepoint { stop: true } => Some(CoordinatorEvent::Stopped(path)),
            _ if p.last => Some(CoordinatorEvent::Finished(id)),
            _ => None,
        })
    }
}
