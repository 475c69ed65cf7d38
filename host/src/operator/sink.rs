//! A sink at the end of a chain.

use std::time::{Duration, Instant};

use super::{Emit, Operator, TaskError};
use crate::checkpoint::OperatorSnapshot;
use crate::connectors::SinkWriter;
use crate::types::RecordBatch;

/// A sink at the end of a chain. Output is flushed at least every
/// [`SINK_FLUSH_INTERVAL`] while the job runs, and at the end.
pub(crate) struct SinkOperator {
    pub writer: Box<dyn SinkWriter>,
    pub last_flush: Instant,
}

/// Longest time written sink output stays in buffers.
const SINK_FLUSH_INTERVAL: Duration = Duration::from_millis(100);

impl SinkOperator {
    fn maybe_flush(&mut self) -> Result<(), TaskError> {
        if self.last_flush.elapsed() >= SINK_FLUSH_INTERVAL {
            self.last_flush = Instant::now();
            self.writer.flush()?;
        }
        Ok(())
    }
}

impl Operator for SinkOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.writer.write(&batch)?;
        self.maybe_flush()
    }

    fn on_watermark(&mut self, _watermark: i64, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.maybe_flush()
    }

    fn on_processing_time(&mut self, _now: i64, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.maybe_flush()
    }

    fn finish(&mut self, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.writer.finish().map_err(TaskError::Connector)
    }

    fn snapshot(&mut self, checkpoint: u64, last: bool) -> Result<Option<OperatorSnapshot>, TaskError> {
        let pending = self.writer.prepare_commit(checkpoint, last)?;
        self.last_flush = Instant::now();
        Ok(Some(OperatorSnapshot {
            payload: None,
            sink: Some(pending),
        }))
    }
}
