//! The asynchronous part of every snapshot: a writer thread per attempt and
//! process compresses, checksums and writes each subtask's state files to
//! checkpoint storage, and reports the handles (an ack) or the failure (a
//! decline).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;

use super::coordinator::{Ack, Decline};
use super::format::encode_file;
use super::storage::{CheckpointError, CheckpointStorage, StateFile, state_file_name};
use super::{Barrier, NodeSnapshot};

/// Work for the writer thread: one task's snapshot at one barrier.
pub(crate) struct WriteJob {
    /// The attempt the task belongs to.
    pub attempt: u32,
    /// The barrier.
    pub barrier: Barrier,
    /// The task's index in the plan.
    pub task: usize,
    /// The copied state of its chain.
    pub parts: Arc<Vec<NodeSnapshot>>,
}

/// What writing a snapshot came to.
pub(crate) enum Written {
    /// The files are written: the task's ack.
    Acked(u32, Ack),
    /// Writing failed: the checkpoint must be aborted.
    Declined(u32, Decline),
}

/// Start the writer thread; `report` gets every outcome and returns false
/// once nobody listens. It ends when every sender is dropped.
pub(crate) fn spawn_writer(
    storage: Arc<CheckpointStorage>,
    report: impl Fn(Written) -> bool + Send + 'static,
) -> std::io::Result<Sender<WriteJob>> {
    let (tx, rx) = crossbeam_channel::unbounded::<WriteJob>();
    std::thread::Builder::new().name("checkpoint-writer".into()).spawn(move || {
        let delay = fault_delay();
        for job in rx {
            let mut files = Vec::new();
            let mut sinks = Vec::new();
            let failed = write_parts(&storage, &super::barrier_dir(&job.barrier), &job.parts, &mut files, &mut sinks)
                .err()
                .map(|e| e.to_string());
            if let Some(d) = delay {
                std::thread::sleep(d);
            }
            let outcome = match failed {
                Some(reason) => Written::Declined(
                    job.attempt,
                    Decline {
                        checkpoint: job.barrier.id,
                        reason,
                    },
                ),
                None => Written::Acked(
                    job.attempt,
                    Ack {
                        checkpoint: job.barrier.id,
                        task: job.task,
                        files,
                        sinks,
                    },
                ),
            };
            if !report(outcome) {
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
