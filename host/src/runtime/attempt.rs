//! The tasks of one execution attempt that run in this process: their
//! threads, the checkpoint writer, the final states of finished tasks, and
//! the coordinator's commands carried out on them.
//!
//! ```text
//! descriptors ─► build every task (fails before any thread starts)
//!             ─► one thread per task ─► TaskEvent::{Finished, Failed}
//! writer thread ─► TaskEvent::{Acked, Declined}
//! commands in: trigger source t · write final state of t · notify n
//!              (commit the sinks' sealed files) · cancel
//! ```
//!
//! In `sluice run` and `sluice serve` every task of a job is here; on a
//! TaskManager, the tasks deployed to its slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::build::{AttemptCheckpoints, ComponentResolver, TaskEnvironment, build_task, commit_sink, instance_limits};
use super::shuffle::ShuffleEnvironment;
use super::task::{Finals, TaskExit};
use crate::checkpoint::coordinator::{Ack, Decline};
use crate::checkpoint::writer::{WriteJob, Written, spawn_writer};
use crate::checkpoint::{Barrier, CheckpointStorage, RestoreLimits};
use crate::job::JobError;
use crate::job::plan::{ExecutionPlan, RestoreHandles};
use crate::operator::OperatorMetrics;
use crate::operator::TaskError;
use crate::tenancy::{GuestLogBuffer, StateBudget, TenantMeter};
use crate::time::Clock;
use crate::wasm::GuestEnv;

/// What the tasks of an attempt report.
#[derive(Debug)]
pub enum TaskEvent {
    /// A task's snapshot is written.
    Acked(Ack),
    /// A task's snapshot could not be written.
    Declined(Decline),
    /// A task's input ended and its operators finished; with checkpoints,
    /// the last barrier it saw.
    Finished {
        /// The task.
        task: usize,
        /// Its last barrier.
        last_barrier: Option<u64>,
    },
    /// A task failed.
    Failed {
        /// The task.
        task: usize,
        /// Why.
        error: TaskError,
    },
}

/// Where an attempt's events go, with the attempt number.
pub type EventSink = Arc<dyn Fn(u32, TaskEvent) + Send + Sync>;

/// What the tasks of an attempt in this process are built with.
pub struct AttemptContext<'a> {
    /// The job's plan.
    pub plan: &'a Arc<ExecutionPlan>,
    /// The attempt.
    pub attempt: u32,
    /// The tasks to run here.
    pub tasks: &'a [usize],
    /// Components by digest.
    pub components: &'a dyn ComponentResolver,
    /// Channels.
    pub shuffle: &'a dyn ShuffleEnvironment,
    /// Processing time.
    pub clock: Arc<dyn Clock>,
    /// The tenant's meter.
    pub meter: Option<Arc<TenantMeter>>,
    /// The job's guest log.
    pub logs: Option<Arc<GuestLogBuffer>>,
    /// Counters by node.
    pub metrics: &'a [Arc<OperatorMetrics>],
    /// Where keyed state is counted.
    pub state_budget: StateBudget,
    /// What to restore.
    pub restore: Option<&'a RestoreHandles>,
    /// Checkpoint storage, when the job is checkpointed.
    pub storage: Option<Arc<CheckpointStorage>>,
    /// Where events go.
    pub events: EventSink,
}

/// The running tasks of one attempt in this process.
pub struct RunningAttempt {
    attempt: u32,
    plan: Arc<ExecutionPlan>,
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    triggers: HashMap<usize, Sender<Barrier>>,
    writer: Option<Sender<WriteJob>>,
    finals: Finals,
    completed: Arc<AtomicU64>,
    hosted: Vec<usize>,
}

impl RunningAttempt {
    /// Build every task of `ctx.tasks`, then start them. Fails before any
    /// task runs if one cannot be built.
    pub fn start(ctx: AttemptContext) -> Result<Self, JobError> {
        let finals: Finals = Arc::new(Mutex::new(HashMap::new()));
        let completed = Arc::new(AtomicU64::new(ctx.restore.map_or(0, |r| r.checkpoint)));
        let checkpoints = match &ctx.storage {
            Some(storage) if ctx.plan.checkpoints.is_some() => {
                let events = ctx.events.clone();
                let writer = spawn_writer(storage.clone(), move |w| {
                    match w {
                        Written::Acked(attempt, ack) => events(attempt, TaskEvent::Acked(ack)),
                        Written::Declined(attempt, d) => events(attempt, TaskEvent::Declined(d)),
                    }
                    true
                })
                .map_err(|e| JobError::Failed(TaskError::Internal(format!("spawning the checkpoint writer: {e}"))))?;
                Some(AttemptCheckpoints {
                    writer,
                    finals: finals.clone(),
                    completed: completed.clone(),
                })
            }
            _ => None,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let loops = super::iteration::loops_of(ctx.plan, &ctx.state_budget);
        let env = TaskEnvironment {
            plan: ctx.plan,
            attempt: ctx.attempt,
            components: ctx.components,
            shuffle: ctx.shuffle,
            clock: ctx.clock.clone(),
            guest: GuestEnv {
                limits: instance_limits(ctx.plan),
                clock: ctx.clock.clone(),
                meter: ctx.meter.clone(),
                logs: ctx.logs.clone(),
            },
            metrics: ctx.metrics,
            state_budget: ctx.state_budget.clone(),
            restore: ctx.restore,
            restore_limits: ctx.storage.as_ref().map_or_else(RestoreLimits::default, |s| *s.limits()),
            checkpoints: checkpoints.as_ref(),
            cancel: cancel.clone(),
            loops: &loops,
        };
        let mut built = Vec::new();
        let mut triggers = HashMap::new();
        for &t in ctx.tasks {
            let Some(desc) = ctx.plan.tasks.get(t) else {
                return Err(JobError::Failed(TaskError::Internal(format!("the plan has no task {t}"))));
            };
            let (task, trigger) = build_task(desc, &env)?;
            if let Some(tx) = trigger {
                triggers.insert(t, tx);
            }
            built.push((desc.name.clone(), task));
        }
        let mut threads = Vec::new();
        for (name, mut task) in built {
            let (events, task_cancel, attempt, index) = (ctx.events.clone(), cancel.clone(), ctx.attempt, task.index);
            let spawned = std::thread::Builder::new().name(name.clone()).spawn(move || {
                let span = tracing::info_span!("task", task = %name);
                let _g = span.enter();
                let exit = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run_to_end())).unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    TaskExit::Failed(TaskError::Internal(format!("a task panicked: {message}")))
                });
                drop(task);
                match exit {
                    TaskExit::Finished { last_barrier } => events(attempt, TaskEvent::Finished { task: index, last_barrier }),
                    TaskExit::Failed(error) => {
                        if !error.is_knock_on() {
                            tracing::error!(error = %error, "task failed");
                            task_cancel.store(true, Ordering::SeqCst);
                        }
                        events(attempt, TaskEvent::Failed { task: index, error });
                    }
                }
            });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    cancel.store(true, Ordering::SeqCst);
                    (ctx.events)(
                        ctx.attempt,
                        TaskEvent::Failed {
                            task: index,
                            error: TaskError::Internal(format!("spawning a task thread: {e}")),
                        },
                    );
                }
            }
        }
        Ok(RunningAttempt {
            attempt: ctx.attempt,
            plan: ctx.plan.clone(),
            threads,
            cancel,
            triggers,
            writer: checkpoints.map(|c| c.writer),
            finals,
            completed,
            hosted: ctx.tasks.to_vec(),
        })
    }

    /// The attempt number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The tasks run here.
    pub fn tasks(&self) -> &[usize] {
        &self.hosted
    }

    /// Source task `task` injects `barrier`.
    pub fn trigger(&self, task: usize, barrier: Barrier) {
        if let Some(tx) = self.triggers.get(&task) {
            let _ = tx.send(barrier);
        }
    }

    /// Finished task `task` writes its final state for `barrier`.
    pub fn write_final(&self, task: usize, barrier: Barrier) {
        let parts = self.finals.lock().unwrap_or_else(|p| p.into_inner()).get(&task).cloned();
        if let (Some(parts), Some(w)) = (parts, &self.writer) {
            let _ = w.send(WriteJob {
                attempt: self.attempt,
                barrier,
                task,
                parts,
            });
        }
    }

    /// Checkpoint `checkpoint` is complete: the sinks of the tasks hosted
    /// here commit what they sealed for it.
    pub fn notify(&self, checkpoint: u64, commits: &[(usize, String, Vec<String>)]) -> Result<(), TaskError> {
        for (task, sink, names) in commits {
            if self.hosted.contains(task) {
                commit_sink(&self.plan, sink, names)?;
            }
        }
        self.completed.fetch_max(checkpoint, Ordering::SeqCst);
        crate::connectors::nats_source::ack_finished();
        Ok(())
    }

    /// True once every task thread has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Ask every task to stop.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// Stop every task and wait for them (at most `timeout`; a task stuck in
    /// a guest call ends at the call's deadline). False if some did not end.
    pub fn shutdown(self, timeout: Duration) -> bool {
        self.cancel.store(true, Ordering::SeqCst);
        drop(self.triggers);
        drop(self.writer);
        let start = Instant::now();
        let mut all = true;
        for t in self.threads {
            while !t.is_finished() && start.elapsed() < timeout {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                all = false;
            }
        }
        all
    }
}
