//! The consumer side: the network channels of an input gate, subscribed to
//! their producers with exclusive credits; a credit back each time the gate
//! takes an element; the gate's pool of floating credits, handed to the
//! channels that announce a backlog; and the frames producers send (data,
//! backlog, close).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crossbeam_channel::{Sender, TrySendError, bounded};

use super::config::NetworkConfig;
use super::connection::{ReadError, Wire};
use super::error::NetworkError;
use super::frame::{CANCEL, Frame, MAX_CHANNELS_PER_CONNECTION, MAX_JOB_BYTES, credit_frame, id_frame, subscribe_frame};
use super::key::ChannelKey;
use super::lock;
use crate::runtime::channel::{LocalReceiver, ReceiverHooks, StreamElement};

/// A connection this process opened to a producer.
pub(super) struct ClientConn {
    pub(super) wire: Wire,
    channels: Mutex<HashMap<u32, Arc<InChannel>>>,
    next_id: AtomicU32,
}

/// Credits of one input gate's network channels.
struct GateCredits {
    state: Mutex<GateState>,
}

struct GateState {
    /// Floating credits no channel holds.
    pool: u32,
    slots: Vec<Slot>,
}

/// One channel's credits: `outstanding` (granted, not yet used by a frame)
/// plus its queued elements always make exclusive + `floating`.
struct Slot {
    conn: Weak<ClientConn>,
    id: u32,
    outstanding: u32,
    floating: u32,
    backlog: u32,
    live: bool,
}

/// Credits to send: (connection, channel id, credits).
type Grants = Vec<(Weak<ClientConn>, u32, u32)>;

impl GateState {
    /// A data frame arrived on `slot`.
    fn on_frame(&mut self, slot: usize, backlog: u32, grants: &mut Grants) -> Result<(), String> {
        let s = &mut self.slots[slot];
        if s.outstanding == 0 {
            return Err(format!("channel {} sent a frame without credit", s.id));
        }
        s.outstanding -= 1;
        s.backlog = backlog;
        self.grant_floating(slot, grants);
        Ok(())
    }

    /// Hand floating credits to `slot` for the backlog its credit does not cover.
    fn grant_floating(&mut self, slot: usize, grants: &mut Grants) {
        let s = &mut self.slots[slot];
        if !s.live {
            return;
        }
        let n = s.backlog.saturating_sub(s.outstanding).min(self.pool);
        if n > 0 {
            self.pool -= n;
            s.floating += n;
            s.outstanding += n;
            grants.push((s.conn.clone(), s.id, n));
        }
    }

    /// The gate took an element of `slot`: its buffer is free again.
    fn on_consumed(&mut self, slot: usize, grants: &mut Grants) {
        let s = &mut self.slots[slot];
        if !s.live {
            return;
        }
        if s.floating > 0 && s.outstanding >= s.backlog {
            s.floating -= 1;
            self.pool += 1;
            self.redistribute(grants);
        } else {
            s.outstanding += 1;
            grants.push((s.conn.clone(), s.id, 1));
        }
    }

    /// `slot` needs no credit any more.
    fn on_gone(&mut self, slot: usize, grants: &mut Grants) {
        let s = &mut self.slots[slot];
        if !s.live {
            return;
        }
        s.live = false;
        self.pool += s.floating;
        s.floating = 0;
        s.outstanding = 0;
        self.redistribute(grants);
    }

    fn redistribute(&mut self, grants: &mut Grants) {
        for i in 0..self.slots.len() {
            if self.pool == 0 {
                return;
            }
            self.grant_floating(i, grants);
        }
    }
}

fn send_grants(grants: Grants) {
    for (conn, id, n) in grants {
        if let Some(conn) = conn.upgrade() {
            // A failure kills the connection; its reader fails the channels.
            let _ = conn.wire.send(credit_frame(id, n).finish(0), &[]);
        }
    }
}

/// The receiving ends of the channels of one input gate (see
/// [`DataPlane::receivers`](super::DataPlane::receivers)), each on the
/// connection `connect` gives for its producer's address.
pub(super) fn receivers(
    cfg: &NetworkConfig,
    channels: Vec<(ChannelKey, SocketAddr)>,
    mut connect: impl FnMut(SocketAddr) -> Result<Arc<ClientConn>, NetworkError>,
) -> Result<Vec<LocalReceiver>, NetworkError> {
    let gate = Arc::new(GateCredits {
        state: Mutex::new(GateState {
            pool: cfg.floating_credits,
            slots: Vec::with_capacity(channels.len()),
        }),
    });
    let capacity = (cfg.exclusive_credits as usize).saturating_add(cfg.floating_credits as usize);
    let mut receivers = Vec::with_capacity(channels.len());
    for (slot, (key, peer)) in channels.into_iter().enumerate() {
        if key.job.len() > MAX_JOB_BYTES {
            return Err(NetworkError::JobTooLong { peer, key });
        }
        let conn = connect(peer)?;
        let id = conn.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = bounded(capacity);
        lock(&gate.state).slots.push(Slot {
            conn: Arc::downgrade(&conn),
            id,
            outstanding: cfg.exclusive_credits,
            floating: 0,
            backlog: 0,
            live: true,
        });
        let frame = subscribe_frame(id, cfg.exclusive_credits, &key);
        let ch = Arc::new(InChannel {
            id,
            key,
            conn: Arc::downgrade(&conn),
            gate: gate.clone(),
            slot,
            tx: Mutex::new(Some(tx)),
            failed: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        {
            let mut map = lock(&conn.channels);
            if map.len() >= MAX_CHANNELS_PER_CONNECTION {
                return Err(NetworkError::Io {
                    peer,
                    source: io::Error::other(format!("more than {MAX_CHANNELS_PER_CONNECTION} channels on one connection")),
                });
            }
            map.insert(id, ch.clone());
        }
        receivers.push(LocalReceiver::remote(rx, ch));
        // The reader fails every channel in the map after marking the
        // connection dead: one added after that is failed here.
        if conn.wire.is_dead() {
            return Err(NetworkError::Closed { peer });
        }
        conn.wire.send(&frame, &[]).map_err(|source| NetworkError::Io { peer, source })?;
    }
    Ok(receivers)
}

/// A network channel at its consumer.
struct InChannel {
    id: u32,
    key: ChannelKey,
    conn: Weak<ClientConn>,
    gate: Arc<GateCredits>,
    slot: usize,
    /// Fed by the connection's reader; `None` once the channel is over.
    tx: Mutex<Option<Sender<StreamElement>>>,
    /// Its connection was lost (the gate fails at once).
    failed: AtomicBool,
    /// No more frames come: `EndOfData` arrived, or the channel was
    /// released, closed by its producer or lost.
    done: AtomicBool,
}

impl InChannel {
    /// The channel is over: its queue ends (after what is in it) and its
    /// credits go back to the gate. Returns whether it was over already.
    fn finish(&self) -> bool {
        let was_done = self.done.swap(true, Ordering::SeqCst);
        lock(&self.tx).take();
        let mut grants = Grants::new();
        lock(&self.gate.state).on_gone(self.slot, &mut grants);
        send_grants(grants);
        was_done
    }
}

impl ReceiverHooks for InChannel {
    fn consumed(&self, _element: &StreamElement) {
        if self.done.load(Ordering::Relaxed) {
            return;
        }
        let mut grants = Grants::new();
        lock(&self.gate.state).on_consumed(self.slot, &mut grants);
        send_grants(grants);
    }

    fn dropped(&self) {
        let was_done = self.finish();
        if let Some(conn) = self.conn.upgrade() {
            {
                let mut map = lock(&conn.channels);
                if map.get(&self.id).is_some_and(|c| std::ptr::eq(&**c, self)) {
                    map.remove(&self.id);
                }
            }
            if !was_done {
                let _ = conn.wire.send(id_frame(CANCEL, self.id).finish(0), &[]);
            }
        }
    }

    fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

impl ClientConn {
    pub(super) fn new(wire: Wire) -> Self {
        ClientConn {
            wire,
            channels: Mutex::default(),
            next_id: AtomicU32::new(0),
        }
    }

    fn channel(&self, id: u32) -> Option<Arc<InChannel>> {
        lock(&self.channels).get(&id).cloned()
    }

    /// A frame from the producer at the other end.
    pub(super) fn on_producer_frame(&self, frame: Frame) -> Result<(), ReadError> {
        let mut grants = Grants::new();
        match frame {
            Frame::Data { id, backlog, element } => {
                // Frames of a channel given up are dropped.
                let Some(ch) = self.channel(id) else { return Ok(()) };
                lock(&ch.gate.state)
                    .on_frame(ch.slot, backlog, &mut grants)
                    .map_err(ReadError::Protocol)?;
                let end = element == StreamElement::EndOfData;
                if let Some(tx) = lock(&ch.tx).as_ref() {
                    match tx.try_send(element) {
                        Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                        Err(TrySendError::Full(_)) => {
                            return Err(ReadError::Protocol(format!("channel {id} sent more frames than credits")));
                        }
                    }
                }
                if end {
                    lock(&self.channels).remove(&id);
                    ch.finish();
                }
            }
            Frame::Backlog { id, backlog } => {
                if let Some(ch) = self.channel(id) {
                    let mut gate = lock(&ch.gate.state);
                    gate.slots[ch.slot].backlog = backlog;
                    gate.grant_floating(ch.slot, &mut grants);
                }
            }
            Frame::Close { id } => {
                if let Some(ch) = lock(&self.channels).remove(&id) {
                    ch.finish();
                }
            }
            f => return Err(ReadError::Protocol(format!("a {} frame, which only a consumer sends", f.name()))),
        }
        send_grants(grants);
        Ok(())
    }

    /// End the channels of (`job`, `attempt`) on this connection, cancelling
    /// those whose producer still sends.
    pub(super) fn release(&self, job: &str, attempt: u32) {
        let gone: Vec<Arc<InChannel>> = {
            let mut map = lock(&self.channels);
            let ids: Vec<u32> = map
                .iter()
                .filter(|(_, c)| c.key.job == job && c.key.attempt == attempt)
                .map(|(id, _)| *id)
                .collect();
            ids.iter().filter_map(|id| map.remove(id)).collect()
        };
        for ch in gone {
            let was_done = ch.finish();
            if !was_done {
                let _ = self.wire.send(id_frame(CANCEL, ch.id).finish(0), &[]);
            }
        }
    }

    /// The connection is lost: every channel on it fails (the ended ones
    /// just end).
    pub(super) fn lost(&self) {
        // Dead first: `receivers` fails a channel it adds after this.
        self.wire.kill();
        let channels = std::mem::take(&mut *lock(&self.channels));
        for ch in channels.into_values() {
            if !ch.done.load(Ordering::SeqCst) {
                ch.failed.store(true, Ordering::SeqCst);
            }
            ch.finish();
        }
    }
}
