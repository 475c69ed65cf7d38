//! Partitioners: which downstream subtask gets which records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sluice_guest::batch::BatchWriter;

use super::channel::{ElementSender, RecordBatch, StreamElement};
use super::iteration::{Admit, IterationLoop};
use crate::job::Partition;
use crate::operator::{TaskError, preview};
use crate::spec::{EdgeFilter, OutputTag};
use crate::state::KeyGroup;

/// The senders of one output edge of a task, with its partitioner.
pub(crate) struct EdgeWriter {
    pub partition: Partition,
    pub senders: Vec<Box<dyn ElementSender>>,
    /// For forward edges: the one target.
    pub own_index: usize,
    pub max_parallelism: u32,
    pub next: usize,
    pub buffers: Vec<BatchWriter>,
    /// Name of the downstream node, for errors.
    pub target: String,
    /// Which output of the upstream operator the edge carries.
    pub output: OutputTag,
    /// Nanoseconds spent waiting for room in full channels (the task's
    /// backpressure), shared by the task's writers.
    pub blocked_ns: Arc<AtomicU64>,
    /// Only the records this selects go on.
    pub filter: Option<EdgeFilter>,
    /// The feedback edge of an iteration.
    pub feedback: Option<FeedbackWriter>,
}

/// What the writer of an iteration's feedback edge keeps.
pub(crate) struct FeedbackWriter {
    /// The loop its records are counted in.
    pub lp: Arc<IterationLoop>,
    /// The round of the records written now: one more than the round of
    /// the batch being processed (1 for records made from input 0).
    pub round: u32,
    /// Records of a later round are dropped.
    pub max_rounds: u32,
    /// The round last announced on each channel (0: none yet).
    pub announced: Vec<u32>,
    /// The loop terminated and the channels ended.
    pub ended: bool,
}

/// The records of `batch` that `filter` selects.
fn select(filter: &EdgeFilter, batch: RecordBatch) -> RecordBatch {
    let mut w = BatchWriter::with_capacity(batch.bytes.len());
    let mut len = 0;
    for r in batch.records() {
        if filter.matches(r.value) {
            w.push_ref(&r);
            len += 1;
        }
    }
    if len == batch.len {
        return batch;
    }
    RecordBatch { bytes: w.take(), len }
}

impl EdgeWriter {
    fn send(&self, i: usize, element: StreamElement) -> Result<(), TaskError> {
        let closed = |_| TaskError::DownstreamClosed(self.target.clone());
        let Some(element) = self.senders[i].try_send(element).map_err(closed)? else {
            return Ok(());
        };
        let started = Instant::now();
        let sent = self.senders[i].send(element).map_err(closed);
        self.blocked_ns.fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        sent
    }

    pub fn write(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        let batch = match &self.filter {
            Some(f) => select(f, batch),
            None => batch,
        };
        if batch.len == 0 {
            return Ok(());
        }
        if self.feedback.is_some() {
            return self.write_feedback(batch);
        }
        match self.partition {
            Partition::Forward => self.send(self.own_index, StreamElement::Records(batch)),
            Partition::Rebalance => {
                let i = self.next % self.senders.len();
                self.next = self.next.wrapping_add(1);
                self.send(i, StreamElement::Records(batch))
            }
            Partition::Hash => {
                let p = self.senders.len() as u32;
                if p == 1 {
                    let mut keyed = true;
                    let whole = sluice_guest::batch::scan_headers(&batch.bytes, |k, _| keyed &= k).is_some();
                    if (!keyed || !whole)
                        && let Some(r) = batch.records().find(|r| r.key.is_none())
                    {
                        return Err(TaskError::MissingKey {
                            target: self.target.clone(),
                            value: preview(r.value),
                        });
                    }
                    return self.send(0, StreamElement::Records(batch));
                }
                for (i, b) in self.split_by_key(&batch)? {
                    self.send(i, StreamElement::Records(b))?;
                }
                Ok(())
            }
        }
    }

    /// The records of `batch` by the subtask owning their key group.
    fn split_by_key(&mut self, batch: &RecordBatch) -> Result<Vec<(usize, RecordBatch)>, TaskError> {
        let p = self.senders.len() as u32;
        for r in batch.records() {
            let Some(key) = r.key else {
                return Err(TaskError::MissingKey {
                    target: self.target.clone(),
                    value: preview(r.value),
                });
            };
            let target = KeyGroup::of(key, self.max_parallelism).subtask(self.max_parallelism, p);
            self.buffers[target as usize].push_ref(&r);
        }
        let mut out = Vec::new();
        for i in 0..self.buffers.len() {
            if !self.buffers[i].is_empty() {
                let len = self.buffers[i].len();
                let bytes = self.buffers[i].take();
                self.buffers[i] = BatchWriter::with_capacity(bytes.len());
                out.push((i, RecordBatch { bytes, len }));
            }
        }
        Ok(out)
    }

    /// Send records round an iteration: counted in its loop first, each
    /// channel told their round when it changes; dropped past the round
    /// limit or once the loop has terminated.
    fn write_feedback(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        let Some(f) = &self.feedback else { return Ok(()) };
        if f.ended {
            return Ok(());
        }
        if f.round > f.max_rounds {
            f.lp.dropped_at_limit(batch.len as u64);
            return Ok(());
        }
        let parts = self.split_by_key(&batch)?;
        let records: u64 = parts.iter().map(|(_, b)| b.len as u64).sum();
        let bytes: u64 = parts.iter().map(|(_, b)| b.bytes.len() as u64).sum();
        let Some(f) = &mut self.feedback else { return Ok(()) };
        if f.lp.admit(records, bytes)? == Admit::Terminated {
            return Ok(());
        }
        let round = f.round;
        let mut announce = Vec::new();
        for (i, _) in &parts {
            if f.announced[*i] != round {
                f.announced[*i] = round;
                announce.push(*i);
            }
        }
        for (i, b) in parts {
            if announce.contains(&i) {
                self.send(i, StreamElement::Round(round))?;
            }
            self.send(i, StreamElement::Records(b))?;
        }
        Ok(())
    }

    /// The loop terminated: end every feedback channel.
    pub fn end_feedback(&mut self) -> Result<(), TaskError> {
        match &mut self.feedback {
            Some(f) if !f.ended => f.ended = true,
            _ => return Ok(()),
        }
        for i in 0..self.senders.len() {
            self.send(i, StreamElement::EndOfData)?;
        }
        Ok(())
    }

    /// Send a control element to every target.
    pub fn broadcast(&mut self, element: StreamElement) -> Result<(), TaskError> {
        if let Some(f) = &self.feedback {
            // Event time does not go round a loop, and its channels end
            // with the loop ([`Self::end_feedback`]).
            if f.ended || !matches!(element, StreamElement::Barrier(_)) {
                return Ok(());
            }
        }
        let targets: Vec<usize> = match self.partition {
            Partition::Forward => vec![self.own_index],
            _ => (0..self.senders.len()).collect(),
        };
        for i in targets {
            self.send(i, element.clone())?;
        }
        Ok(())
    }

    pub fn end(&mut self) -> Result<(), TaskError> {
        self.broadcast(StreamElement::EndOfData)
    }
}
