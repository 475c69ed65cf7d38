//! Why a task fails.

use crate::connectors::ConnectorError;
use crate::wasm::GuestError;

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A guest trapped, ran out of time or memory, or misbehaved.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A UDF reported a record as failed and the job's policy is `fail`.
    #[error("operator `{operator}` subtask {subtask} failed on record {record:?}: {message}")]
    RecordFailed {
        /// The operator.
        operator: String,
        /// Its subtask.
        subtask: u32,
        /// A preview of the record's value.
        record: String,
        /// The UDF's message.
        message: String,
    },
    /// A record without a key on a hash edge.
    #[error(
        "a record without a key (value {value:?}) reached the hash-partitioned input of `{target}`: keyed operators need keyed records"
    )]
    MissingKey {
        /// The downstream node.
        target: String,
        /// A preview of the record's value.
        value: String,
    },
    /// A source or sink failed.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// A downstream task is gone (it failed).
    #[error("downstream `{0}` is gone")]
    DownstreamClosed(String),
    /// An upstream task is gone (it failed).
    #[error("an upstream task is gone")]
    UpstreamClosed,
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
    /// Batch mode: an intermediate result (a spill file, a sorted run)
    /// could not be written or read.
    #[error("intermediate results: {0}")]
    Exchange(String),
    /// A bug in the host.
    #[error("internal error: {0}")]
    Internal(String),
    /// A task in another process failed (the message is its error).
    #[error("{0}")]
    Remote(String),
}

impl TaskError {
    /// True for errors that are only a consequence of another task's failure.
    pub fn is_knock_on(&self) -> bool {
        matches!(
            self,
            TaskError::DownstreamClosed(_) | TaskError::UpstreamClosed | TaskError::Cancelled
        )
    }
}
