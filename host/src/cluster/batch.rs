//! The scheduler of a batch job (Flink's batch scheduling with region
//! failover): a task starts once every task writing its inputs has
//! finished; their results are complete spill files ([`crate::batch`]).
//!
//! ```text
//!  ready = waiting tasks whose producers are all finished ─► start each
//!  Finished t ─► its spill files are complete ─► its consumers become ready
//!  Failed t   ─► restart strategy ─► run t again over the same input files
//!                (nothing before it runs again; nothing after it has started)
//!  all finished ─► the job is finished; the spill directory is removed
//! ```
//!
//! Every task is its own pipelined region here: chains are fused into
//! tasks, and every exchange between tasks is blocking.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::jobmaster::{JobMessage, JobStatus, MAX_EXCEPTIONS, channel_sink};
use super::minicluster::{JobHandle, PreparedJob, RunOptions};
use super::restart::RestartPolicy;
use crate::batch::BlockingShuffle;
use crate::job::JobError;
use crate::job::plan::ExecutionPlan;
use crate::runtime::{AttemptContext, OperatorMetrics, RunningAttempt, TaskError, TaskEvent};
use crate::tenancy::StateBudget;
use crate::wasm::LoadedComponent;

/// How long the scheduler waits for an event before it looks at the
/// cancel flag again.
const POLL: Duration = Duration::from_millis(20);

/// Where a task is.
enum TaskState {
    Waiting,
    Running(RunningAttempt),
    Finished,
}

/// Runs one batch job in this process.
struct BatchScheduler {
    plan: Arc<ExecutionPlan>,
    components: HashMap<String, Arc<LoadedComponent>>,
    options: RunOptions,
    metrics: Vec<Arc<OperatorMetrics>>,
    state_budget: StateBudget,
    policy: RestartPolicy,
    status: JobStatus,
    cancel: Arc<AtomicBool>,
    mailbox: Receiver<JobMessage>,
    dir: PathBuf,
}

/// Start a prepared batch job in this process.
pub(crate) fn launch(p: PreparedJob, options: RunOptions, state_budget: StateBudget) -> Result<JobHandle, JobError> {
    if p.restore.is_some() {
        return Err(JobError::Restore(
            "a batch job does not restore from checkpoints or savepoints: it runs its bounded input from the start".into(),
        ));
    }
    let root = p.plan.batch.spill_dir.clone().unwrap_or_else(std::env::temp_dir);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let job: String = p
        .plan
        .job
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect();
    let dir = root.join(format!("sluice-batch-{job}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| JobError::Failed(TaskError::Exchange(format!("creating the spill directory {}: {e}", dir.display()))))?;
    let (mailbox_tx, mailbox) = crossbeam_channel::unbounded();
    let status = JobStatus::default();
    let cancel = Arc::new(AtomicBool::new(false));
    let scheduler = BatchScheduler {
        plan: p.plan.clone(),
        components: p.components,
        options,
        metrics: p.metrics.clone(),
        state_budget,
        policy: p.policy,
        status: status.clone(),
        cancel: cancel.clone(),
        mailbox,
        dir,
    };
    let name = format!("{}-batch", p.plan.job);
    JobHandle::spawn_with(&name, move || scheduler.run(), cancel, status, p.metrics, p.stats, mailbox_tx)
}

impl BatchScheduler {
    fn run(self) -> Result<Option<PathBuf>, JobError> {
        let shuffle = BlockingShuffle::new(
            &self.dir,
            self.plan.batch.sort_memory_bytes.min(usize::MAX as u64) as usize,
            self.plan.batch_size,
        );
        let dir = self.dir.clone();
        let result = self.schedule(&shuffle);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), "removing the spill directory: {e}");
        }
        result.map(|()| None)
    }

    fn log(&self, level: &'static str, message: String) {
        match level {
            "warn" => tracing::warn!(job = %self.plan.job, "{message}"),
            _ => tracing::info!(job = %self.plan.job, "{message}"),
        }
        if let Some(logs) = &self.options.logs {
            logs.host(level, &self.plan.job, 0, message);
        }
    }

    fn start(
        &self,
        task: usize,
        attempt: u32,
        shuffle: &BlockingShuffle,
        events: &crate::runtime::EventSink,
    ) -> Result<RunningAttempt, JobError> {
        RunningAttempt::start(AttemptContext {
            plan: &self.plan,
            attempt,
            tasks: &[task],
            components: &self.components,
            shuffle,
            clock: self.options.clock.clone(),
            meter: self.options.meter.clone(),
            logs: self.options.logs.clone(),
            metrics: &self.metrics,
            state_budget: self.state_budget.clone(),
            restore: None,
            storage: None,
            events: events.clone(),
        })
    }

    fn schedule(mut self, shuffle: &BlockingShuffle) -> Result<(), JobError> {
        let tasks = &self.plan.tasks;
        let producers: Vec<Vec<usize>> = tasks.iter().map(|t| t.inputs.iter().map(|i| i.producer).collect()).collect();
        let mut state: Vec<TaskState> = tasks.iter().map(|_| TaskState::Waiting).collect();
        let mut attempts = vec![0u32; tasks.len()];
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let events = channel_sink(events_tx);
        let started = Instant::now();
        let result = loop {
            while let Ok(JobMessage::Savepoint { reply, .. }) = self.mailbox.try_recv() {
                let _ = reply.send(Err("a batch job takes no savepoints: it has no checkpoints".into()));
            }
            if self.cancel.load(Ordering::SeqCst) {
                break Err(JobError::Failed(TaskError::Cancelled));
            }
            let mut start_failed = None;
            for t in 0..tasks.len() {
                let ready = matches!(state[t], TaskState::Waiting) && producers[t].iter().all(|&p| matches!(state[p], TaskState::Finished));
                if ready {
                    match self.start(t, attempts[t], shuffle, &events) {
                        Ok(r) => state[t] = TaskState::Running(r),
                        Err(e) => {
                            start_failed = Some(e);
                            break;
                        }
                    }
                }
            }
            if let Some(e) = start_failed {
                break Err(e);
            }
            if state.iter().all(|s| matches!(s, TaskState::Finished)) {
                break Ok(());
            }
            let (attempt, event) = match events_rx.recv_timeout(POLL) {
                Ok(e) => e,
                Err(_) => continue,
            };
            match event {
                TaskEvent::Finished { task, .. } if attempt == attempts[task] => {
                    if let TaskState::Running(r) = std::mem::replace(&mut state[task], TaskState::Finished) {
                        r.shutdown(Duration::from_secs(10));
                    }
                }
                TaskEvent::Failed { task, error } if attempt == attempts[task] => {
                    if let TaskState::Running(r) = std::mem::replace(&mut state[task], TaskState::Waiting) {
                        r.shutdown(Duration::from_secs(60));
                    }
                    let error = match (&error, shuffle.take_write_error(task)) {
                        (TaskError::DownstreamClosed(_), Some(message)) => TaskError::Exchange(message),
                        _ => error,
                    };
                    if matches!(error, TaskError::Cancelled) {
                        continue;
                    }
                    self.record(&error);
                    let Some(delay) = self.policy.on_failure() else {
                        break Err(JobError::Failed(error));
                    };
                    attempts[task] += 1;
                    let kept = state.iter().filter(|s| matches!(s, TaskState::Finished)).count();
                    self.log(
                        "warn",
                        format!(
                            "task {} failed ({error}); running it again (attempt {}) from its materialized inputs in {} ms; \
                             the {kept} finished tasks keep their results",
                            tasks[task].name,
                            attempts[task],
                            delay.as_millis()
                        ),
                    );
                    self.status.restarting.store(true, Ordering::Relaxed);
                    let until = Instant::now() + delay;
                    while Instant::now() < until && !self.cancel.load(Ordering::SeqCst) {
                        std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
                    }
                    self.status.restarting.store(false, Ordering::Relaxed);
                }
                _ => {}
            }
        };
        for s in state {
            if let TaskState::Running(r) = s {
                r.shutdown(Duration::from_secs(60));
            }
        }
        if result.is_ok() {
            let again: Vec<String> = attempts
                .iter()
                .enumerate()
                .filter(|(_, a)| **a > 0)
                .map(|(t, a)| format!("{} ({a}×)", tasks[t].name))
                .collect();
            self.log(
                "info",
                format!(
                    "batch job finished in {} ms: {} tasks; ran again: {}",
                    started.elapsed().as_millis(),
                    tasks.len(),
                    if again.is_empty() { "none".to_owned() } else { again.join(", ") }
                ),
            );
        }
        result
    }

    fn record(&self, error: &TaskError) {
        let mut ex = self.status.exceptions.lock().unwrap_or_else(|p| p.into_inner());
        if ex.len() == MAX_EXCEPTIONS {
            ex.pop_front();
        }
        ex.push_back((self.options.clock.now_ms(), error.to_string()));
        self.status.restarts.fetch_add(1, Ordering::Relaxed);
    }
}
