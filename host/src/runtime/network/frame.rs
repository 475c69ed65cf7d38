//! The wire format: frame kinds and element tags, the bounds on what a peer
//! may announce, frames encoded on the stack and frame bodies decoded (and
//! validated). No I/O: a connection's reader and writer use these.

use sluice_guest::batch::Batch;

use super::key::ChannelKey;
use crate::checkpoint::{Barrier, BarrierKind};
use crate::runtime::channel::{RecordBatch, StreamElement};

/// The version of the wire format, exchanged in the hello frames.
pub const PROTOCOL_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"SLDP";

const HELLO: u8 = 1;
pub(super) const SUBSCRIBE: u8 = 2;
const CREDIT: u8 = 3;
pub(super) const CANCEL: u8 = 4;
pub(super) const DATA: u8 = 16;
const BACKLOG: u8 = 17;
pub(super) const CLOSE: u8 = 18;

pub(super) const TAG_RECORDS: u8 = 0;
const TAG_WATERMARK: u8 = 1;
const TAG_IDLE: u8 = 2;
const TAG_BARRIER: u8 = 3;
const TAG_END: u8 = 4;
const TAG_KEYS_ENDED: u8 = 5;
const TAG_ROUND: u8 = 6;

/// Bytes of a records frame after its length and before its batch: kind,
/// id, backlog, tag, count.
pub(super) const RECORDS_HEADER: usize = 1 + 4 + 4 + 1 + 4;
/// Longest job id a subscription may carry.
pub(super) const MAX_JOB_BYTES: usize = 1024;
/// Largest body of any frame but a records frame.
pub(super) const MAX_CONTROL_BODY: usize = 2 * MAX_JOB_BYTES;
/// Largest control element after the id, backlog and tag of its data frame.
pub(super) const MAX_ELEMENT_BODY: usize = 16;
/// Most channels one connection may subscribe.
pub(super) const MAX_CHANNELS_PER_CONNECTION: usize = 1 << 16;

// ---------------------------------------------------------------------------
// Encoding

/// A small frame, or the header of a records frame, built on the stack.
pub(super) struct Head {
    b: [u8; 40],
    n: usize,
}

impl Head {
    fn new(kind: u8) -> Head {
        let mut h = Head { b: [0; 40], n: 4 };
        h.u8(kind);
        h
    }

    fn put(&mut self, bytes: &[u8]) -> &mut Self {
        self.b[self.n..self.n + bytes.len()].copy_from_slice(bytes);
        self.n += bytes.len();
        self
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.put(&[v])
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.put(&v.to_le_bytes())
    }

    /// The header bytes, its length field counting `body` bytes after it.
    pub(super) fn finish(&mut self, body: usize) -> &[u8] {
        let len = (self.n - 4 + body) as u32;
        self.b[..4].copy_from_slice(&len.to_le_bytes());
        &self.b[..self.n]
    }
}

pub(super) fn hello() -> Head {
    let mut h = Head::new(HELLO);
    h.put(&MAGIC).u8(PROTOCOL_VERSION);
    h
}

pub(super) fn id_frame(kind: u8, id: u32) -> Head {
    let mut h = Head::new(kind);
    h.u32(id);
    h
}

pub(super) fn subscribe_frame(id: u32, credits: u32, key: &ChannelKey) -> Vec<u8> {
    // `receivers` refuses longer job ids.
    let job = &key.job.as_bytes()[..key.job.len().min(MAX_JOB_BYTES)];
    let len = 1 + 4 * 4 + 2 + job.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_le_bytes());
    f.push(SUBSCRIBE);
    for v in [id, credits, key.attempt, key.channel] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    f.extend_from_slice(&(job.len() as u16).to_le_bytes());
    f.extend_from_slice(job);
    f
}

pub(super) fn credit_frame(id: u32, n: u32) -> Head {
    let mut h = Head::new(CREDIT);
    h.u32(id).u32(n);
    h
}

pub(super) fn backlog_frame(id: u32, backlog: u32) -> Head {
    let mut h = Head::new(BACKLOG);
    h.u32(id).u32(backlog);
    h
}

/// The header of a data frame carrying a control element (the whole frame).
pub(super) fn control_frame(id: u32, backlog: u32, element: &StreamElement) -> Head {
    let mut h = Head::new(DATA);
    h.u32(id).u32(backlog);
    match element {
        StreamElement::Watermark(t) => h.u8(TAG_WATERMARK).u64(*t as u64),
        StreamElement::Idle(idle) => h.u8(TAG_IDLE).u8(*idle as u8),
        StreamElement::Barrier(b) => {
            let (kind, stop) = match b.kind {
                BarrierKind::Checkpoint => (0, false),
                BarrierKind::Savepoint { stop } => (1, stop),
            };
            h.u8(TAG_BARRIER).u64(b.id).u8(kind).u8(stop as u8).u8(b.aligned as u8)
        }
        StreamElement::EndOfData => h.u8(TAG_END),
        StreamElement::KeysEnded => h.u8(TAG_KEYS_ENDED),
        StreamElement::Round(r) => h.u8(TAG_ROUND).u32(*r),
        // Records go through `records_head`; an empty batch is harmless.
        StreamElement::Records(_) => h.u8(TAG_RECORDS).u32(0),
    };
    h
}

pub(super) fn records_head(id: u32, backlog: u32, count: u32) -> Head {
    let mut h = Head::new(DATA);
    h.u32(id).u32(backlog).u8(TAG_RECORDS).u32(count);
    h
}

// ---------------------------------------------------------------------------
// Decoding

/// A decoded frame.
#[derive(Debug)]
pub(super) enum Frame {
    Hello { version: u8 },
    Subscribe { id: u32, credits: u32, key: ChannelKey },
    Credit { id: u32, n: u32 },
    Cancel { id: u32 },
    Data { id: u32, backlog: u32, element: StreamElement },
    Backlog { id: u32, backlog: u32 },
    Close { id: u32 },
}

pub(super) fn kind_name(kind: u8) -> &'static str {
    match kind {
        HELLO => "hello",
        SUBSCRIBE => "subscribe",
        CREDIT => "credit",
        CANCEL => "cancel",
        DATA => "data",
        BACKLOG => "backlog",
        CLOSE => "close",
        _ => "unknown",
    }
}

impl Frame {
    pub(super) fn name(&self) -> &'static str {
        kind_name(match self {
            Frame::Hello { .. } => HELLO,
            Frame::Subscribe { .. } => SUBSCRIBE,
            Frame::Credit { .. } => CREDIT,
            Frame::Cancel { .. } => CANCEL,
            Frame::Data { .. } => DATA,
            Frame::Backlog { .. } => BACKLOG,
            Frame::Close { .. } => CLOSE,
        })
    }
}

/// Fixed-size fields of a frame body, checked for length.
struct Body<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.b.len() < n {
            return Err(format!("a truncated {} frame", self.what));
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn bool(&mut self) -> Result<bool, String> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(format!("a {} frame with the flag {v}", self.what)),
        }
    }

    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn end(self) -> Result<(), String> {
        match self.b.len() {
            0 => Ok(()),
            n => Err(format!("a {} frame with {n} bytes too many", self.what)),
        }
    }
}

/// The id, backlog and tag that open the body of a data frame.
pub(super) fn data_head(head: &[u8; 9]) -> (u32, u32, u8) {
    let u32_at = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    (u32_at(0), u32_at(4), head[8])
}

/// The element of a records frame of channel `id`: `bytes`, validated as a
/// batch of `count` records.
pub(super) fn decode_records(id: u32, bytes: Vec<u8>, count: usize) -> Result<StreamElement, String> {
    match Batch::new(&bytes).validate() {
        Err(e) => return Err(format!("channel {id}: {e}")),
        Ok(c) if c != count => return Err(format!("channel {id}: a batch of {c} records announced as {count}")),
        Ok(_) => {}
    }
    Ok(StreamElement::Records(RecordBatch { bytes, len: count }))
}

/// The control element of a data frame of channel `id`: its `tag` and the
/// rest of the frame.
pub(super) fn decode_element(id: u32, tag: u8, body: &[u8]) -> Result<StreamElement, String> {
    let mut b = Body { b: body, what: "data" };
    control_element(tag, &mut b)
        .and_then(|e| b.end().map(|()| e))
        .map_err(|e| format!("channel {id}: {e}"))
}

fn control_element(tag: u8, b: &mut Body<'_>) -> Result<StreamElement, String> {
    Ok(match tag {
        TAG_WATERMARK => StreamElement::Watermark(b.u64()? as i64),
        TAG_IDLE => StreamElement::Idle(b.bool()?),
        TAG_BARRIER => {
            let id = b.u64()?;
            let kind = match (b.u8()?, b.bool()?) {
                (0, false) => BarrierKind::Checkpoint,
                (1, stop) => BarrierKind::Savepoint { stop },
                (k, stop) => return Err(format!("a barrier of kind {k} (stop {stop})")),
            };
            let aligned = b.bool()?;
            StreamElement::Barrier(Barrier { id, kind, aligned })
        }
        TAG_END => StreamElement::EndOfData,
        TAG_KEYS_ENDED => StreamElement::KeysEnded,
        TAG_ROUND => StreamElement::Round(b.u32()?),
        t => return Err(format!("an element with the unknown tag {t}")),
    })
}

/// A frame of any kind but data: its `kind` and its body.
pub(super) fn decode_control_frame(kind: u8, body: &[u8]) -> Result<Frame, String> {
    let mut b = Body {
        b: body,
        what: kind_name(kind),
    };
    let f = match kind {
        HELLO => {
            if b.take(4)? != MAGIC {
                return Err("a hello without the magic bytes (not a Sluice data plane)".to_string());
            }
            Frame::Hello { version: b.u8()? }
        }
        SUBSCRIBE => {
            let (id, credits, attempt, channel) = (b.u32()?, b.u32()?, b.u32()?, b.u32()?);
            let n = b.u16()? as usize;
            if n > MAX_JOB_BYTES {
                return Err(format!("a job id of {n} bytes, over the limit of {MAX_JOB_BYTES}"));
            }
            let job = std::str::from_utf8(b.take(n)?).map_err(|_| "a job id that is not UTF-8".to_string())?;
            let key = ChannelKey {
                job: job.to_string(),
                attempt,
                channel,
            };
            Frame::Subscribe { id, credits, key }
        }
        CREDIT => Frame::Credit { id: b.u32()?, n: b.u32()? },
        CANCEL => Frame::Cancel { id: b.u32()? },
        BACKLOG => Frame::Backlog {
            id: b.u32()?,
            backlog: b.u32()?,
        },
        CLOSE => Frame::Close { id: b.u32()? },
        k => return Err(format!("a frame of the unknown kind {k}")),
    };
    b.end()?;
    Ok(f)
}
