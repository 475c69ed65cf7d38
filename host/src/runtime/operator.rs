//! Operators: what a task runs on each batch. User operators wrap a guest
//! instance; sinks are operators with no output.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_guest::batch::{Batch, BatchWriter, RecordRef};

use super::channel::RecordBatch;
use super::error::TaskError;
use super::metrics::OperatorMetrics;
use super::partition::preview;
use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot, SnapshotWriter};
use crate::connectors::SinkWriter;
use crate::job::ErrorPolicy;
use crate::state::{KeyGroup, KeyHasher};
use crate::time::TimeDomain;
use crate::wasm::{GuestInstance, GuestOutput, RecordError};

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

/// A stateless user operator (map, filter, flat-map).
pub(crate) struct StatelessOperator {
    guest: GuestInstance,
    outputs: GuestOutputs,
}

impl StatelessOperator {
    pub fn new(guest: GuestInstance, outputs: GuestOutputs) -> Self {
        StatelessOperator { guest, outputs }
    }
}

impl Operator for StatelessOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
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
    pub fn new(guest: GuestInstance, outputs: GuestOutputs, max_parallelism: u32) -> Self {
        KeyedOperator {
            guest,
            outputs,
            max_parallelism,
            runs: Vec::new(),
        }
    }

    /// Fire every timer of `domain` due at `time`, in timestamp order,
    /// including timers the guest registers while they fire.
    fn fire_timers(&mut self, domain: TimeDomain, time: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        loop {
            let Some(scope) = self.guest.keyed_scope_mut() else {
                return Err(self.outputs.internal("keyed operator without keyed state"));
            };
            scope.runs.clear();
            let mut fired = Vec::new();
            while fired.len() < 1024 {
                let Some(t) = scope.timers.pop_due(domain, time) else { break };
                let group = KeyGroup::of(&t.key, self.max_parallelism);
                scope.runs.push(&t.key, group);
                fired.push((fired.len() as u32, domain, t.timestamp));
            }
            if fired.is_empty() {
                return Ok(());
            }
            let result = self.guest.on_timers(&fired)?;
            self.outputs.handle(result, &[], out)?;
        }
    }
}

impl Operator for KeyedOperator {
    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.guest.set_watermark(Some(watermark));
        self.fire_timers(TimeDomain::EventTime, watermark, out)?;
        out.watermark(watermark)
    }

    fn on_processing_time(&mut self, now: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.fire_timers(TimeDomain::ProcessingTime, now, out)
    }

    fn snapshot(&mut self, _checkpoint: u64, _last: bool) -> Result<Option<OperatorSnapshot>, TaskError> {
        let max = self.max_parallelism;
        match self.guest.keyed_scope_mut() {
            Some(scope) => Ok(Some(keyed_snapshot(&scope.backend, &scope.timers, max))),
            None => Err(self.outputs.internal("keyed operator without keyed state")),
        }
    }

    fn restore(&mut self, snapshots: &[Arc<DecodedSnapshot>]) -> Result<(), TaskError> {
        let Some(scope) = self.guest.keyed_scope_mut() else {
            return Err(self.outputs.internal("keyed operator without keyed state"));
        };
        keyed_restore(snapshots, &mut scope.backend, &mut scope.timers, &self.outputs)
    }

    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        let records: Vec<RecordRef<'_>> = batch.records().collect();
        let mut run_of: HashMap<&[u8], u32, KeyHasher> = HashMap::with_capacity_and_hasher(records.len(), KeyHasher::default());
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
        let result = self.guest.process_runs(input as u32, &packed)?;
        self.outputs.handle(result, &packed, out)
    }
}

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

/// Generates watermarks from the timestamps of the records passing through
/// (Flink's timestamps-and-watermarks operator): first in a source's chain,
/// or after a stateless operator that assigns timestamps. Upstream
/// watermarks are replaced, except the final one at the end of input.
pub(crate) struct WatermarkAssigner {
    pub periodic: Option<crate::time::PeriodicWatermarks>,
    pub punctuated: Option<GuestInstance>,
    pub clock: Arc<dyn crate::time::Clock>,
    pub emitted: Option<i64>,
}

impl WatermarkAssigner {
    fn forward(&mut self, wm: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if self.emitted.is_none_or(|e| wm > e) {
            self.emitted = Some(wm);
            out.watermark(wm)?;
        }
        Ok(())
    }
}

impl Operator for WatermarkAssigner {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        if let Some(guest) = &mut self.punctuated {
            let marks = guest.punctuate(&batch.bytes)?;
            if marks.is_empty() {
                return out.emit(batch);
            }
            let mut part = BatchWriter::new();
            let mut marks = marks.into_iter().peekable();
            for (i, r) in batch.records().enumerate() {
                part.push_ref(&r);
                while let Some(&(_, wm)) = marks.peek().filter(|(after, _)| *after as usize == i) {
                    marks.next();
                    let len = part.len();
                    if len > 0 {
                        out.emit(RecordBatch { bytes: part.take(), len })?;
                    }
                    self.forward(wm, out)?;
                }
            }
            let len = part.len();
            return out.emit(RecordBatch { bytes: part.finish(), len });
        }
        if let Some(p) = &mut self.periodic {
            for r in batch.records() {
                if let Some(t) = r.timestamp {
                    p.on_timestamp(t);
                }
            }
        }
        out.emit(batch)?;
        self.on_processing_time(self.clock.now_ms(), out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if watermark == i64::MAX {
            self.forward(watermark, out)
        } else {
            Ok(())
        }
    }

    fn on_processing_time(&mut self, now: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if let Some(wm) = self.periodic.as_mut().and_then(|p| p.poll(now)) {
            self.forward(wm, out)?;
        }
        Ok(())
    }
}
