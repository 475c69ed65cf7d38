//! The JobMaster of one job: deploys its attempts, runs its checkpoint
//! coordinator, and restarts the job from its latest checkpoint when a task
//! fails (or, in a cluster, a TaskManager is lost).
//!
//! ```text
//!  deploy attempt n ─► loop: task events (acks, declines, finished, failed)
//!                          ─► coordinator ─► commands ─► deployer
//!                      savepoint requests (mailbox) ─► coordinator
//!  all tasks finished ─► final checkpoint ─► finished
//!  a task failed      ─► cancel the attempt ─► restart strategy
//!                      ─► latest checkpoint ─► deploy attempt n+1
//! ```
//!
//! Where the tasks run is the [`Deployer`]'s business: threads of this
//! process ([`super::minicluster`]) or slots of TaskManagers.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::restart::RestartPolicy;
use crate::checkpoint::coordinator::{Command, Coordinator, CoordinatorEvent, SavepointReply};
use crate::checkpoint::{ExpectedState, requests};
use crate::job::JobError;
use crate::job::plan::{ExecutionPlan, RestoreHandles};
use crate::runtime::{EventSink, TaskError, TaskEvent};
use crate::time::Clock;

/// Failures a job remembers.
pub const MAX_EXCEPTIONS: usize = 10;

/// How long a loop of the JobMaster waits for an event.
const POLL: Duration = Duration::from_millis(10);

/// Runs a job's tasks somewhere.
pub trait Deployer: Send {
    /// Start every task of attempt `attempt`, restoring from `restore`;
    /// their events go to `events`.
    fn deploy(
        &mut self,
        plan: &Arc<ExecutionPlan>,
        attempt: u32,
        restore: Option<&RestoreHandles>,
        events: &EventSink,
    ) -> Result<(), JobError>;
    /// Carry out a command of the checkpoint coordinator.
    fn command(&mut self, command: &Command) -> Result<(), TaskError>;
    /// Stop the current attempt's tasks and wait for them.
    fn cancel(&mut self);
    /// A failure the deployer saw by itself (a lost TaskManager), if any.
    fn poll_failure(&mut self) -> Option<TaskError> {
        None
    }
    /// Wait until every task host has committed the output of `checkpoint`
    /// (the last one of a job, or a stop with savepoint): the job ends only
    /// once its output is visible. In-process commits happen in `command`.
    fn confirm_commits(&mut self, _checkpoint: u64) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Messages to a running job.
pub enum JobMessage {
    /// Take a savepoint (and stop the job after it with `stop`).
    Savepoint {
        /// Stop after it.
        stop: bool,
        /// Where the answer goes.
        reply: SavepointReply,
    },
}

/// How an attempt ended.
enum AttemptEnd {
    Finished,
    Stopped(PathBuf),
    Cancelled,
    Failed(TaskError),
    /// A failure no restart can mend.
    Fatal(TaskError),
}

/// Shared figures of a job, read by the API while it runs.
#[derive(Clone, Default)]
pub struct JobStatus {
    /// Restarts so far.
    pub restarts: Arc<AtomicU32>,
    /// True while the job waits to restart.
    pub restarting: Arc<AtomicBool>,
    /// The newest failures that restarted the job (oldest first, at most
    /// [`MAX_EXCEPTIONS`]), with the Unix time in ms they happened.
    pub exceptions: Arc<Mutex<VecDeque<(i64, String)>>>,
}

/// The JobMaster of one job.
pub struct JobMaster {
    /// The job.
    pub plan: Arc<ExecutionPlan>,
    /// Where its tasks run.
    pub deployer: Box<dyn Deployer>,
    /// Its checkpoint coordinator, when it is checkpointed.
    pub coordinator: Option<Coordinator>,
    /// Its restart strategy.
    pub policy: RestartPolicy,
    /// The checkpoint it started from.
    pub initial: Option<RestoreHandles>,
    /// What a checkpoint to restore after a failure must hold.
    pub expected: ExpectedState,
    /// Events of the tasks, with their attempt.
    pub events_rx: Receiver<(u32, TaskEvent)>,
    /// The sending side, handed to each deployment.
    pub events: EventSink,
    /// Savepoint requests.
    pub mailbox: Receiver<JobMessage>,
    /// Set to cancel the job.
    pub cancel: Arc<AtomicBool>,
    /// Figures for the API.
    pub status: JobStatus,
    /// A checkpoint directory polled for `sluice savepoint` request files.
    pub request_dir: Option<PathBuf>,
    /// Processing time (for exception timestamps).
    pub clock: Arc<dyn Clock>,
}

/// An event sink that forwards into `tx`.
pub fn channel_sink(tx: Sender<(u32, TaskEvent)>) -> EventSink {
    Arc::new(move |attempt, event| {
        let _ = tx.send((attempt, event));
    })
}

impl JobMaster {
    /// Run the job whose attempt 0 is deployed until it ends: the savepoint
    /// it stopped with, if it stopped with one.
    pub fn run(mut self) -> Result<Option<PathBuf>, JobError> {
        let mut attempt = 0;
        let mut started = Instant::now();
        let sources = self.sources();
        if let Some(c) = &mut self.coordinator {
            c.start_attempt(sources);
        }
        loop {
            let end = self.watch(attempt);
            self.deployer.cancel();
            if let Some(c) = &mut self.coordinator {
                c.end_attempt();
                // Aborts of the pending checkpoint need no delivery: the tasks are gone.
                c.take_commands();
            }
            let error = match end {
                AttemptEnd::Finished => return Ok(None),
                AttemptEnd::Stopped(path) => return Ok(Some(path)),
                AttemptEnd::Cancelled => return Err(JobError::Failed(TaskError::Cancelled)),
                AttemptEnd::Fatal(e) => return Err(JobError::Failed(e)),
                AttemptEnd::Failed(e) => e,
            };
            let delay = match &self.coordinator {
                Some(_) => self.policy.on_failure(),
                None => None,
            };
            let Some(mut delay) = delay else {
                return Err(JobError::Failed(error));
            };
            attempt += 1;
            {
                let mut ex = self.status.exceptions.lock().unwrap_or_else(|p| p.into_inner());
                if ex.len() == MAX_EXCEPTIONS {
                    ex.pop_front();
                }
                ex.push_back((self.clock.now_ms(), error.to_string()));
            }
            self.status.restarts.store(attempt, Ordering::Relaxed);
            self.status.restarting.store(true, Ordering::Relaxed);
            tracing::warn!(error = %error, restart = attempt, ran_ms = started.elapsed().as_millis() as u64,
                "job failed; restarting from the latest checkpoint in {} ms", delay.as_millis());
            loop {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if self.cancel.load(Ordering::SeqCst) {
                        return Err(JobError::Failed(TaskError::Cancelled));
                    }
                    self.answer_requests_while_down();
                    std::thread::sleep(POLL);
                }
                match self.redeploy(attempt) {
                    Ok(()) => break,
                    Err(e) => {
                        // No slots, or a TaskManager refused: that is a failure too.
                        tracing::warn!(error = %e, restart = attempt, "restart failed");
                        self.deployer.cancel();
                        let Some(next) = self.policy.on_failure() else {
                            return Err(e);
                        };
                        delay = next;
                        attempt += 1;
                        self.status.restarts.store(attempt, Ordering::Relaxed);
                    }
                }
            }
            started = Instant::now();
            self.status.restarting.store(false, Ordering::Relaxed);
        }
    }

    fn sources(&self) -> Vec<bool> {
        (0..self.plan.tasks.len()).map(|t| self.plan.is_source_task(t)).collect()
    }

    /// Deploy attempt `attempt` from the latest checkpoint.
    fn redeploy(&mut self, attempt: u32) -> Result<(), JobError> {
        let Some(coord) = &mut self.coordinator else {
            return Err(JobError::Failed(TaskError::Internal(
                "a job without checkpoints cannot restart".into(),
            )));
        };
        let restore = coord
            .storage
            .load_latest(coord.first_id, &self.expected)
            .map(|c| RestoreHandles::of(&c.path, &c.meta))
            .or_else(|| self.initial.clone());
        match &restore {
            Some(c) => tracing::info!(checkpoint = c.checkpoint, "restoring"),
            None => tracing::info!("no checkpoint yet; starting from the beginning"),
        }
        coord
            .completed
            .store(restore.as_ref().map_or(0, |c| c.checkpoint), Ordering::SeqCst);
        // Events of older attempts are dropped from here on.
        while self.events_rx.try_recv().is_ok() {}
        self.deployer.deploy(&self.plan, attempt, restore.as_ref(), &self.events)?;
        let sources = self.sources();
        if let Some(c) = &mut self.coordinator {
            c.start_attempt(sources);
        }
        Ok(())
    }

    /// A job that is restarting cannot take a savepoint: say so at once.
    fn answer_requests_while_down(&mut self) {
        while let Ok(JobMessage::Savepoint { reply, .. }) = self.mailbox.try_recv() {
            let _ = reply.send(Err("the job is restarting after a failure; try again when it runs".into()));
        }
    }

    /// Queue the savepoints asked for through the mailbox and request files.
    fn take_requests(&mut self, seen: &mut Vec<PathBuf>, last_poll: &mut Instant) {
        while let Ok(JobMessage::Savepoint { stop, reply }) = self.mailbox.try_recv() {
            match &mut self.coordinator {
                Some(c) => c.request_savepoint(stop, reply),
                None => {
                    let _ = reply.send(Err("the job has no `[checkpoints]`, so it cannot take savepoints".into()));
                }
            }
        }
        let (Some(dir), Some(c)) = (&self.request_dir, &mut self.coordinator) else {
            return;
        };
        if last_poll.elapsed() < Duration::from_millis(100) {
            return;
        }
        *last_poll = Instant::now();
        for (path, stop) in requests::poll(dir, seen) {
            let (tx, rx) = crossbeam_channel::bounded(1);
            c.request_savepoint(stop, tx);
            seen.push(path.clone());
            // Answer the file once the coordinator answers.
            let _ = std::thread::Builder::new().name("savepoint-request".into()).spawn(move || {
                let result = rx
                    .recv()
                    .unwrap_or_else(|_| Err("the job ended before the savepoint completed".into()));
                requests::respond(&path, result);
            });
        }
    }

    /// Run the attempt until it ends.
    fn watch(&mut self, attempt: u32) -> AttemptEnd {
        let tasks = self.plan.tasks.len();
        let mut ended = vec![false; tasks];
        let mut knock_on: Option<TaskError> = None;
        let mut finishing = false;
        let mut seen = Vec::new();
        let mut last_poll = Instant::now();
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return AttemptEnd::Cancelled;
            }
            if let Some(e) = self.deployer.poll_failure() {
                return AttemptEnd::Failed(e);
            }
            let mut event = None;
            let first = self.events_rx.recv_timeout(POLL).ok();
            for (a, e) in first.into_iter().chain(std::iter::from_fn(|| self.events_rx.try_recv().ok())) {
                if a != attempt {
                    continue;
                }
                match e {
                    TaskEvent::Failed { error, .. } if !error.is_knock_on() => return AttemptEnd::Failed(error),
                    TaskEvent::Failed { task, error } => {
                        if let Some(t) = ended.get_mut(task) {
                            *t = true;
                        }
                        knock_on.get_or_insert(error);
                    }
                    TaskEvent::Finished { task, last_barrier } => {
                        if let Some(t) = ended.get_mut(task) {
                            *t = true;
                        }
                        if let (Some(c), Some(lb)) = (&mut self.coordinator, last_barrier) {
                            c.on_finished(task, lb);
                        }
                    }
                    TaskEvent::Acked(ack) => {
                        if let Some(c) = &mut self.coordinator
                            && let Some(ev) = c.on_ack(ack)
                        {
                            event = Some(ev);
                        }
                    }
                    TaskEvent::Declined(d) => {
                        if let Some(c) = &mut self.coordinator {
                            c.on_decline(d);
                        }
                    }
                }
            }
            self.take_requests(&mut seen, &mut last_poll);
            let all_ended = ended.iter().all(|e| *e);
            if all_ended && let Some(e) = knock_on.take() {
                return AttemptEnd::Failed(e);
            }
            match &mut self.coordinator {
                Some(c) => {
                    if all_ended && !finishing {
                        finishing = true;
                        c.finish();
                    }
                    c.tick();
                    if let Some(e) = c.take_failure() {
                        return AttemptEnd::Failed(TaskError::Internal(e));
                    }
                    for cmd in c.take_commands() {
                        if let Err(e) = self.deployer.command(&cmd) {
                            return AttemptEnd::Failed(e);
                        }
                    }
                }
                None if all_ended => return AttemptEnd::Finished,
                None => {}
            }
            match event {
                Some(CoordinatorEvent::Stopped(path)) => {
                    let id = self.coordinator.as_ref().map_or(0, |c| c.completed.load(Ordering::SeqCst));
                    if let Err(e) = self.deployer.confirm_commits(id) {
                        return AttemptEnd::Fatal(TaskError::Internal(format!(
                            "the job stopped with savepoint {}, but committing its output failed (restoring the savepoint commits it): {e}",
                            path.display()
                        )));
                    }
                    return AttemptEnd::Stopped(path);
                }
                Some(CoordinatorEvent::Finished(id)) => {
                    // Not committed everywhere: restart from this last
                    // checkpoint; restoring it commits what it sealed.
                    if let Err(e) = self.deployer.confirm_commits(id) {
                        return AttemptEnd::Failed(e);
                    }
                    return AttemptEnd::Finished;
                }
                None => {}
            }
        }
    }
}
