//! A keyed process operator: host state and timers, the guest called once
//! per batch with the batch's records grouped into runs of one key.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_guest::batch::{BatchWriter, RecordRef};

use super::{Emit, GuestOutputs, Operator, TaskError, keyed_restore, keyed_snapshot, preview};
use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot};
use crate::state::{KeyGroup, KeyHasher};
use crate::time::TimeDomain;
use crate::types::RecordBatch;
use crate::wasm::GuestInstance;

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

    fn end_keys(&mut self, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.guest.set_watermark(Some(i64::MAX));
        self.fire_timers(TimeDomain::EventTime, i64::MAX, out)?;
        self.guest.set_watermark(None);
        let Some(scope) = self.guest.keyed_scope_mut() else {
            return Err(self.outputs.internal("keyed operator without keyed state"));
        };
        scope.backend.clear_all();
        scope.timers.clear();
        Ok(())
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
        let records: Vec<RecordRef<'_>> = batch.record_vec();
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
