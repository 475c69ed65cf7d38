//! Operators: what a task runs on each batch. User operators wrap a guest
//! instance; sinks are operators with no output.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_guest::batch::{Batch, BatchWriter, RecordRef};
use xxhash_rust::xxh3::Xxh3Builder;

use super::channel::RecordBatch;
use super::executor::{OperatorMetrics, TaskError};
use super::partition::preview;
use crate::connectors::SinkWriter;
use crate::job::ErrorPolicy;
use crate::state::KeyGroup;
use crate::wasm::{GuestInstance, GuestOutput};

/// Where an operator's output goes: the next operator of the chain, or the
/// task's output edges.
pub trait Emit {
    /// Pass a batch on.
    fn emit(&mut self, batch: RecordBatch) -> Result<(), TaskError>;
}

/// One operator of a chain.
///
/// `process` is called once per input batch, in order; `finish` once, after
/// the last batch of every input, and may emit final output.
pub trait Operator: Send {
    /// Process one batch.
    fn process(&mut self, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError>;
    /// All input has ended.
    fn finish(&mut self, _out: &mut dyn Emit) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Shared handling of a guest's output: record errors by policy, then emit.
struct GuestOutputs {
    name: String,
    subtask: u32,
    policy: ErrorPolicy,
    metrics: Arc<OperatorMetrics>,
}

impl GuestOutputs {
    fn handle(&self, out: GuestOutput, input: &[u8], emit: &mut dyn Emit) -> Result<(), TaskError> {
        if !out.errors.is_empty() {
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
                    let e = &out.errors[0];
                    return Err(TaskError::RecordFailed {
                        operator: self.name.clone(),
                        subtask: self.subtask,
                        record: record(e.index),
                        message: e.message.clone(),
                    });
                }
                ErrorPolicy::Skip => {
                    self.metrics.add_failed(out.errors.len() as u64);
                    for e in out.errors.iter().take(3) {
                        tracing::warn!(operator = %self.name, subtask = self.subtask, record = %record(e.index), error = %e.message, "record skipped");
                    }
                }
            }
        }
        emit.emit(RecordBatch {
            bytes: out.records,
            len: out.count,
        })
    }
}

/// A stateless user operator (map, filter, flat-map).
pub(crate) struct StatelessOperator {
    guest: GuestInstance,
    outputs: GuestOutputs,
}

impl StatelessOperator {
    pub fn new(guest: GuestInstance, name: &str, subtask: u32, policy: ErrorPolicy, metrics: Arc<OperatorMetrics>) -> Self {
        StatelessOperator {
            guest,
            outputs: GuestOutputs {
                name: name.to_owned(),
                subtask,
                policy,
                metrics,
            },
        }
    }
}

impl Operator for StatelessOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        let result = self.guest.process(&batch.bytes)?;
        self.outputs.handle(result, &batch.bytes, out)
    }
}

/// A keyed user operator: groups each batch into runs of one key (keeping
/// each key's arrival order) and calls the guest once per batch.
pub(crate) struct KeyedOperator {
    guest: GuestInstance,
    outputs: GuestOutputs,
    max_parallelism: u32,
    runs: Vec<Vec<RecordRefIdx>>,
}

/// A record's position in the input batch.
type RecordRefIdx = u32;

impl KeyedOperator {
    pub fn new(
        guest: GuestInstance,
        name: &str,
        subtask: u32,
        policy: ErrorPolicy,
        metrics: Arc<OperatorMetrics>,
        max_parallelism: u32,
    ) -> Self {
        KeyedOperator {
            guest,
            outputs: GuestOutputs {
                name: name.to_owned(),
                subtask,
                policy,
                metrics,
            },
            max_parallelism,
            runs: Vec::new(),
        }
    }
}

impl Operator for KeyedOperator {
    fn process(&mut self, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        let records: Vec<RecordRef<'_>> = batch.records().collect();
        let mut run_of: HashMap<&[u8], u32, Xxh3Builder> = HashMap::with_capacity_and_hasher(records.len(), Xxh3Builder::new());
        let mut used = 0;
        for (i, r) in records.iter().enumerate() {
            let Some(key) = r.key else {
                return Err(TaskError::MissingKey {
                    target: self.outputs.name.clone(),
                    value: preview(r.value),
                });
            };
            let next = used as u32;
            let run = *run_of.entry(key).or_insert(next);
            if run == next {
                if self.runs.len() <= used {
                    self.runs.push(Vec::new());
                }
                self.runs[used].clear();
                used += 1;
            }
            self.runs[run as usize].push(i as u32);
        }
        let mut packed = BatchWriter::with_capacity(batch.bytes.len());
        let Some(keys) = self.guest.runs_mut() else {
            return Err(TaskError::Internal("keyed operator without keyed state".into()));
        };
        keys.clear();
        for run in &self.runs[..used] {
            let first = &records[run[0] as usize];
            let key = first.key.unwrap_or_default();
            keys.push(key, KeyGroup::of(key, self.max_parallelism));
            for &i in run {
                packed.push_ref(&records[i as usize]);
            }
        }
        let packed = packed.finish();
        let result = self.guest.process_runs(&packed)?;
        self.outputs.handle(result, &packed, out)
    }
}

/// A sink at the end of a chain.
pub(crate) struct SinkOperator {
    pub writer: Box<dyn SinkWriter>,
}

impl Operator for SinkOperator {
    fn process(&mut self, batch: RecordBatch, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.writer.write(&batch).map_err(TaskError::Connector)
    }

    fn finish(&mut self, _out: &mut dyn Emit) -> Result<(), TaskError> {
        self.writer.finish().map_err(TaskError::Connector)
    }
}
