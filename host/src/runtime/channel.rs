//! Stream elements and the channels that carry them.
//!
//! A local channel is bounded twice: in elements (`channel_capacity`) and
//! in bytes of queued record batches (`channel_bytes`). A producer waits
//! while the channel holds more than its bytes, unless it is empty (one
//! batch always fits), so big records cannot pile up between tasks.
//!
//! A [`LocalReceiver`] is a crossbeam channel plus two hooks: one called
//! when the gate takes an element, one when the receiver is dropped. For an
//! in-process channel they give back the element's bytes and wake a waiting
//! producer; for a network channel ([`super::network`]) the channel is fed by
//! the connection's reader thread, the first hook returns a credit to the
//! remote producer and the second cancels the subscription, so both kinds of
//! channel sit side by side in one [`LocalInputGate`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

pub use crate::types::{RecordBatch, StreamElement};
use crossbeam_channel::{Receiver, Select, Sender, bounded, unbounded};

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
    /// Why `next` failed, when the gate knows better than "a channel
    /// closed" (a spill file that cannot be read).
    fn take_failure(&mut self) -> Option<crate::operator::TaskError> {
        None
    }
}

/// Bytes of record batches queued in one channel, and its ceiling.
#[derive(Debug)]
struct Queued {
    bytes: Mutex<usize>,
    room: Condvar,
    limit: usize,
    /// The receiver is gone: nobody will make room.
    closed: AtomicBool,
}

impl Queued {
    fn size(e: &StreamElement) -> usize {
        match e {
            StreamElement::Records(b) => b.bytes.len(),
            _ => 0,
        }
    }

    /// Take room for `n` bytes: at once if it fits (or nothing is queued),
    /// else waiting when `wait`; false when it does not fit and `!wait`.
    fn take(&self, n: usize, wait: bool) -> Result<bool, ChannelClosed> {
        if n == 0 {
            return Ok(true);
        }
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        while *bytes > 0 && bytes.saturating_add(n) > self.limit {
            if self.closed.load(Ordering::Relaxed) {
                return Err(ChannelClosed);
            }
            if !wait {
                return Ok(false);
            }
            bytes = self
                .room
                .wait_timeout(bytes, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *bytes += n;
        Ok(true)
    }

    fn give(&self, n: usize) {
        if n > 0 {
            let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
            *bytes = bytes.saturating_sub(n);
            self.room.notify_all();
        }
    }
}

struct LocalSender {
    tx: Sender<StreamElement>,
    queued: Arc<Queued>,
}

impl ElementSender for LocalSender {
    fn send(&self, element: StreamElement) -> Result<(), ChannelClosed> {
        let n = Queued::size(&element);
        self.queued.take(n, true)?;
        self.tx.send(element).map_err(|_| {
            self.queued.give(n);
            ChannelClosed
        })
    }

    fn try_send(&self, element: StreamElement) -> Result<Option<StreamElement>, ChannelClosed> {
        let n = Queued::size(&element);
        if !self.queued.take(n, false)? {
            return Ok(Some(element));
        }
        match self.tx.try_send(element) {
            Ok(()) => Ok(None),
            Err(crossbeam_channel::TrySendError::Full(e)) => {
                self.queued.give(n);
                Ok(Some(e))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                self.queued.give(n);
                Err(ChannelClosed)
            }
        }
    }
}

/// What the sending side of a channel that is not in-process (a network
/// channel) learns from its receiver.
pub(crate) trait ReceiverHooks: Send + Sync {
    /// The gate took `element` from the channel.
    fn consumed(&self, element: &StreamElement);
    /// The receiver is dropped: nobody reads the channel any more.
    fn dropped(&self);
    /// The channel failed (its connection is lost): the gate fails at once,
    /// even with elements still queued or the channel blocked.
    fn failed(&self) -> bool;
}

/// Who is told when the gate takes an element or drops the receiver.
enum Hooks {
    /// An in-process channel: bytes given back to its [`Queued`].
    Local(Arc<Queued>),
    /// A network channel.
    Remote(Arc<dyn ReceiverHooks>),
}

/// The receiving end of a channel: an in-process channel
/// ([`local_channel`]) or a network channel
/// ([`DataPlane::receivers`](super::network::DataPlane::receivers)).
pub struct LocalReceiver {
    rx: Receiver<StreamElement>,
    hooks: Hooks,
}

impl LocalReceiver {
    /// A receiver over `rx`, fed by someone other than a local sender, whose
    /// `hooks` learn what the gate does with it.
    pub(crate) fn remote(rx: Receiver<StreamElement>, hooks: Arc<dyn ReceiverHooks>) -> Self {
        LocalReceiver {
            rx,
            hooks: Hooks::Remote(hooks),
        }
    }

    /// The gate took `element`.
    #[inline]
    fn consumed(&self, element: &StreamElement) {
        match &self.hooks {
            Hooks::Local(queued) => queued.give(Queued::size(element)),
            Hooks::Remote(hooks) => hooks.consumed(element),
        }
    }

    /// A network channel whose connection is lost.
    #[inline]
    fn failed(&self) -> bool {
        match &self.hooks {
            Hooks::Local(_) => false,
            Hooks::Remote(hooks) => hooks.failed(),
        }
    }
}

impl Drop for LocalReceiver {
    fn drop(&mut self) {
        match &self.hooks {
            Hooks::Local(queued) => {
                queued.closed.store(true, Ordering::Relaxed);
                queued.room.notify_all();
            }
            Hooks::Remote(hooks) => hooks.dropped(),
        }
    }
}

/// An in-process channel holding at most `capacity` elements and, beyond
/// one batch, at most `max_bytes` bytes of record batches; with `capacity`
/// 0, an unbounded channel (an iteration's feedback: its loop bounds it).
pub fn local_channel(capacity: usize, max_bytes: usize) -> (Box<dyn ElementSender>, LocalReceiver) {
    let (tx, rx) = if capacity == 0 { unbounded() } else { bounded(capacity) };
    let max_bytes = if capacity == 0 { usize::MAX } else { max_bytes };
    let queued = Arc::new(Queued {
        bytes: Mutex::new(0),
        room: Condvar::new(),
        limit: max_bytes,
        closed: AtomicBool::new(false),
    });
    (
        Box::new(LocalSender {
            tx,
            queued: queued.clone(),
        }),
        LocalReceiver {
            rx,
            hooks: Hooks::Local(queued),
        },
    )
}

/// An [`InputGate`] over in-process channels.
pub struct LocalInputGate {
    receivers: Vec<LocalReceiver>,
    ended: Vec<bool>,
    blocked: Vec<bool>,
    open: usize,
}

impl LocalInputGate {
    /// A gate over `receivers`.
    pub fn new(receivers: Vec<LocalReceiver>) -> Self {
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
            if self.ended[i] {
                continue;
            }
            if r.failed() {
                return Err(ChannelClosed);
            }
            if !self.blocked[i] {
                sel.recv(&r.rx);
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
        let received = op.recv(&self.receivers[i].rx);
        if let Ok(e) = &received {
            self.receivers[i].consumed(e);
        }
        match received {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> StreamElement {
        StreamElement::Records(RecordBatch { bytes: vec![0; n], len: 1 })
    }

    #[test]
    fn a_channel_holds_at_most_its_bytes_beyond_one_batch() {
        let (tx, rx) = local_channel(100, 1000);
        // One batch always fits, even a big one.
        assert_eq!(tx.try_send(batch(5000)).unwrap(), None);
        assert!(tx.try_send(batch(1)).unwrap().is_some(), "over the bytes: refused");
        // Control elements take no bytes.
        assert_eq!(tx.try_send(StreamElement::Watermark(1)).unwrap(), None);
        let mut gate = LocalInputGate::new(vec![rx]);
        assert!(matches!(
            gate.next(Duration::from_secs(1)).unwrap(),
            GateEvent::Element(0, StreamElement::Records(_))
        ));
        for _ in 0..3 {
            assert_eq!(tx.try_send(batch(300)).unwrap(), None);
        }
        assert!(tx.try_send(batch(300)).unwrap().is_some());
        // A blocked send waits for room and goes through once there is some.
        let sender = std::thread::spawn(move || tx.send(batch(300)).map(|()| tx));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!sender.is_finished(), "the send waits for room");
        assert!(matches!(
            gate.next(Duration::from_secs(1)).unwrap(),
            GateEvent::Element(0, StreamElement::Watermark(1))
        ));
        assert!(matches!(
            gate.next(Duration::from_secs(1)).unwrap(),
            GateEvent::Element(0, StreamElement::Records(_))
        ));
        let tx = sender.join().unwrap().unwrap();
        // A receiver that is gone fails a waiting sender instead of hanging it.
        drop(gate);
        assert_eq!(tx.send(batch(900)), Err(ChannelClosed));
    }
}
