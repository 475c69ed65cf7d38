//! Sources and sinks.
//!
//! A source subtask produces batches until its bounded input ends; a sink
//! subtask writes batches and flushes at the end. Both report failures with
//! the file, line and reason.

mod file_source;
pub mod generator;
mod json_sink;

use std::path::PathBuf;

pub use file_source::{FileOptions, FileSource};
pub use generator::Generator;
pub use json_sink::JsonLinesSink;

use crate::runtime::RecordBatch;

/// Why a connector failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// An I/O error on a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line that does not parse.
    #[error("{path} line {line}: {message}")]
    BadRecord {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// Writing to standard output failed.
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
}

/// One subtask of a source.
pub trait SourceReader: Send {
    /// The next batch of at most `max_records`, or `None` at the end. An
    /// unbounded source with nothing to read right now returns an empty batch.
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError>;
}

/// One subtask of a sink.
pub trait SinkWriter: Send {
    /// Write a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;
    /// Make what was written visible (called now and then while running).
    fn flush(&mut self) -> Result<(), ConnectorError>;
    /// Flush everything; called once at the end.
    fn finish(&mut self) -> Result<(), ConnectorError>;
}
