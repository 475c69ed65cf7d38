//! The values every layer shares: record batches, the elements of a
//! stream, and checkpoint barriers. No dependency on any other module.

use sluice_guest::batch::Batch;

/// Records packed in the `sluice:udf/types.batch` format, with their count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordBatch {
    /// Packed records.
    pub bytes: Vec<u8>,
    /// Number of records in `bytes`.
    pub len: usize,
}

impl RecordBatch {
    /// Iterate the records (the batch was validated when it was built).
    pub fn records(&self) -> impl Iterator<Item = sluice_guest::batch::RecordRef<'_>> {
        Batch::new(&self.bytes).iter().map_while(Result::ok)
    }

    /// The records in a vector, allocated once for the batch's length.
    pub fn record_vec(&self) -> Vec<sluice_guest::batch::RecordRef<'_>> {
        let mut v = Vec::with_capacity(self.len.min(self.bytes.len() / 5 + 1));
        v.extend(self.records());
        v
    }
}

/// What flows on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamElement {
    /// A batch of records.
    Records(RecordBatch),
    /// Event time has reached this (ms): no record at or before it follows.
    Watermark(i64),
    /// The upstream became idle (true: it sends no records for a while and
    /// must not hold back the watermark) or active again (false).
    Idle(bool),
    /// Checkpoint barrier: everything before it belongs to checkpoint n.
    Barrier(Barrier),
    /// The upstream subtask has no more data.
    EndOfData,
    /// Batch mode, from a sorted input only: every record of the keys
    /// delivered since the last one has arrived (never sent between tasks).
    KeysEnded,
    /// On an iteration's feedback channel: the batches that follow went
    /// round this many times.
    Round(u32),
}

/// What a barrier asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarrierKind {
    /// A periodic checkpoint.
    Checkpoint,
    /// A savepoint; with `stop`, sources stop after it and the job ends
    /// once it is complete.
    Savepoint {
        /// Stop the job after the savepoint.
        stop: bool,
    },
}

/// Barrier `id`, injected by sources and carried in-band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Barrier {
    /// The checkpoint id.
    pub id: u64,
    /// Checkpoint or savepoint.
    pub kind: BarrierKind,
    /// Whether tasks align their inputs on it (exactly-once, and always for
    /// savepoints).
    pub aligned: bool,
}
