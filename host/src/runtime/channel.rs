//! Stream elements and the channels that carry them.

use std::time::Duration;

use crossbeam_channel::{Receiver, Select, Sender, bounded};

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
    Barrier(crate::checkpoint::Barrier),
    /// The upstream subtask has no more data.
    EndOfData,
}

/// What an [`InputGate`] delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEvent {
    /// An element from channel `.0`.
    Element(usize, StreamElement),
    /// Nothing arrived within the timeout.
    Timeout,
    /// Every channel has delivered `EndOfData`.
    Ended,
}

/// The receiving side is gone (its task ended or failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the downstream channel is closed")]
pub struct ChannelClosed;

/// Sends elements to one downstream subtask; blocks while the channel is full.
pub trait ElementSender: Send {
    /// Send, waiting for room. Fails when the receiver is gone.
    fn send(&self, element: StreamElement) -> Result<(), ChannelClosed>;
    /// Send if there is room now; otherwise give the element back.
    fn try_send(&self, element: StreamElement) -> Result<Option<StreamElement>, ChannelClosed>;
}

/// The inputs of one subtask: many channels, read as they have data.
pub trait InputGate: Send {
    /// The next element and the index of the channel it came from, waiting
    /// at most `timeout`; [`GateEvent::Ended`] once every channel has
    /// delivered `EndOfData`; an error when a channel closed without it (its
    /// upstream failed).
    fn next(&mut self, timeout: Duration) -> Result<GateEvent, ChannelClosed>;
    /// Hold back (or release) one channel: `next` does not read a blocked
    /// channel. Used to align checkpoint barriers.
    fn set_blocked(&mut self, channel: usize, blocked: bool);
}

struct LocalSender(Sender<StreamElement>);

impl ElementSender for LocalSender {
    fn send(&self, element: StreamElement) -> Result<(), ChannelClosed> {
        self.0.send(element).map_err(|_| ChannelClosed)
    }

    fn try_send(&self, element: StreamElement) -> Result<Option<StreamElement>, ChannelClosed> {
        match self.0.try_send(element) {
            Ok(()) => Ok(None),
            Err(crossbeam_channel::TrySendError::Full(e)) => Ok(Some(e)),
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => Err(ChannelClosed),
        }
    }
}

/// An in-process channel holding at most `capacity` elements.
pub fn local_channel(capacity: usize) -> (Box<dyn ElementSender>, Receiver<StreamElement>) {
    let (tx, rx) = bounded(capacity);
    (Box::new(LocalSender(tx)), rx)
}

/// An [`InputGate`] over in-process channels.
pub struct LocalInputGate {
    receivers: Vec<Receiver<StreamElement>>,
    ended: Vec<bool>,
    blocked: Vec<bool>,
    open: usize,
}

impl LocalInputGate {
    /// A gate over `receivers`.
    pub fn new(receivers: Vec<Receiver<StreamElement>>) -> Self {
        let n = receivers.len();
        LocalInputGate {
            receivers,
            ended: vec![false; n],
            blocked: vec![false; n],
            open: n,
        }
    }
}

impl InputGate for LocalInputGate {
    fn next(&mut self, timeout: Duration) -> Result<GateEvent, ChannelClosed> {
        if self.open == 0 {
            return Ok(GateEvent::Ended);
        }
        let mut sel = Select::new();
        let mut index = Vec::with_capacity(self.open);
        for (i, r) in self.receivers.iter().enumerate() {
            if !self.ended[i] && !self.blocked[i] {
                sel.recv(r);
                index.push(i);
            }
        }
        if index.is_empty() {
            std::thread::sleep(timeout);
            return Ok(GateEvent::Timeout);
        }
        let Ok(op) = sel.select_timeout(timeout) else {
            return Ok(GateEvent::Timeout);
        };
        let i = index[op.index()];
        match op.recv(&self.receivers[i]) {
            Ok(StreamElement::EndOfData) => {
                self.ended[i] = true;
                self.open -= 1;
                Ok(GateEvent::Element(i, StreamElement::EndOfData))
            }
            Ok(e) => Ok(GateEvent::Element(i, e)),
            Err(_) => Err(ChannelClosed),
        }
    }

    fn set_blocked(&mut self, channel: usize, blocked: bool) {
        if let Some(b) = self.blocked.get_mut(channel) {
            *b = blocked;
        }
    }
}
