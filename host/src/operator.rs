//! Operators: what a task runs on each batch. User operators wrap a guest
//! instance (stateless, keyed process, window function); the host computes
//! windows and joins; sinks are operators with no output; a watermark
//! assigner generates event time. A task chains them ([`crate::runtime`]).
//!
//! ```text
//! Operator::process(input, batch, out: &mut dyn Emit) ─► out.emit(batch) ─► next operator | edges
//!          on_watermark · on_processing_time · finish · snapshot · restore
//! ```

use std::sync::Arc;

use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot};
use crate::types::RecordBatch;

mod error;
pub mod join;
mod keyed;
mod metrics;
mod outputs;
mod sink;
mod stateless;
mod watermarks;
pub mod window;

pub use error::TaskError;
pub(crate) use keyed::KeyedOperator;
pub use metrics::{MetricsSample, OperatorMetrics, SubtaskSample};
pub(crate) use outputs::{GuestOutputs, keyed_restore, keyed_snapshot, preview};
pub(crate) use sink::SinkOperator;
pub(crate) use stateless::StatelessOperator;
pub(crate) use watermarks::WatermarkAssigner;
pub(crate) use window::{WindowFunction, WindowOperator};

/// Where an operator's output goes: the next operator of the chain, or the
/// task's output edges.
pub trait Emit {
    /// Pass a batch on.
    fn emit(&mut self, batch: RecordBatch) -> Result<(), TaskError>;
    /// Pass a batch to the `late` side output (dropped when nothing reads it).
    fn emit_late(&mut self, batch: RecordBatch) -> Result<(), TaskError>;
    /// True when an edge reads the `late` side output.
    fn has_late_output(&self) -> bool;
    /// Pass the watermark on, after everything emitted before it.
    fn watermark(&mut self, watermark: i64) -> Result<(), TaskError>;
}

/// One operator of a chain.
///
/// `process` is called once per input batch, in order; `on_watermark` when
/// the subtask's watermark advances (the default passes it on);
/// `on_processing_time` now and then with the clock's time; `finish` once,
/// after the last batch of every input, and may emit final output.
pub trait Operator: Send {
    /// Process one batch from input `input` (0, or 1 for the second input of
    /// a two-input operator).
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError>;
    /// The watermark advanced: fire what is due, then pass it on.
    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        out.watermark(watermark)
    }
    /// Processing time is now `now` (ms).
    fn on_processing_time(&mut self, _now: i64, _out: &mut dyn Emit) -> Result<(), TaskError> {
        Ok(())
    }
    /// All input has ended.
    fn finish(&mut self, _out: &mut dyn Emit) -> Result<(), TaskError> {
        Ok(())
    }
    /// Batch mode: every record of the keys seen since the last call has
    /// arrived (the input is sorted by key). Fire what they have pending as
    /// at the end of input, then drop their state, so a key's state lives
    /// only while its group is processed. Watermarks are not passed on.
    fn end_keys(&mut self, _out: &mut dyn Emit) -> Result<(), TaskError> {
        Ok(())
    }
    /// Copy the operator's state at checkpoint barrier `checkpoint` (or,
    /// with `last`, after the end of input); none when it has no state.
    fn snapshot(&mut self, _checkpoint: u64, _last: bool) -> Result<Option<OperatorSnapshot>, TaskError> {
        Ok(None)
    }
    /// Take over the key groups this subtask owns from the snapshots of
    /// every subtask of the operator in a restored checkpoint.
    fn restore(&mut self, _snapshots: &[Arc<DecodedSnapshot>]) -> Result<(), TaskError> {
        Ok(())
    }
}
