//! Checkpoints: barriers, snapshots, storage, the coordinator, recovery and
//! savepoints.
//!
//! ```text
//! coordinator (JobMaster) ──trigger n──► source tasks: record position, send barrier n in-band
//! task: barrier n on every input (aligned in exactly-once mode)
//!       ─► copy state (SnapshotWriter) ─► forward barrier n ─► keep going
//! writer thread (in the task's process): compress, checksum, write to the
//!       store ─► ack n with handles (file, size, sha256)
//! coordinator: all acks ─► _metadata.json (last, atomic) ─► notify n:
//!       each sink subtask commits the output it sealed for n
//! ```
//!
//! A task that has finished (its input ended) keeps its final state in its
//! process; the coordinator asks for it at every later checkpoint, and
//! takes a last checkpoint when every task has finished, so a bounded job's
//! output is committed exactly once too. The format is described in
//! `docs/checkpoints.md`; where the bytes live is a [`CheckpointStore`].

pub mod coordinator;
pub mod format;
pub mod object;
pub mod requests;
pub mod storage;
pub mod store;
pub(crate) mod writer;

pub use format::{DecodedSnapshot, SnapshotWriter};
pub use storage::{
    CheckpointError, CheckpointStorage, ExpectedState, LoadedCheckpoint, Metadata, RestoreLimits, StateFile, load_path, read_operator_state,
};
pub use store::{CheckpointStore, DirStore, open_store, resolve_location};

pub use crate::types::{Barrier, BarrierKind};

/// The storage directory of the checkpoint of `barrier`.
pub fn barrier_dir(barrier: &Barrier) -> String {
    match barrier.kind {
        BarrierKind::Checkpoint => storage::checkpoint_dir(barrier.id),
        BarrierKind::Savepoint { .. } => storage::savepoint_dir(barrier.id),
    }
}

/// The state of one operator at a barrier, copied and not yet written.
#[derive(Debug, Clone, Default)]
pub struct OperatorSnapshot {
    /// The uncompressed snapshot payload, if the operator has state.
    pub payload: Option<Vec<u8>>,
    /// For a transactional sink: sealed files the checkpoint must commit.
    pub sink: Option<Vec<String>>,
}

/// The state of one operator subtask at a barrier.
#[derive(Debug, Clone)]
pub struct NodeSnapshot {
    /// The operator's name.
    pub node: String,
    /// The subtask.
    pub subtask: u32,
    /// Its state.
    pub state: OperatorSnapshot,
}
