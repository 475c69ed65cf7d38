//! The producer side: the channels with a sender in this process, their
//! credit, their buffers of coalesced record batches and their link to the
//! subscription of their consumer (which may come before or after the
//! sender); the frames consumers send (subscribe, credit, cancel) and the
//! release of an attempt's channels.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sluice_guest::batch::Batch;

use super::config::NetworkConfig;
use super::connection::{ReadError, WAIT_SLICE, Wire};
use super::flusher::{Flush, Flusher};
use super::frame::{CLOSE, Frame, MAX_CHANNELS_PER_CONNECTION, backlog_frame, control_frame, id_frame, records_head};
use super::key::ChannelKey;
use super::lock;
use crate::runtime::channel::{ChannelClosed, ElementSender, RecordBatch, StreamElement};

/// Released (job, attempt)s remembered, so late subscriptions are refused.
const RELEASED_MEMORY: usize = 4096;

/// The producer side of a data plane.
pub(super) struct Producer {
    cfg: NetworkConfig,
    /// Channels with a sender, subscriptions waiting for one.
    out: Mutex<Outputs>,
    /// Sends buffers when their timeout is up.
    flusher: Arc<Flusher>,
}

#[derive(Default)]
struct Outputs {
    channels: HashMap<ChannelKey, Arc<OutChannel>>,
    pending: HashMap<ChannelKey, Pending>,
    released: VecDeque<(String, u32)>,
}

impl Outputs {
    fn is_released(&self, key: &ChannelKey) -> bool {
        self.released.iter().any(|(j, a)| *j == key.job && *a == key.attempt)
    }
}

/// A subscription that arrived before its sender.
struct Pending {
    conn: Arc<ServerConn>,
    id: u32,
    credits: u32,
}

/// A connection a consumer opened to this process.
pub(super) struct ServerConn {
    pub(super) wire: Wire,
    links: Mutex<HashMap<u32, Link>>,
}

enum Link {
    Pending(ChannelKey),
    Live(Arc<OutChannel>),
}

impl ServerConn {
    pub(super) fn new(wire: Wire) -> Self {
        ServerConn {
            wire,
            links: Mutex::default(),
        }
    }
}

impl Producer {
    /// The producer side of a plane with the settings `cfg` (sanitized),
    /// its buffers flushed by `flusher`.
    pub(super) fn new(cfg: NetworkConfig, flusher: Arc<Flusher>) -> Self {
        Producer {
            cfg,
            out: Mutex::default(),
            flusher,
        }
    }

    /// The sender of channel `key` (see [`DataPlane::sender`](super::DataPlane::sender)).
    pub(super) fn sender(self: &Arc<Self>, key: ChannelKey) -> Box<dyn ElementSender> {
        let ch = Arc::new(OutChannel::new(key.clone()));
        let mut out = lock(&self.out);
        let refused = if out.is_released(&key) {
            Some("its attempt is released")
        } else if out.channels.contains_key(&key) {
            Some("it already has a sender")
        } else {
            None
        };
        if let Some(why) = refused {
            tracing::warn!(channel = %key, "a data-plane sender refused: {why}");
            lock(&ch.state).closed = true;
        } else {
            if let Some(p) = out.pending.remove(&key) {
                let mut st = lock(&ch.state);
                st.link = Some((p.conn.clone(), p.id));
                st.credit = p.credits;
                lock(&p.conn.links).insert(p.id, Link::Live(ch.clone()));
            }
            out.channels.insert(key, ch.clone());
        }
        drop(out);
        Box::new(OutSender {
            ch,
            producer: self.clone(),
        })
    }

    /// Close every channel of (`job`, `attempt`) with a sender here and
    /// every subscription of one waiting for its sender; later ones are
    /// refused.
    pub(super) fn release(&self, job: &str, attempt: u32) {
        let matches = |k: &ChannelKey| k.job == job && k.attempt == attempt;
        let (channels, pending) = {
            let mut out = lock(&self.out);
            if out.released.len() >= RELEASED_MEMORY {
                out.released.pop_front();
            }
            out.released.push_back((job.to_string(), attempt));
            let keys: Vec<ChannelKey> = out.channels.keys().filter(|k| matches(k)).cloned().collect();
            let channels: Vec<_> = keys.iter().filter_map(|k| out.channels.remove(k)).collect();
            let keys: Vec<ChannelKey> = out.pending.keys().filter(|k| matches(k)).cloned().collect();
            let pending: Vec<_> = keys.iter().filter_map(|k| out.pending.remove(k)).collect();
            (channels, pending)
        };
        for ch in channels {
            if let Some((conn, id)) = ch.close() {
                lock(&conn.links).remove(&id);
                let _ = conn.wire.send(id_frame(CLOSE, id).finish(0), &[]);
            }
        }
        for p in pending {
            lock(&p.conn.links).remove(&p.id);
            let _ = p.conn.wire.send(id_frame(CLOSE, p.id).finish(0), &[]);
        }
    }

    /// A frame from the consumer at the other end of `conn`.
    pub(super) fn on_consumer_frame(&self, conn: &Arc<ServerConn>, frame: Frame) -> Result<(), ReadError> {
        match frame {
            Frame::Subscribe { id, credits, key } => self.subscribe(conn, id, credits, key),
            Frame::Credit { id, n } => {
                let link = lock(&conn.links).get(&id).map(|l| match l {
                    Link::Live(ch) => Ok(ch.clone()),
                    Link::Pending(key) => Err(key.clone()),
                });
                match link {
                    Some(Ok(ch)) => {
                        let overdue = ch.add_credit(n);
                        if overdue {
                            self.flusher.schedule(Instant::now(), &ch);
                        }
                    }
                    Some(Err(key)) => {
                        if let Some(p) = lock(&self.out)
                            .pending
                            .get_mut(&key)
                            .filter(|p| Arc::ptr_eq(&p.conn, conn) && p.id == id)
                        {
                            p.credits = p.credits.saturating_add(n);
                        }
                    }
                    // Cancelled or released meanwhile.
                    None => {}
                }
                Ok(())
            }
            Frame::Cancel { id } => {
                let link = lock(&conn.links).remove(&id);
                match link {
                    Some(Link::Live(ch)) => {
                        ch.close();
                    }
                    Some(Link::Pending(key)) => {
                        let mut out = lock(&self.out);
                        if out.pending.get(&key).is_some_and(|p| Arc::ptr_eq(&p.conn, conn) && p.id == id) {
                            out.pending.remove(&key);
                        }
                    }
                    None => {}
                }
                Ok(())
            }
            f => Err(ReadError::Protocol(format!("a {} frame, which only a producer sends", f.name()))),
        }
    }

    fn subscribe(&self, conn: &Arc<ServerConn>, id: u32, credits: u32, key: ChannelKey) -> Result<(), ReadError> {
        {
            let links = lock(&conn.links);
            if links.contains_key(&id) {
                return Err(ReadError::Protocol(format!("the channel id {id} subscribed twice")));
            }
            if links.len() >= MAX_CHANNELS_PER_CONNECTION {
                return Err(ReadError::Protocol(format!("more than {MAX_CHANNELS_PER_CONNECTION} channels")));
            }
        }
        let mut out = lock(&self.out);
        if out.is_released(&key) {
            drop(out);
            let _ = conn.wire.send(id_frame(CLOSE, id).finish(0), &[]);
            return Ok(());
        }
        if let Some(ch) = out.channels.get(&key).cloned() {
            let mut st = lock(&ch.state);
            if st.link.is_some() || st.closed {
                drop(st);
                drop(out);
                tracing::warn!(peer = %conn.wire.peer, channel = %key, "a second subscription of a data channel: refused");
                let _ = conn.wire.send(id_frame(CLOSE, id).finish(0), &[]);
                return Ok(());
            }
            st.link = Some((conn.clone(), id));
            st.credit = st.credit.saturating_add(credits);
            st.announced = false;
            let overdue = st.overdue;
            lock(&conn.links).insert(id, Link::Live(ch.clone()));
            drop(st);
            drop(out);
            ch.cv.notify_all();
            if overdue {
                self.flusher.schedule(Instant::now(), &ch);
            }
            return Ok(());
        }
        lock(&conn.links).insert(id, Link::Pending(key.clone()));
        let old = out.pending.insert(
            key,
            Pending {
                conn: conn.clone(),
                id,
                credits,
            },
        );
        drop(out);
        if let Some(old) = old {
            // A newer subscription wins (the old consumer is gone or confused).
            lock(&old.conn.links).remove(&old.id);
            let _ = old.conn.wire.send(id_frame(CLOSE, old.id).finish(0), &[]);
        }
        Ok(())
    }

    /// `conn` is closed: fail what it carried.
    pub(super) fn disconnected(&self, conn: &Arc<ServerConn>) {
        let links = std::mem::take(&mut *lock(&conn.links));
        for (id, link) in links {
            match link {
                Link::Live(ch) => {
                    ch.close();
                }
                Link::Pending(key) => {
                    let mut out = lock(&self.out);
                    if out.pending.get(&key).is_some_and(|p| Arc::ptr_eq(&p.conn, conn) && p.id == id) {
                        out.pending.remove(&key);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A channel and its sender

/// A channel with a sender in this process.
struct OutChannel {
    key: ChannelKey,
    /// The records not sent yet; held while a frame of the channel is
    /// written, so frames keep their order.
    write: Mutex<Buffer>,
    /// Credit and subscription; never held while waiting for anything else.
    state: Mutex<OutState>,
    /// Signalled when credit arrives or the channel closes.
    cv: Condvar,
}

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    count: u32,
    /// When the buffer became non-empty.
    since: Option<Instant>,
}

#[derive(Default)]
struct OutState {
    credit: u32,
    link: Option<(Arc<ServerConn>, u32)>,
    /// Cancelled, released, its connection lost or its sender dropped.
    closed: bool,
    /// `EndOfData` is sent.
    ended: bool,
    /// The consumer was told of the backlog since the last credit.
    announced: bool,
    /// The buffer's timeout is up but there was no credit to send it.
    overdue: bool,
}

impl OutChannel {
    fn new(key: ChannelKey) -> Self {
        OutChannel {
            key,
            write: Mutex::default(),
            state: Mutex::default(),
            cv: Condvar::new(),
        }
    }

    /// Close the channel; its link, if it had one.
    fn close(&self) -> Option<(Arc<ServerConn>, u32)> {
        let mut st = lock(&self.state);
        st.closed = true;
        st.credit = 0;
        let link = st.link.take();
        drop(st);
        self.cv.notify_all();
        link
    }

    /// Add credit; true when an overdue buffer now can go.
    fn add_credit(&self, n: u32) -> bool {
        let mut st = lock(&self.state);
        st.credit = st.credit.saturating_add(n);
        st.announced = false;
        let overdue = st.overdue && n > 0;
        drop(st);
        self.cv.notify_all();
        overdue
    }

    fn fail(&self) -> ChannelClosed {
        lock(&self.state).closed = true;
        self.cv.notify_all();
        ChannelClosed
    }

    /// Send the buffer as one frame (its credit taken) and empty it.
    fn write_buffer(&self, buf: &mut Buffer, conn: &ServerConn, id: u32, backlog: u32) -> Result<(), ChannelClosed> {
        let sent = conn
            .wire
            .send(records_head(id, backlog, buf.count).finish(buf.bytes.len()), &buf.bytes);
        buf.bytes.clear();
        buf.count = 0;
        buf.since = None;
        sent.map_err(|_| self.fail())
    }

    fn announce(&self, conn: &ServerConn, id: u32, backlog: u32) {
        let _ = conn.wire.send(backlog_frame(id, backlog).finish(0), &[]);
    }
}

impl Flush for OutChannel {
    fn flush_due(&self, timeout: Duration) {
        let mut buf = lock(&self.write);
        if buf.bytes.is_empty() || buf.since.is_none_or(|s| s + timeout > Instant::now()) {
            return;
        }
        let mut st = lock(&self.state);
        if st.closed {
            return;
        }
        let Some((conn, id)) = st.link.clone() else {
            st.overdue = true;
            return;
        };
        if st.credit == 0 {
            st.overdue = true;
            if !st.announced {
                st.announced = true;
                drop(st);
                self.announce(&conn, id, 1);
            }
            return;
        }
        st.credit -= 1;
        st.overdue = false;
        drop(st);
        let _ = self.write_buffer(&mut buf, &conn, id, 0);
    }
}

/// The sending end of a network channel.
struct OutSender {
    ch: Arc<OutChannel>,
    producer: Arc<Producer>,
}

impl OutSender {
    /// Accept `element` if that needs no credit beyond what the channel has,
    /// waiting for credit when `wait`; otherwise give it back.
    fn offer(&self, element: StreamElement, wait: bool) -> Result<Option<StreamElement>, ChannelClosed> {
        let cfg = &self.producer.cfg;
        let max = cfg.max_batch();
        if let StreamElement::Records(b) = &element
            && b.bytes.len() > max
        {
            // Larger than a frame: sent in pieces, which may wait.
            if !wait {
                return Ok(Some(element));
            }
            let Some(pieces) = split_batch(b, max) else {
                tracing::warn!(channel = %self.ch.key, "a record does not fit in a data frame of {} bytes", cfg.max_frame_bytes);
                return Err(self.ch.fail());
            };
            for piece in pieces {
                self.offer(StreamElement::Records(piece), true)?;
            }
            return Ok(None);
        }
        let ch = &*self.ch;
        let mut element = element;
        loop {
            let mut buf = lock(&ch.write);
            let mut st = lock(&ch.state);
            if st.closed {
                return Err(ChannelClosed);
            }
            let incoming = match &element {
                StreamElement::Records(b) => Some(b.bytes.len()),
                _ => None,
            };
            let queued = buf.bytes.len();
            // The buffer must go first: a control element follows it, or the
            // records would not fit in its frame.
            let flush_first = queued > 0 && incoming.is_none_or(|n| queued + n > max);
            let needs_frame = incoming.is_none_or(|n| queued + n >= cfg.buffer_bytes);
            element = match element {
                StreamElement::Records(b) if !flush_first && !needs_frame => {
                    drop(st);
                    if append(&mut buf, b, cfg.buffer_bytes) {
                        drop(buf);
                        self.producer.flusher.schedule(Instant::now() + cfg.buffer_timeout, &self.ch);
                    }
                    return Ok(None);
                }
                e => e,
            };
            if st.credit > 0
                && let Some((conn, id)) = st.link.clone()
            {
                st.credit -= 1;
                if flush_first || incoming.is_some() {
                    st.overdue = false;
                }
                drop(st);
                if flush_first {
                    ch.write_buffer(&mut buf, &conn, id, 1)?;
                    continue;
                }
                match element {
                    StreamElement::Records(b) if buf.bytes.is_empty() => {
                        let len = b.len as u32;
                        conn.wire
                            .send(records_head(id, 0, len).finish(b.bytes.len()), &b.bytes)
                            .map_err(|_| ch.fail())?;
                    }
                    StreamElement::Records(b) => {
                        append(&mut buf, b, cfg.buffer_bytes);
                        ch.write_buffer(&mut buf, &conn, id, 0)?;
                    }
                    e => {
                        conn.wire.send(control_frame(id, 0, &e).finish(0), &[]).map_err(|_| ch.fail())?;
                        if e == StreamElement::EndOfData {
                            lock(&ch.state).ended = true;
                        }
                    }
                }
                return Ok(None);
            }
            // No credit: tell the consumer once what waits here, so its gate
            // can hand this channel floating credits.
            if !st.announced
                && let Some((conn, id)) = st.link.clone()
            {
                st.announced = true;
                drop(st);
                let waiting = if queued > 0 && (flush_first || incoming.is_none()) { 2 } else { 1 };
                ch.announce(&conn, id, waiting);
                st = lock(&ch.state);
            }
            if !wait {
                return Ok(Some(element));
            }
            drop(buf);
            drop(ch.cv.wait_timeout(st, WAIT_SLICE).unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// Append `b` to the buffer; true when the buffer was empty.
fn append(buf: &mut Buffer, b: RecordBatch, buffer_bytes: usize) -> bool {
    let was_empty = buf.bytes.is_empty();
    if buf.bytes.capacity() - buf.bytes.len() >= b.bytes.len() {
        buf.bytes.extend_from_slice(&b.bytes);
    } else if was_empty {
        buf.bytes = b.bytes;
    } else {
        buf.bytes.reserve(b.bytes.len().max(buffer_bytes.saturating_sub(buf.bytes.len())));
        buf.bytes.extend_from_slice(&b.bytes);
    }
    buf.count = buf.count.saturating_add(b.len as u32);
    if was_empty {
        buf.since = Some(Instant::now());
    }
    was_empty
}

/// A batch cut at record boundaries into pieces of at most `max` bytes;
/// `None` when one record is larger or the batch is malformed.
fn split_batch(batch: &RecordBatch, max: usize) -> Option<Vec<RecordBatch>> {
    let mut pieces = Vec::new();
    let (mut start, mut pos, mut count) = (0, 0, 0);
    for r in Batch::new(&batch.bytes).iter() {
        let r = r.ok()?;
        let size = 1 + r.key.map_or(0, |k| 4 + k.len()) + r.timestamp.map_or(0, |_| 8) + 4 + r.value.len();
        if size > max {
            return None;
        }
        if pos + size - start > max {
            pieces.push(RecordBatch {
                bytes: batch.bytes[start..pos].to_vec(),
                len: count,
            });
            (start, count) = (pos, 0);
        }
        pos += size;
        count += 1;
    }
    if pos > start {
        pieces.push(RecordBatch {
            bytes: batch.bytes[start..pos].to_vec(),
            len: count,
        });
    }
    Some(pieces)
}

impl ElementSender for OutSender {
    fn send(&self, element: StreamElement) -> Result<(), ChannelClosed> {
        match self.offer(element, true)? {
            None => Ok(()),
            // `offer` only gives back when not waiting.
            Some(_) => Err(ChannelClosed),
        }
    }

    fn try_send(&self, element: StreamElement) -> Result<Option<StreamElement>, ChannelClosed> {
        self.offer(element, false)
    }
}

impl Drop for OutSender {
    fn drop(&mut self) {
        let _write = lock(&self.ch.write);
        {
            let mut out = lock(&self.producer.out);
            if out.channels.get(&self.ch.key).is_some_and(|c| Arc::ptr_eq(c, &self.ch)) {
                out.channels.remove(&self.ch.key);
            }
        }
        let ended = lock(&self.ch.state).ended;
        if let Some((conn, id)) = self.ch.close() {
            lock(&conn.links).remove(&id);
            if !ended {
                // Gone without `EndOfData`: the consumer's gate fails.
                let _ = conn.wire.send(id_frame(CLOSE, id).finish(0), &[]);
            }
        }
    }
}
