//! Partitioners: which downstream subtask gets which records.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use sluice_guest::batch::BatchWriter;

use super::channel::{ElementSender, RecordBatch, StreamElement};
use crate::job::Partition;
use crate::operator::{TaskError, preview};
use crate::spec::OutputTag;
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
        if batch.len == 0 {
            return Ok(());
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
                for i in 0..self.buffers.len() {
                    if !self.buffers[i].is_empty() {
                        let len = self.buffers[i].len();
                        let bytes = self.buffers[i].take();
                        self.buffers[i] = BatchWriter::with_capacity(bytes.len());
                        self.send(i, StreamElement::Records(RecordBatch { bytes, len }))?;
                    }
                }
                Ok(())
            }
        }
    }

    /// Send a control element to every target.
    pub fn broadcast(&mut self, element: StreamElement) -> Result<(), TaskError> {
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
