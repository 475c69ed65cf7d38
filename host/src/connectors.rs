//! Sources and sinks.
//!
//! A source subtask produces batches until its bounded input ends; a sink
//! subtask writes batches and flushes at the end. Both report failures with
//! the file, line and reason.

pub mod file_sink;
mod file_source;
pub mod generator;
mod json_sink;
pub mod kafka;
pub mod kafka_sink;
pub mod kafka_source;
pub mod nats_sink;
pub mod nats_source;
pub mod nexmark;
pub mod postgres_sink;
pub mod spool;

use std::path::PathBuf;

pub use self::nexmark::{NexmarkSettings, NexmarkSource};
pub use file_sink::TransactionalFileSink;
pub use file_source::{FileOptions, FileSource};
pub use generator::Generator;
pub use json_sink::JsonLinesSink;

use sluice_guest::batch::BatchWriter;

use crate::types::RecordBatch;

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
    /// A checkpointed position that does not fit the source.
    #[error("{source_name}: cannot resume from the checkpoint: {message}")]
    BadPosition {
        /// The source.
        source_name: String,
        /// Why.
        message: String,
    },
    /// A source's external system refused or failed (the message names the
    /// server and the cause).
    #[error("source `{source_name}`: {message}")]
    Source {
        /// The source.
        source_name: String,
        /// What happened.
        message: String,
    },
    /// A sink's external system refused or failed (the message names the
    /// server, the table and the cause).
    #[error("sink `{sink}`: {message}")]
    Sink {
        /// The sink.
        sink: String,
        /// What happened.
        message: String,
    },
    /// Writing to standard output failed.
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
}

/// Run `f` on a thread outside any async runtime: a blocking client starts
/// (and drops) its own runtime, which may not happen inside another.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> Option<T> {
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(f).join().ok())
    } else {
        Some(f())
    }
}

/// Two little-endian `u64`s: how sources encode their positions.
pub(crate) fn position_pair(position: &[u8]) -> Option<(u64, u64)> {
    let a = u64::from_le_bytes(position.get(..8)?.try_into().ok()?);
    let b = u64::from_le_bytes(position.get(8..16)?.try_into().ok()?);
    (position.len() == 16).then_some((a, b))
}

/// A source ends a batch once it holds this many bytes, whatever its
/// `batch_size`: batches of big records stay bounded in memory.
pub const SOURCE_BATCH_BYTES: usize = 16 << 20;

/// The record indexes one subtask of a generating source produces:
/// `subtask, subtask + parallelism, …` below `count`. Its position is
/// `[next, step]`, checked against the subtask's stride on resume.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Strided {
    source_name: &'static str,
    next: u64,
    step: u64,
    count: u64,
}

impl Strided {
    pub fn new(source_name: &'static str, subtask: u32, parallelism: u32, count: u64) -> Self {
        Strided {
            source_name,
            next: u64::from(subtask),
            step: u64::from(parallelism.max(1)),
            count,
        }
    }

    /// The next record's index.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// The distance between this subtask's records.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The next batch of at most `max_records` and about
    /// [`SOURCE_BATCH_BYTES`], `write` appending record `i` (reserving
    /// `bytes_per_record` for each, up to that size); none at the end.
    pub fn batch(
        &mut self,
        max_records: usize,
        bytes_per_record: usize,
        mut write: impl FnMut(u64, &mut BatchWriter),
    ) -> Option<RecordBatch> {
        let left = self.count.saturating_sub(self.next).div_ceil(self.step);
        // Room for the records this batch can take: all that are left, but no
        // more than fit in the byte bound (at least one).
        let fit = (SOURCE_BATCH_BYTES / bytes_per_record.max(1)).max(1);
        let records = (max_records as u64).min(left).min(fit as u64) as usize;
        let mut w = BatchWriter::with_capacity(records.saturating_mul(bytes_per_record));
        while w.len() < max_records && self.next < self.count && w.byte_len() < SOURCE_BATCH_BYTES {
            write(self.next, &mut w);
            self.next += self.step;
        }
        if w.is_empty() {
            return None;
        }
        let len = w.len();
        Some(RecordBatch { bytes: w.finish(), len })
    }

    pub fn position(&self) -> Vec<u8> {
        [self.next.to_le_bytes(), self.step.to_le_bytes()].concat()
    }

    /// Resume from a position [`Strided::position`] wrote.
    pub fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        let name = self.source_name;
        let bad = |message: String| ConnectorError::BadPosition {
            source_name: name.into(),
            message,
        };
        let Some((resume, saved_step)) = position_pair(position) else {
            return Err(bad(format!("a {name} position is 16 bytes, not {}", position.len())));
        };
        if saved_step != self.step || resume % self.step != self.next % self.step {
            return Err(bad(format!(
                "the checkpoint was taken with parallelism {saved_step}, the source now has {}",
                self.step
            )));
        }
        self.next = resume;
        Ok(())
    }
}

/// One subtask of a source.
pub trait SourceReader: Send {
    /// The next batch of at most `max_records`, or `None` at the end. An
    /// unbounded source with nothing to read right now returns an empty batch.
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError>;
    /// Where the source is: everything before it has been returned. Stored
    /// in checkpoints.
    fn position(&self) -> Vec<u8>;
    /// Continue from a position returned by [`SourceReader::position`].
    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError>;
    /// The position stored by checkpoint `checkpoint` (a source that acts
    /// once the checkpoint completes notes it here).
    fn snapshot_position(&mut self, _checkpoint: u64) -> Vec<u8> {
        self.position()
    }
    /// Whether every subtask restores from the positions of all subtasks
    /// (Flink's union list state): a source whose splits move between
    /// subtasks when the parallelism changes, as Kafka partitions do.
    fn union_positions(&self) -> bool {
        false
    }
    /// With [`SourceReader::union_positions`]: continue from the positions
    /// of every subtask of the checkpoint, taking the splits this subtask
    /// owns now.
    fn seek_union(&mut self, positions: &[&[u8]]) -> Result<(), ConnectorError> {
        match positions {
            [one] => self.seek(one),
            _ => Err(ConnectorError::BadPosition {
                source_name: "source".into(),
                message: format!("{} positions for one subtask", positions.len()),
            }),
        }
    }
    /// A source that tracks event time per split (Kafka partitions): the
    /// watermark to emit now, if it moved forward. Such a source has no
    /// watermark assigner after it.
    fn watermark(&mut self) -> Option<i64> {
        None
    }
    /// Whether this subtask has nothing to read at all (a Kafka subtask
    /// that owns no partition): idle, so it holds no watermark back, as
    /// Flink marks a reader without splits idle.
    fn idle(&self) -> bool {
        false
    }
    /// How far behind its input this subtask is, in records, when the
    /// source knows (Kafka: end offsets minus committed offsets).
    fn lag(&self) -> Option<u64> {
        None
    }
}

/// One subtask of a sink.
pub trait SinkWriter: Send {
    /// Write a batch.
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError>;
    /// Make what was written visible (called now and then while running).
    fn flush(&mut self) -> Result<(), ConnectorError>;
    /// Flush everything; called once at the end.
    fn finish(&mut self) -> Result<(), ConnectorError>;
    /// At a checkpoint barrier (or, with `last`, after the end of input):
    /// make what was written durable and return the names of sealed output
    /// files that the checkpoint must commit. A non-transactional sink just
    /// flushes.
    fn prepare_commit(&mut self, _checkpoint: u64, _last: bool) -> Result<Vec<String>, ConnectorError> {
        self.flush()?;
        Ok(Vec::new())
    }
}

/// A sink that drops every record (Flink's `blackhole` connector), so a
/// benchmark measures the pipeline, not the formatting and writing of output.
pub struct DiscardSink;

impl SinkWriter for DiscardSink {
    fn write(&mut self, _batch: &RecordBatch) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }
}
