//! A stateless user operator (map, filter, flat-map): one guest call per batch.

use super::{Emit, GuestOutputs, Operator, TaskError};
use crate::types::RecordBatch;
use crate::wasm::GuestInstance;

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
