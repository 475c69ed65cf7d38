//! The checkpoint coordinator (it runs on the job's supervisor thread), the
//! writer thread that does the asynchronous part of every snapshot, the
//! savepoint request protocol of `sluice savepoint`, and restart strategies.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::Sender;

use super::format::encode_file;
use super::storage::{CheckpointError, CheckpointStorage, Metadata, OperatorMeta, SinkMeta, StateFile, state_file_name};
use super::{Barrier, BarrierKind, NodeSnapshot};
use crate::job::spec::{CheckpointSpec, RestartSpec};

/// Work for the writer thread: one task's snapshot at one barrier.
pub(crate) struct WriteJob {
    pub attempt: u32,
    pub barrier: Barrier,
    pub task: usize,
    pub parts: Arc<Vec<NodeSnapshot>>,
}

/// What the coordinator hears.
pub(crate) enum Report {
    /// A task's snapshot for `checkpoint` is written.
    Acked {
        attempt: u32,
        checkpoint: u64,
        task: usize,
        files: Vec<(String, StateFile)>,
        sinks: Vec<(String, Vec<String>)>,
    },
    /// Writing a task's snapshot failed: the checkpoint is aborted.
    Declined { attempt: u32, checkpoint: u64, reason: String },
    /// A task ended its input; `parts` is its final state.
    Finished {
        attempt: u32,
        task: usize,
        last_barrier: u64,
        parts: Arc<Vec<NodeSnapshot>>,
    },
}

/// Start the writer thread: compresses, checksums and writes snapshots, then
/// acks them. It ends when every sender is dropped.
pub(crate) fn spawn_writer(storage: Arc<CheckpointStorage>, reports: Sender<Report>) -> std::io::Result<Sender<WriteJob>> {
    let (tx, rx) = crossbeam_channel::unbounded::<WriteJob>();
    std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
        let delay = fault_delay();
        for job in rx {
            let mut files = Vec::new();
            let mut sinks = Vec::new();
            let failed = write_parts(&storage, &job.barrier.dir(), &job.parts, &mut files, &mut sinks)
                .err()
                .map(|e| e.to_string());
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            let report = match failed {
                Some(reason) => Report::Declined {
                    attempt: job.attempt,
                    checkpoint: job.barrier.id,
                    reason,
                },
                None => Report::Acked {
                    attempt: job.attempt,
                    checkpoint: job.barrier.id,
                    task: job.task,
                    files,
                    sinks,
                },
            };
            if reports.send(report).is_err() {
                break;
            }
        }
    })?;
    Ok(tx)
}

/// Write the state files of `parts` into `dir`, collecting their handles
/// and the sinks' sealed files.
fn write_parts(
    storage: &CheckpointStorage,
    dir: &str,
    parts: &[NodeSnapshot],
    files: &mut Vec<(String, StateFile)>,
    sinks: &mut Vec<(String, Vec<String>)>,
) -> Result<(), CheckpointError> {
    for p in parts {
        if let Some(payload) = &p.state.payload {
            let f = storage.write_state(dir, &state_file_name(&p.node, p.subtask), p.subtask, &encode_file(payload))?;
            files.push((p.node.clone(), f));
        }
        if let Some(pending) = &p.state.sink {
            sinks.push((p.node.clone(), pending.clone()));
        }
    }
    Ok(())
}

/// Fault injection for crash tests: `SLUICE_FAULT_CHECKPOINT_DELAY_MS`
/// stretches the window between writing state files and completing the
/// checkpoint, so a kill lands mid-checkpoint more often.
fn fault_delay() -> Option<Duration> {
    std::env::var("SLUICE_FAULT_CHECKPOINT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// What the coordinator knows of an operator, for the metadata.
#[derive(Debug, Clone)]
pub(crate) struct OperatorInfo {
    pub kind: String,
    pub parallelism: u32,
    pub component: Option<String>,
}

struct Pending {
    barrier: Barrier,
    started: Instant,
    acks: Vec<bool>,
    files: Vec<(String, StateFile)>,
    sinks: Vec<(String, Vec<String>)>,
    request: Option<PathBuf>,
}

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
}

/// Why an attempt should end, as seen by the coordinator.
pub(crate) enum CoordinatorEvent {
    /// A stop-with-savepoint completed.
    Stopped(PathBuf),
    /// Committing sink output failed.
    Failed(String),
}

/// Triggers checkpoints, collects acks, completes checkpoints.
pub(crate) struct Coordinator {
    pub storage: Arc<CheckpointStorage>,
    cfg: CheckpointSpec,
    job: String,
    max_parallelism: u32,
    operators: HashMap<String, OperatorInfo>,
    sink_dirs: HashMap<String, PathBuf>,
    /// Newest completed checkpoint id, shared with transactional sinks.
    pub completed: Arc<AtomicU64>,
    /// The first id of this run: restarts never go back before it.
    pub first_id: u64,
    next_id: u64,
    pending: Option<Pending>,
    last_end: Option<Instant>,
    last_start: Option<Instant>,
    last_poll: Instant,
    requests: VecDeque<(PathBuf, bool)>,
    pub stats: Arc<CheckpointStats>,
    /// Set when a stop-with-savepoint failed: its sources have stopped, so
    /// the attempt must restart from the latest checkpoint.
    failure: Option<String>,
    // Per attempt.
    attempt: u32,
    triggers: Vec<Option<Sender<Barrier>>>,
    finals: Vec<Option<(u64, Arc<Vec<NodeSnapshot>>)>>,
    writer: Option<Sender<WriteJob>>,
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        storage: Arc<CheckpointStorage>,
        cfg: CheckpointSpec,
        job: String,
        max_parallelism: u32,
        operators: HashMap<String, OperatorInfo>,
        sink_dirs: HashMap<String, PathBuf>,
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
            sink_dirs,
            completed: Arc::new(AtomicU64::new(restored.unwrap_or(0))),
            first_id: next_id,
            next_id,
            pending: None,
            last_end: None,
            last_start: None,
            last_poll: Instant::now(),
            requests: VecDeque::new(),
            stats,
            failure: None,
            attempt: 0,
            triggers: Vec::new(),
            finals: Vec::new(),
            writer: None,
        }
    }

    /// The barrier mode of periodic checkpoints.
    pub fn aligned(&self) -> bool {
        self.cfg.mode == crate::job::spec::CheckpointMode::ExactlyOnce
    }

    /// Begin an attempt with these tasks (a trigger sender for each source task).
    pub fn start_attempt(&mut self, attempt: u32, triggers: Vec<Option<Sender<Barrier>>>, writer: Sender<WriteJob>) {
        if let Some(p) = self.pending.take() {
            self.abort(p, "the job restarted");
        }
        self.attempt = attempt;
        self.finals = vec![None; triggers.len()];
        self.triggers = triggers;
        self.writer = Some(writer);
        // The first checkpoint of an attempt comes one interval after its start.
        self.last_start = Some(Instant::now());
        self.last_end = None;
    }

    /// End the attempt: drop the writer and triggers.
    pub fn end_attempt(&mut self) {
        if let Some(p) = self.pending.take() {
            self.abort(p, "the attempt ended");
        }
        self.failure = None;
        self.writer = None;
        self.triggers.clear();
    }

    fn abort(&mut self, p: Pending, why: &str) {
        tracing::warn!(checkpoint = p.barrier.id, "checkpoint aborted: {why}");
        self.stats.aborted.fetch_add(1, Ordering::Relaxed);
        self.storage.remove(&p.barrier.dir());
        if let Some(req) = p.request {
            respond(&req, Err(format!("savepoint {} aborted: {why}", p.barrier.id)));
        }
        if p.barrier.kind == (BarrierKind::Savepoint { stop: true }) && self.writer.is_some() {
            self.failure = Some(format!("stop with savepoint {} failed: {why}", p.barrier.id));
        }
        self.last_end = Some(Instant::now());
    }

    /// A failure the attempt must restart for, once.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failure.take()
    }

    fn write(&self, barrier: Barrier, task: usize, parts: Arc<Vec<NodeSnapshot>>) {
        if let Some(w) = &self.writer {
            let _ = w.send(WriteJob {
                attempt: self.attempt,
                barrier,
                task,
                parts,
            });
        }
    }

    /// Handle a report; may complete a checkpoint.
    pub fn on_report(&mut self, report: Report) -> Option<CoordinatorEvent> {
        match report {
            Report::Finished {
                attempt,
                task,
                last_barrier,
                parts,
            } if attempt == self.attempt => {
                if let Some(p) = &self.pending
                    && last_barrier < p.barrier.id
                {
                    // The task ended before barrier n reached it: its final
                    // state is its state at n.
                    let b = p.barrier;
                    self.write(b, task, parts.clone());
                }
                if let Some(slot) = self.finals.get_mut(task) {
                    *slot = Some((last_barrier, parts));
                }
                None
            }
            Report::Acked {
                attempt,
                checkpoint,
                task,
                files,
                sinks,
            } if attempt == self.attempt => {
                let p = self.pending.as_mut().filter(|p| p.barrier.id == checkpoint)?;
                if task < p.acks.len() && !p.acks[task] {
                    p.acks[task] = true;
                    p.files.extend(files);
                    p.sinks.extend(sinks);
                }
                if p.acks.iter().all(|a| *a) {
                    let p = self.pending.take()?;
                    // A failed metadata write aborts the checkpoint (and says so); the job goes on.
                    return self.complete(p).unwrap_or(None);
                }
                None
            }
            Report::Declined {
                attempt,
                checkpoint,
                reason,
            } if attempt == self.attempt => {
                if self.pending.as_ref().is_some_and(|p| p.barrier.id == checkpoint)
                    && let Some(p) = self.pending.take()
                {
                    self.abort(p, &reason);
                }
                None
            }
            _ => None,
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
        if self.last_poll.elapsed() >= Duration::from_millis(100) {
            self.last_poll = Instant::now();
            self.poll_requests();
        }
        if self.writer.is_none() || self.triggers.iter().all(Option::is_none) {
            return;
        }
        let running_sources = self
            .triggers
            .iter()
            .enumerate()
            .any(|(t, tx)| tx.is_some() && self.finals[t].is_none());
        if !running_sources {
            return;
        }
        if let Some((req, stop)) = self.requests.pop_front() {
            self.trigger(BarrierKind::Savepoint { stop }, Some(req));
            return;
        }
        let interval_due = self
            .last_start
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(self.cfg.interval_ms));
        let pause_done = self
            .last_end
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(self.cfg.min_pause_ms));
        if interval_due && pause_done {
            self.trigger(BarrierKind::Checkpoint, None);
        }
    }

    fn trigger(&mut self, kind: BarrierKind, request: Option<PathBuf>) {
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
            acks: vec![false; self.triggers.len()],
            files: Vec::new(),
            sinks: Vec::new(),
            request,
        });
        for t in 0..self.triggers.len() {
            if let Some((_, parts)) = &self.finals[t] {
                self.write(barrier, t, parts.clone());
            } else if let Some(tx) = &self.triggers[t] {
                let _ = tx.send(barrier);
            }
        }
    }

    /// Every task has finished: write the last checkpoint from their final
    /// states and commit the rest of the output. Returns its id.
    pub fn finish(&mut self) -> Result<u64, CheckpointError> {
        if let Some(p) = self.pending.take() {
            self.abort(p, "every task finished");
        }
        let barrier = Barrier {
            id: self.next_id,
            kind: BarrierKind::Checkpoint,
            aligned: true,
        };
        self.next_id += 1;
        let started = Instant::now();
        let dir = barrier.dir();
        let mut files = Vec::new();
        let mut sinks = Vec::new();
        for (_, parts) in self.finals.iter().flatten() {
            write_parts(&self.storage, &dir, parts, &mut files, &mut sinks)?;
        }
        let p = Pending {
            barrier,
            started,
            acks: Vec::new(),
            files,
            sinks,
            request: None,
        };
        match self.complete(p)? {
            Some(CoordinatorEvent::Failed(e)) => Err(CheckpointError::Io {
                path: self.storage.path().join(dir),
                source: std::io::Error::other(e),
            }),
            _ => Ok(barrier.id),
        }
    }

    /// Write the metadata (the checkpoint is then complete) and commit the
    /// sinks' output. A metadata failure aborts the checkpoint.
    fn complete(&mut self, p: Pending) -> Result<Option<CoordinatorEvent>, CheckpointError> {
        let id = p.barrier.id;
        let dir = p.barrier.dir();
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
        for (node, pending) in &p.sinks {
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
            self.abort(p, &reason);
            return Err(e);
        }
        self.completed.store(id, Ordering::SeqCst);
        self.last_end = Some(Instant::now());
        let duration = p.started.elapsed();
        self.stats.completed.fetch_add(1, Ordering::Relaxed);
        self.stats.last_id.store(id, Ordering::Relaxed);
        self.stats.last_duration_ms.store(duration.as_millis() as u64, Ordering::Relaxed);
        self.stats.last_bytes.store(bytes, Ordering::Relaxed);
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
        if let Some(req) = &p.request {
            respond(req, Ok(path.clone()));
        }
        if let Err(e) = commit_sinks(&meta, &self.sink_dirs) {
            return Ok(Some(CoordinatorEvent::Failed(e)));
        }
        Ok(match p.barrier.kind {
            BarrierKind::Savepoint { stop: true } => Some(CoordinatorEvent::Stopped(path)),
            _ => None,
        })
    }

    /// Read `sluice savepoint` requests from the requests directory.
    fn poll_requests(&mut self) {
        let dir = self.storage.requests_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else { return };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "request") && !self.requests.iter().any(|(p, _)| *p == path) {
                let stop = std::fs::read_to_string(&path).is_ok_and(|t| t.trim() == "stop");
                self.requests.push_back((path, stop));
            }
        }
    }
}

/// Publish the sink output sealed for a complete checkpoint.
pub(crate) fn commit_sinks(meta: &Metadata, sink_dirs: &HashMap<String, PathBuf>) -> Result<(), String> {
    for s in &meta.sinks {
        match sink_dirs.get(&s.name) {
            Some(dir) => crate::connectors::file_sink::commit(dir, &s.pending).map_err(|e| e.to_string())?,
            None if s.pending.is_empty() => {}
            None => tracing::warn!(sink = %s.name, "the checkpoint has output of a sink the job no longer has; it stays uncommitted"),
        }
    }
    Ok(())
}

/// Answer a savepoint request: `<name>.done` holds the path or the error.
fn respond(request: &Path, result: Result<PathBuf, String>) {
    let text = match result {
        Ok(p) => format!("ok {}", p.display()),
        Err(e) => format!("error {e}"),
    };
    let _ = std::fs::write(request.with_extension("done"), text);
    let _ = std::fs::remove_file(request);
}

/// Ask the job whose checkpoints live in `dir` for a savepoint (the job
/// polls for requests), and wait for its path.
pub fn request_savepoint(dir: &Path, stop: bool, timeout: Duration) -> anyhow::Result<PathBuf> {
    request_savepoint_while(dir, stop, timeout, || true)
}

/// Like [`request_savepoint`], but give up as soon as `alive` says the job
/// has ended.
pub fn request_savepoint_while(dir: &Path, stop: bool, timeout: Duration, alive: impl Fn() -> bool) -> anyhow::Result<PathBuf> {
    let requests = dir.join("requests");
    std::fs::create_dir_all(&requests)?;
    let name = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let tmp = requests.join(format!("{name}.tmp"));
    std::fs::write(&tmp, if stop { "stop" } else { "savepoint" })?;
    let req = requests.join(format!("{name}.request"));
    std::fs::rename(&tmp, &req)?;
    let done = requests.join(format!("{name}.done"));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            return match text.split_once(' ') {
                Some(("ok", p)) => Ok(PathBuf::from(p)),
                Some((_, e)) => Err(anyhow::anyhow!("{e}")),
                None => Err(anyhow::anyhow!("malformed answer {text:?}")),
            };
        }
        if !alive() && !done.exists() {
            let _ = std::fs::remove_file(&req);
            anyhow::bail!("the job ended before the savepoint completed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&req);
    anyhow::bail!(
        "no answer within {} s: is the job running with checkpoints in {}?",
        timeout.as_secs(),
        dir.display()
    )
}

/// A restart strategy with its history.
pub(crate) struct RestartPolicy {
    spec: RestartSpec,
    restarts: u32,
    failures: VecDeque<Instant>,
}

impl RestartPolicy {
    pub fn new(spec: RestartSpec) -> Self {
        RestartPolicy {
            spec,
            restarts: 0,
            failures: VecDeque::new(),
        }
    }

    /// After a failure: the delay before restarting, or none to fail the job.
    pub fn on_failure(&mut self) -> Option<Duration> {
        let now = Instant::now();
        match &self.spec {
            RestartSpec::None => None,
            RestartSpec::FixedDelay { attempts, delay_ms } => (self.restarts < *attempts).then(|| {
                self.restarts += 1;
                Duration::from_millis(*delay_ms)
            }),
            RestartSpec::FailureRate {
                max_failures,
                interval_ms,
                delay_ms,
            } => {
                let window = Duration::from_millis(*interval_ms);
                self.failures.push_back(now);
                while self.failures.front().is_some_and(|t| now.duration_since(*t) > window) {
                    self.failures.pop_front();
                }
                (self.failures.len() as u32 <= *max_failures).then(|| {
                    self.restarts += 1;
                    Duration::from_millis(*delay_ms)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_strategies_count_failures() {
        let mut fixed = RestartPolicy::new(RestartSpec::FixedDelay { attempts: 2, delay_ms: 5 });
        assert_eq!(fixed.on_failure(), Some(Duration::from_millis(5)));
        assert!(fixed.on_failure().is_some());
        assert_eq!(fixed.on_failure(), None);
        let mut rate = RestartPolicy::new(RestartSpec::FailureRate {
            max_failures: 2,
            interval_ms: 60_000,
            delay_ms: 0,
        });
        assert!(rate.on_failure().is_some());
        assert!(rate.on_failure().is_some());
        assert_eq!(rate.on_failure(), None);
        let mut none = RestartPolicy::new(RestartSpec::None);
        assert_eq!(none.on_failure(), None);
    }
}
