//! What user operators share: the job's policy for failed records, the
//! output of a guest call, and the snapshot of keyed state and timers.

use std::sync::Arc;

use sluice_guest::batch::Batch;

use super::{Emit, OperatorMetrics, TaskError};
use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot, SnapshotWriter};
use crate::spec::ErrorPolicy;
use crate::types::RecordBatch;
use crate::wasm::{GuestOutput, RecordError};

/// The snapshot payload of keyed state and timers.
pub(crate) fn keyed_snapshot(
    state: &crate::state::HeapKeyedState,
    timers: &crate::time::TimerService,
    max_parallelism: u32,
) -> OperatorSnapshot {
    let mut w = SnapshotWriter::new();
    w.keyed_state(state);
    w.timers(timers, max_parallelism);
    OperatorSnapshot {
        payload: Some(w.finish()),
        sink: None,
    }
}

/// Restore keyed state and timers of this subtask's key groups.
pub(crate) fn keyed_restore(
    snapshots: &[Arc<DecodedSnapshot>],
    state: &mut crate::state::HeapKeyedState,
    timers: &mut crate::time::TimerService,
    outputs: &GuestOutputs,
) -> Result<(), TaskError> {
    let range = state.key_group_range();
    crate::checkpoint::format::restore_keyed(snapshots, range, state, Some(timers))
        .map_err(|e| outputs.internal(format!("restoring state: {e}")))
}

/// Shared handling of a guest's output: record errors by policy, then emit.
pub(crate) struct GuestOutputs {
    pub name: String,
    pub subtask: u32,
    pub policy: ErrorPolicy,
    pub metrics: Arc<OperatorMetrics>,
}

impl GuestOutputs {
    pub(crate) fn new(name: &str, subtask: u32, policy: ErrorPolicy, metrics: Arc<OperatorMetrics>) -> Self {
        GuestOutputs {
            name: name.to_owned(),
            subtask,
            policy,
            metrics,
        }
    }

    /// A task error naming this operator.
    pub(crate) fn internal(&self, message: impl std::fmt::Display) -> TaskError {
        TaskError::Internal(format!("operator `{}` subtask {}: {message}", self.name, self.subtask))
    }

    pub(crate) fn handle(&self, out: GuestOutput, input: &[u8], emit: &mut dyn Emit) -> Result<(), TaskError> {
        self.handle_errors(&out.errors, input)?;
        emit.emit(RecordBatch {
            bytes: out.records,
            len: out.count,
        })
    }

    /// Apply the job's error policy to failed records of `input`.
    pub(crate) fn handle_errors(&self, errors: &[RecordError], input: &[u8]) -> Result<(), TaskError> {
        if errors.is_empty() {
            return Ok(());
        }
        let record = |i: u32| {
            Batch::new(input)
                .iter()
                .nth(i as usize)
                .and_then(Result::ok)
                .map(|r| preview(r.value))
                .unwrap_or_default()
        };
        match self.policy {
            ErrorPolicy::Fail => {
                let e = &errors[0];
                Err(TaskError::RecordFailed {
                    operator: self.name.clone(),
                    subtask: self.subtask,
                    record: record(e.index),
                    message: e.message.clone(),
                })
            }
            ErrorPolicy::Skip => {
                self.metrics.add_failed(errors.len() as u64);
                for e in errors.iter().take(3) {
                    tracing::warn!(operator = %self.name, subtask = self.subtask, record = %record(e.index), error = %e.message, "record skipped");
                }
                Ok(())
            }
        }
    }
}

/// A short, printable view of a record value for error messages.
pub(crate) fn preview(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(&value[..value.len().min(80)]).into_owned();
    if value.len() > 80 { format!("{text}…") } else { text }
}
