//! The data plane between TaskManager processes: logical channels carrying
//! [`StreamElement`]s, multiplexed over one TCP connection per pair of
//! processes and direction, with Flink's credit-based flow control.
//!
//! ```text
//!  producer process (DataPlane P)                 consumer process (DataPlane C)
//!  task ─► OutSender(ch 7) ─┐ buffer: records        receivers([ch 7, ch 9]) ─► one input gate
//!  task ─► OutSender(ch 9) ─┤ coalesce to             ├ connects to P (or reuses the connection)
//!    flusher thread ────────┘ buffer_bytes, or        ├ SUBSCRIBE(id, key, exclusive credits)
//!                             buffer_timeout          │
//!        accept thread ◄════════ one TCP connection ══╡ (C connects to P: C reads P's data)
//!        reader thread ◄── SUBSCRIBE · CREDIT · CANCEL ── gate thread: a credit back per element taken
//!        task threads  ──► DATA(id, backlog, element) · BACKLOG · CLOSE ──► reader thread
//!                                                       └► bounded queue per channel ─► LocalInputGate
//! ```
//!
//! Flow control, as in Flink: a producer sends one frame (one element: a
//! coalesced record batch, a watermark, idleness, a barrier, the end of data)
//! per credit. The consumer grants `exclusive_credits` per channel when it
//! subscribes and returns one each time its gate takes an element; data
//! frames announce the producer's backlog (and a producer out of credit
//! announces it once in a BACKLOG frame), and the gate hands credits from its
//! pool of `floating_credits` to channels with a backlog, taking them back
//! as they are consumed while the backlog is covered. A channel's queue
//! therefore never holds more elements than credits: the reader thread never
//! blocks, and a slow consumer of one channel stops only that channel's
//! producer while the others on the same connection keep flowing. A frame
//! without credit is a protocol error.
//!
//! The wire format (little-endian) is a sequence of frames
//! `len u32 | kind u8 | body` where `len` counts `kind` and `body`:
//!
//! ```text
//! HELLO     1  "SLDP" version u8                       both ways, first
//! SUBSCRIBE 2  id u32 credits u32 attempt u32 channel u32 job-len u16 job   consumer ─► producer
//! CREDIT    3  id u32 n u32                            consumer ─► producer
//! CANCEL    4  id u32                                  consumer ─► producer
//! DATA     16  id u32 backlog u32 tag u8 element       producer ─► consumer (costs a credit)
//!              tag 0 records: count u32 packed-batch · 1 watermark: i64 · 2 idle: u8
//!                  3 barrier: id u64 kind u8 (0 checkpoint, 1 savepoint) stop u8 aligned u8
//!                  4 end of data
//! BACKLOG  17  id u32 backlog u32                      producer ─► consumer (out of credit)
//! CLOSE    18  id u32                                  producer ─► consumer (the sender is gone)
//! ```
//!
//! `id` names a channel on its connection; the consumer picks it when it
//! subscribes a [`ChannelKey`]. Every length read from the network is
//! bounded before anything is allocated and every record batch is
//! validated; a malformed frame closes its connection (with a warning naming
//! the peer and the problem) and fails the channels on it, never the process.
//! A lost connection fails the consumer's gate at once and the producer's
//! senders with [`ChannelClosed`].

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::fmt;
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError, bounded};
use sluice_guest::batch::Batch;

use super::channel::{ChannelClosed, ElementSender, LocalReceiver, ReceiverHooks, RecordBatch, StreamElement};
use crate::checkpoint::{Barrier, BarrierKind};

/// The version of the wire format, exchanged in the hello frames.
pub const PROTOCOL_VERSION: u8 = 1;
const MAGIC: [u8; 4] = *b"SLDP";

const HELLO: u8 = 1;
const SUBSCRIBE: u8 = 2;
const CREDIT: u8 = 3;
const CANCEL: u8 = 4;
const DATA: u8 = 16;
const BACKLOG: u8 = 17;
const CLOSE: u8 = 18;

const TAG_RECORDS: u8 = 0;
const TAG_WATERMARK: u8 = 1;
const TAG_IDLE: u8 = 2;
const TAG_BARRIER: u8 = 3;
const TAG_END: u8 = 4;

/// Bytes of a records frame after its length and before its batch: kind,
/// id, backlog, tag, count.
const RECORDS_HEADER: usize = 1 + 4 + 4 + 1 + 4;
/// Longest job id a subscription may carry.
const MAX_JOB_BYTES: usize = 1024;
/// Largest body of any frame but a records frame.
const MAX_CONTROL_BODY: usize = 2 * MAX_JOB_BYTES;
/// Most channels one connection may subscribe.
const MAX_CHANNELS_PER_CONNECTION: usize = 1 << 16;
/// How often a waiting sender looks whether its channel was closed.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// A write that makes no progress for this long kills its connection.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// Released (job, attempt)s remembered, so late subscriptions are refused.
const RELEASED_MEMORY: usize = 4096;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settings of a [`DataPlane`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Credits (buffers) each channel gets for itself.
    pub exclusive_credits: u32,
    /// Extra credits per input gate, handed to channels that announce a
    /// backlog.
    pub floating_credits: u32,
    /// A producer accumulates the record batches of a channel up to this
    /// many bytes before sending them in one frame.
    pub buffer_bytes: usize,
    /// ... and sends a non-empty buffer after this long anyway.
    pub buffer_timeout: Duration,
    /// Frames larger than this are a protocol error (a larger batch is sent
    /// in pieces).
    pub max_frame_bytes: usize,
    /// How long connecting to a producer (and its hello) may take.
    pub connect_timeout: Duration,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            exclusive_credits: 2,
            floating_credits: 8,
            buffer_bytes: 32 << 10,
            buffer_timeout: Duration::from_millis(100),
            max_frame_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl NetworkConfig {
    /// The settings made workable: frames of at least 1 KiB, a buffer that
    /// fits in a frame, at least one credit per gate.
    fn sanitized(mut self) -> Self {
        self.max_frame_bytes = self.max_frame_bytes.clamp(1024, u32::MAX as usize);
        self.buffer_bytes = self.buffer_bytes.clamp(1, self.max_batch());
        self.buffer_timeout = self.buffer_timeout.max(Duration::from_millis(1));
        if self.exclusive_credits == 0 && self.floating_credits == 0 {
            self.exclusive_credits = 1;
        }
        self
    }

    /// Most bytes of packed records one frame carries.
    fn max_batch(&self) -> usize {
        self.max_frame_bytes - RECORDS_HEADER
    }
}

/// Identity of one logical channel across the cluster: (job id, execution
/// attempt, channel number in the job's plan).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The job (on a TaskManager, `job-id/fencing-token`).
    pub job: String,
    /// The execution attempt.
    pub attempt: u32,
    /// The channel's number in the attempt's plan.
    pub channel: u32,
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attempt {} channel {}", self.job, self.attempt, self.channel)
    }
}

/// Why the consumer side could not set up its channels.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// No TCP connection to the producer.
    #[error("cannot connect to the data plane at {peer}: {source}")]
    Connect {
        /// The producer's data address.
        peer: SocketAddr,
        /// What the connect failed with.
        source: io::Error,
    },
    /// The producer did not answer the hello as this process speaks.
    #[error("the data plane at {peer} failed the handshake: {reason}")]
    Handshake {
        /// The producer's data address.
        peer: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// Writing to (or setting up) the connection failed.
    #[error("the data connection to {peer} failed: {source}")]
    Io {
        /// The producer's data address.
        peer: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The connection was closed while the channels were subscribed.
    #[error("the data connection to {peer} closed while subscribing")]
    Closed {
        /// The producer's data address.
        peer: SocketAddr,
    },
    /// A channel's job id is longer than the wire format carries (1 KiB).
    #[error("channel {key} (produced at {peer}): its job id of {} bytes is over the limit of 1024", key.job.len())]
    JobTooLong {
        /// The producer's data address.
        peer: SocketAddr,
        /// The channel.
        key: ChannelKey,
    },
}

/// Bytes on the wire, both ways, every connection.
#[derive(Debug, Default)]
struct Stats {
    sent: AtomicU64,
    received: AtomicU64,
}

// ---------------------------------------------------------------------------
// Encoding

/// A small frame, or the header of a records frame, built on the stack.
struct Head {
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
    fn finish(&mut self, body: usize) -> &[u8] {
        let len = (self.n - 4 + body) as u32;
        self.b[..4].copy_from_slice(&len.to_le_bytes());
        &self.b[..self.n]
    }
}

fn hello() -> Head {
    let mut h = Head::new(HELLO);
    h.put(&MAGIC).u8(PROTOCOL_VERSION);
    h
}

fn id_frame(kind: u8, id: u32) -> Head {
    let mut h = Head::new(kind);
    h.u32(id);
    h
}

fn subscribe_frame(id: u32, credits: u32, key: &ChannelKey) -> Vec<u8> {
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

/// The header of a data frame carrying a control element (the whole frame).
fn control_frame(id: u32, backlog: u32, element: &StreamElement) -> Head {
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
        // Records go through `records_head`; an empty batch is harmless.
        StreamElement::Records(_) => h.u8(TAG_RECORDS).u32(0),
    };
    h
}

fn records_head(id: u32, backlog: u32, count: u32) -> Head {
    let mut h = Head::new(DATA);
    h.u32(id).u32(backlog).u8(TAG_RECORDS).u32(count);
    h
}

/// Write `head` then `body`, resuming after write timeouts unless the
/// connection died or makes no progress for [`WRITE_STALL`].
fn write_all(w: &mut TcpStream, head: &[u8], body: &[u8], dead: &AtomicBool) -> io::Result<()> {
    let mut slices = [IoSlice::new(head), IoSlice::new(body)];
    let mut bufs = &mut slices[..];
    IoSlice::advance_slices(&mut bufs, 0);
    let mut progress = Instant::now();
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut bufs, n);
                progress = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                if dead.load(Ordering::SeqCst) {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                if progress.elapsed() > WRITE_STALL {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the peer read nothing for 30 s"));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The writing side of a connection, shared by the threads that write to it.
struct Wire {
    peer: SocketAddr,
    writer: Mutex<TcpStream>,
    /// To shut the connection down without waiting for a writer.
    control: TcpStream,
    dead: AtomicBool,
    stats: Arc<Stats>,
}

impl Wire {
    fn new(stream: &TcpStream, peer: SocketAddr, stats: Arc<Stats>) -> io::Result<Wire> {
        stream.set_nodelay(true)?;
        let writer = stream.try_clone()?;
        writer.set_write_timeout(Some(WAIT_SLICE))?;
        Ok(Wire {
            peer,
            writer: Mutex::new(writer),
            control: stream.try_clone()?,
            dead: AtomicBool::new(false),
            stats,
        })
    }

    /// Send one frame; a failure kills the connection.
    fn send(&self, head: &[u8], body: &[u8]) -> io::Result<()> {
        if self.is_dead() {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the data connection is closed"));
        }
        let mut w = lock(&self.writer);
        match write_all(&mut w, head, body, &self.dead) {
            Ok(()) => {
                self.stats.sent.fetch_add((head.len() + body.len()) as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                drop(w);
                self.kill();
                Err(e)
            }
        }
    }

    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.control.shutdown(Shutdown::Both);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// Decoding

/// A decoded frame.
#[derive(Debug)]
enum Frame {
    Hello { version: u8 },
    Subscribe { id: u32, credits: u32, key: ChannelKey },
    Credit { id: u32, n: u32 },
    Cancel { id: u32 },
    Data { id: u32, backlog: u32, element: StreamElement },
    Backlog { id: u32, backlog: u32 },
    Close { id: u32 },
}

fn kind_name(kind: u8) -> &'static str {
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
    fn name(&self) -> &'static str {
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

/// Why a connection's reader stopped.
#[derive(Debug)]
enum ReadError {
    /// The peer closed the connection between frames.
    Closed,
    /// Reading failed.
    Io(io::Error),
    /// The peer broke the protocol.
    Protocol(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
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

fn decode_control(tag: u8, b: &mut Body<'_>) -> Result<StreamElement, String> {
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
        t => return Err(format!("an element with the unknown tag {t}")),
    })
}

/// Reads frames from one connection, bounding every length first.
struct FrameReader {
    r: BufReader<TcpStream>,
    max_frame: usize,
    stats: Arc<Stats>,
}

impl FrameReader {
    fn new(stream: TcpStream, max_frame: usize, stats: Arc<Stats>) -> Self {
        FrameReader {
            r: BufReader::with_capacity(64 << 10, stream),
            max_frame,
            stats,
        }
    }

    fn exact<const N: usize>(&mut self) -> io::Result<[u8; N]> {
        let mut a = [0; N];
        self.r.read_exact(&mut a)?;
        Ok(a)
    }

    /// The next frame; [`ReadError::Closed`] on a clean end of stream.
    fn next(&mut self) -> Result<Frame, ReadError> {
        let mut len = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.r.read(&mut len[got..]) {
                Ok(0) if got == 0 => return Err(ReadError::Closed),
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        let len = u32::from_le_bytes(len) as usize;
        if len == 0 {
            return Err(ReadError::Protocol("an empty frame".into()));
        }
        if len > self.max_frame {
            return Err(ReadError::Protocol(format!(
                "a frame of {len} bytes, over the limit of {} bytes",
                self.max_frame
            )));
        }
        let [kind] = self.exact::<1>()?;
        let frame = if kind == DATA {
            self.data(len - 1)?
        } else {
            self.control(kind, len - 1)?
        };
        self.stats.received.fetch_add(4 + len as u64, Ordering::Relaxed);
        Ok(frame)
    }

    fn data(&mut self, rest: usize) -> Result<Frame, ReadError> {
        if rest < 9 {
            return Err(ReadError::Protocol(format!("a data frame of {} bytes", rest + 1)));
        }
        let head = self.exact::<9>()?;
        let mut b = Body { b: &head, what: "data" };
        let (id, backlog, tag) = (
            b.u32().map_err(ReadError::Protocol)?,
            b.u32().map_err(ReadError::Protocol)?,
            head[8],
        );
        let rest = rest - 9;
        if tag == TAG_RECORDS {
            if rest < 4 {
                return Err(ReadError::Protocol(format!("channel {id}: a records frame without a count")));
            }
            let count = u32::from_le_bytes(self.exact::<4>()?) as usize;
            let n = rest - 4;
            let mut bytes = Vec::with_capacity(n.min(1 << 20));
            (&mut self.r).take(n as u64).read_to_end(&mut bytes)?;
            if bytes.len() < n {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            match Batch::new(&bytes).validate() {
                Err(e) => return Err(ReadError::Protocol(format!("channel {id}: {e}"))),
                Ok(c) if c != count => {
                    return Err(ReadError::Protocol(format!(
                        "channel {id}: a batch of {c} records announced as {count}"
                    )));
                }
                Ok(_) => {}
            }
            let element = StreamElement::Records(RecordBatch { bytes, len: count });
            return Ok(Frame::Data { id, backlog, element });
        }
        if rest > 16 {
            return Err(ReadError::Protocol(format!("channel {id}: a control element of {rest} bytes")));
        }
        let mut body = [0u8; 16];
        self.r.read_exact(&mut body[..rest])?;
        let mut b = Body {
            b: &body[..rest],
            what: "data",
        };
        let element = decode_control(tag, &mut b)
            .and_then(|e| b.end().map(|()| e))
            .map_err(|e| ReadError::Protocol(format!("channel {id}: {e}")))?;
        Ok(Frame::Data { id, backlog, element })
    }

    fn control(&mut self, kind: u8, rest: usize) -> Result<Frame, ReadError> {
        if rest > MAX_CONTROL_BODY {
            return Err(ReadError::Protocol(format!(
                "a {} frame (kind {kind}) of {} bytes",
                kind_name(kind),
                rest + 1
            )));
        }
        let mut body = [0u8; MAX_CONTROL_BODY];
        self.r.read_exact(&mut body[..rest])?;
        let mut b = Body {
            b: &body[..rest],
            what: kind_name(kind),
        };
        let frame = (|| {
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
        })();
        frame.map_err(ReadError::Protocol)
    }
}

// ---------------------------------------------------------------------------
// The plane

/// One per TaskManager process: the data listener plus the client
/// connections. Dropping it closes every connection.
pub struct DataPlane {
    shared: Arc<Shared>,
}

struct Shared {
    cfg: NetworkConfig,
    addr: SocketAddr,
    stats: Arc<Stats>,
    stopping: AtomicBool,
    /// Producer side: channels with a sender, subscriptions waiting for one.
    out: Mutex<Outputs>,
    /// Producer side: accepted connections, by serial.
    servers: Mutex<HashMap<u64, Arc<ServerConn>>>,
    next_serial: AtomicU64,
    /// Consumer side: the connection to each producer.
    clients: Mutex<HashMap<SocketAddr, Arc<ClientConn>>>,
    /// Buffers to flush when their timeout is up.
    timers: Mutex<BinaryHeap<Due>>,
    timers_cv: Condvar,
    next_due: AtomicU64,
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
struct ServerConn {
    wire: Wire,
    links: Mutex<HashMap<u32, Link>>,
}

enum Link {
    Pending(ChannelKey),
    Live(Arc<OutChannel>),
}

/// A buffer's flush deadline (earliest first in the heap).
struct Due {
    at: Instant,
    seq: u64,
    ch: Weak<OutChannel>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl DataPlane {
    /// Listen on `addr` (port 0 picks one) and start the accept and flusher
    /// threads.
    pub fn bind(addr: SocketAddr, cfg: NetworkConfig) -> io::Result<Arc<DataPlane>> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared {
            cfg: cfg.sanitized(),
            addr: local,
            stats: Arc::default(),
            stopping: AtomicBool::new(false),
            out: Mutex::default(),
            servers: Mutex::default(),
            next_serial: AtomicU64::new(0),
            clients: Mutex::default(),
            timers: Mutex::default(),
            timers_cv: Condvar::new(),
            next_due: AtomicU64::new(0),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sluice-data-accept".into())
            .spawn(move || s.accept(listener))?;
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sluice-data-flush".into())
            .spawn(move || s.flusher())?;
        Ok(Arc::new(DataPlane { shared }))
    }

    /// The address consumers connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The settings in force (after making them workable: frames of at least
    /// 1 KiB, a buffer no larger than a frame, at least one credit).
    pub fn config(&self) -> &NetworkConfig {
        &self.shared.cfg
    }

    /// Producer side: the sender of channel `key` (its consumer subscribes
    /// to it over the network; until then it has no credit). A sender of a
    /// released attempt, or a second sender of a key, is closed at once.
    pub fn sender(&self, key: ChannelKey) -> Box<dyn ElementSender> {
        let ch = Arc::new(OutChannel::new(key.clone()));
        let mut out = lock(&self.shared.out);
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
            shared: self.shared.clone(),
        })
    }

    /// Consumer side: the receiving ends of the channels of one input gate,
    /// each produced at a remote [`DataPlane`]'s address. Connects to each
    /// address (or reuses the connection), subscribes each channel and
    /// grants its exclusive credits; the gate's floating credits are shared
    /// by these channels. The receivers go into a
    /// [`LocalInputGate`](super::LocalInputGate), next to in-process ones.
    pub fn receivers(&self, channels: Vec<(ChannelKey, SocketAddr)>) -> Result<Vec<LocalReceiver>, NetworkError> {
        let cfg = &self.shared.cfg;
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
            let conn = self.shared.client(peer)?;
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

    /// Forget every channel of (`job`, `attempt`): its blocked senders fail
    /// with [`ChannelClosed`], its receivers end (the gate fails with
    /// `ChannelClosed`), later frames and subscriptions for it are dropped.
    pub fn release(&self, job: &str, attempt: u32) {
        let s = &self.shared;
        let matches = |k: &ChannelKey| k.job == job && k.attempt == attempt;
        let (channels, pending) = {
            let mut out = lock(&s.out);
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
        let clients: Vec<_> = lock(&s.clients).values().cloned().collect();
        for conn in clients {
            let gone: Vec<Arc<InChannel>> = {
                let mut map = lock(&conn.channels);
                let ids: Vec<u32> = map.iter().filter(|(_, c)| matches(&c.key)).map(|(id, _)| *id).collect();
                ids.iter().filter_map(|id| map.remove(id)).collect()
            };
            for ch in gone {
                let was_done = ch.finish();
                if !was_done {
                    let _ = conn.wire.send(id_frame(CANCEL, ch.id).finish(0), &[]);
                }
            }
        }
    }

    /// Bytes written to data connections (frames of both roles).
    pub fn bytes_sent(&self) -> u64 {
        self.shared.stats.sent.load(Ordering::Relaxed)
    }

    /// Bytes read from data connections (frames of both roles).
    pub fn bytes_received(&self) -> u64 {
        self.shared.stats.received.load(Ordering::Relaxed)
    }

    /// Open connections: those this process opened to producers plus those
    /// consumers opened to it (a lost one counts until its channels are
    /// failed).
    pub fn connections(&self) -> usize {
        lock(&self.shared.clients).len() + lock(&self.shared.servers).len()
    }
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl Shared {
    fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.timers_cv.notify_all();
        // Wake the accept thread.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for c in lock(&self.servers).values() {
            c.wire.kill();
        }
        for c in lock(&self.clients).values() {
            c.wire.kill();
        }
    }

    fn accept(self: Arc<Self>, listener: TcpListener) {
        for stream in listener.incoming() {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            match stream {
                Ok(stream) => {
                    let s = self.clone();
                    let spawned = std::thread::Builder::new()
                        .name("sluice-data-in".into())
                        .spawn(move || s.serve(stream));
                    if let Err(e) = spawned {
                        tracing::warn!("cannot start a data-connection thread: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(addr = %self.addr, "accepting a data connection failed: {e}");
                    std::thread::sleep(WAIT_SLICE);
                }
            }
        }
    }

    /// The reader of a connection a consumer opened.
    fn serve(self: Arc<Self>, stream: TcpStream) {
        let Ok(peer) = stream.peer_addr() else { return };
        let setup = || -> io::Result<(Wire, TcpStream)> {
            stream.set_read_timeout(Some(self.cfg.connect_timeout))?;
            Ok((Wire::new(&stream, peer, self.stats.clone())?, stream.try_clone()?))
        };
        let (wire, read) = match setup() {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%peer, "setting up a data connection failed: {e}");
                return;
            }
        };
        let conn = Arc::new(ServerConn {
            wire,
            links: Mutex::default(),
        });
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        lock(&self.servers).insert(serial, conn.clone());
        if self.stopping.load(Ordering::SeqCst) {
            conn.wire.kill();
        }
        let mut reader = FrameReader::new(read, self.cfg.max_frame_bytes, self.stats.clone());
        let result: Result<(), ReadError> = (|| {
            match reader.next()? {
                Frame::Hello { version } => {
                    conn.wire.send(hello().finish(0), &[])?;
                    if version != PROTOCOL_VERSION {
                        return Err(ReadError::Protocol(format!(
                            "it speaks protocol version {version}, this process {PROTOCOL_VERSION}"
                        )));
                    }
                }
                f => return Err(ReadError::Protocol(format!("a {} frame before the hello", f.name()))),
            }
            reader.r.get_ref().set_read_timeout(None)?;
            loop {
                let frame = reader.next()?;
                self.on_consumer_frame(&conn, frame)?;
            }
        })();
        report(peer, "consumer", result);
        conn.wire.kill();
        lock(&self.servers).remove(&serial);
        // Fail what the connection carried.
        let links = std::mem::take(&mut *lock(&conn.links));
        for (id, link) in links {
            match link {
                Link::Live(ch) => {
                    ch.close();
                }
                Link::Pending(key) => {
                    let mut out = lock(&self.out);
                    if out.pending.get(&key).is_some_and(|p| Arc::ptr_eq(&p.conn, &conn) && p.id == id) {
                        out.pending.remove(&key);
                    }
                }
            }
        }
    }

    fn on_consumer_frame(&self, conn: &Arc<ServerConn>, frame: Frame) -> Result<(), ReadError> {
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
                            self.schedule(Instant::now(), &ch);
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
                self.schedule(Instant::now(), &ch);
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

    fn schedule(&self, at: Instant, ch: &Arc<OutChannel>) {
        let seq = self.next_due.fetch_add(1, Ordering::Relaxed);
        lock(&self.timers).push(Due {
            at,
            seq,
            ch: Arc::downgrade(ch),
        });
        self.timers_cv.notify_one();
    }

    /// Flushes buffers whose timeout is up.
    fn flusher(self: Arc<Self>) {
        let mut timers = lock(&self.timers);
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let wait = match timers.peek() {
                None => Duration::from_secs(1),
                Some(d) if d.at > now => d.at - now,
                Some(_) => {
                    let due = timers.pop();
                    drop(timers);
                    if let Some(ch) = due.and_then(|d| d.ch.upgrade()) {
                        self.flush_due(&ch);
                    }
                    timers = lock(&self.timers);
                    continue;
                }
            };
            timers = self.timers_cv.wait_timeout(timers, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    fn flush_due(&self, ch: &OutChannel) {
        let mut buf = lock(&ch.write);
        if buf.bytes.is_empty() || buf.since.is_none_or(|s| s + self.cfg.buffer_timeout > Instant::now()) {
            return;
        }
        let mut st = lock(&ch.state);
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
                ch.announce(&conn, id, 1);
            }
            return;
        }
        st.credit -= 1;
        st.overdue = false;
        drop(st);
        let _ = ch.write_buffer(&mut buf, &conn, id, 0);
    }

    /// The connection to `peer`, opened if there is none (or it died).
    fn client(self: &Arc<Self>, peer: SocketAddr) -> Result<Arc<ClientConn>, NetworkError> {
        let mut clients = lock(&self.clients);
        if let Some(c) = clients.get(&peer).filter(|c| !c.wire.is_dead()) {
            return Ok(c.clone());
        }
        let conn = self.connect(peer)?;
        clients.insert(peer, conn.clone());
        Ok(conn)
    }

    fn connect(self: &Arc<Self>, peer: SocketAddr) -> Result<Arc<ClientConn>, NetworkError> {
        let io = |source| NetworkError::Io { peer, source };
        let handshake = |reason: String| NetworkError::Handshake { peer, reason };
        let stream =
            TcpStream::connect_timeout(&peer, self.cfg.connect_timeout).map_err(|source| NetworkError::Connect { peer, source })?;
        let wire = Wire::new(&stream, peer, self.stats.clone()).map_err(io)?;
        stream.set_read_timeout(Some(self.cfg.connect_timeout)).map_err(io)?;
        wire.send(hello().finish(0), &[]).map_err(io)?;
        let mut reader = FrameReader::new(stream, self.cfg.max_frame_bytes, self.stats.clone());
        match reader.next() {
            Ok(Frame::Hello { version }) if version == PROTOCOL_VERSION => {}
            Ok(Frame::Hello { version }) => {
                return Err(handshake(format!(
                    "it speaks protocol version {version}, this process {PROTOCOL_VERSION}"
                )));
            }
            Ok(f) => return Err(handshake(format!("it answered the hello with a {} frame", f.name()))),
            Err(ReadError::Closed) => return Err(handshake("it closed the connection".into())),
            Err(ReadError::Io(e)) => return Err(handshake(format!("no hello: {e}"))),
            Err(ReadError::Protocol(p)) => return Err(handshake(p)),
        }
        reader.r.get_ref().set_read_timeout(None).map_err(io)?;
        let conn = Arc::new(ClientConn {
            wire,
            channels: Mutex::default(),
            next_id: AtomicU32::new(0),
        });
        let (s, c) = (self.clone(), conn.clone());
        std::thread::Builder::new()
            .name("sluice-data-out".into())
            .spawn(move || s.read_producer(c, reader))
            .map_err(io)?;
        Ok(conn)
    }

    /// The reader of a connection this process opened to a producer.
    fn read_producer(self: Arc<Self>, conn: Arc<ClientConn>, mut reader: FrameReader) {
        let result: Result<(), ReadError> = (|| {
            loop {
                let frame = reader.next()?;
                conn.on_producer_frame(frame)?;
            }
        })();
        report(conn.wire.peer, "producer", result);
        // Dead first: `receivers` fails a channel it adds after this.
        conn.wire.kill();
        let channels = std::mem::take(&mut *lock(&conn.channels));
        for ch in channels.into_values() {
            if !ch.done.load(Ordering::SeqCst) {
                ch.failed.store(true, Ordering::SeqCst);
            }
            ch.finish();
        }
        let mut clients = lock(&self.clients);
        if clients.get(&conn.wire.peer).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            clients.remove(&conn.wire.peer);
        }
    }
}

/// Log why a connection's reader stopped.
fn report(peer: SocketAddr, role: &str, result: Result<(), ReadError>) {
    match result {
        Ok(()) | Err(ReadError::Closed) => tracing::debug!(%peer, "the data connection of a {role} closed"),
        Err(ReadError::Io(e)) => tracing::debug!(%peer, "the data connection of a {role} failed: {e}"),
        Err(ReadError::Protocol(p)) => {
            tracing::warn!(%peer, "closing the data connection of a {role} at {peer}: {p}")
        }
    }
}

// ---------------------------------------------------------------------------
// Producer side

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
        let mut h = Head::new(BACKLOG);
        h.u32(id).u32(backlog);
        let _ = conn.wire.send(h.finish(0), &[]);
    }
}

/// The sending end of a network channel.
struct OutSender {
    ch: Arc<OutChannel>,
    shared: Arc<Shared>,
}

impl OutSender {
    /// Accept `element` if that needs no credit beyond what the channel has,
    /// waiting for credit when `wait`; otherwise give it back.
    fn offer(&self, element: StreamElement, wait: bool) -> Result<Option<StreamElement>, ChannelClosed> {
        let cfg = &self.shared.cfg;
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
                        self.shared.schedule(Instant::now() + cfg.buffer_timeout, &self.ch);
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
            let mut out = lock(&self.shared.out);
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

// ---------------------------------------------------------------------------
// Consumer side

/// A connection this process opened to a producer.
struct ClientConn {
    wire: Wire,
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
            let mut h = Head::new(CREDIT);
            h.u32(id).u32(n);
            // A failure kills the connection; its reader fails the channels.
            let _ = conn.wire.send(h.finish(0), &[]);
        }
    }
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
    fn channel(&self, id: u32) -> Option<Arc<InChannel>> {
        lock(&self.channels).get(&id).cloned()
    }

    fn on_producer_frame(&self, frame: Frame) -> Result<(), ReadError> {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::channel::{GateEvent, InputGate, LocalInputGate, local_channel};
    use sluice_guest::batch::BatchWriter;

    const T: Duration = Duration::from_secs(3);

    fn local() -> SocketAddr {
        "127.0.0.1:0".parse().unwrap()
    }

    fn key(channel: u32) -> ChannelKey {
        ChannelKey {
            job: "job-1/token".into(),
            attempt: 1,
            channel,
        }
    }

    fn batch(values: &[&[u8]]) -> RecordBatch {
        let mut w = BatchWriter::new();
        for (i, v) in values.iter().enumerate() {
            w.push(Some(b"k"), v, Some(i as i64));
        }
        RecordBatch {
            len: w.len(),
            bytes: w.finish(),
        }
    }

    fn records(e: &StreamElement) -> Option<&RecordBatch> {
        match e {
            StreamElement::Records(b) => Some(b),
            _ => None,
        }
    }

    /// The next event of the gate that is not a timeout, within `T`.
    fn next(gate: &mut LocalInputGate) -> Result<GateEvent, ChannelClosed> {
        let deadline = Instant::now() + T;
        loop {
            match gate.next(Duration::from_millis(20))? {
                GateEvent::Timeout if Instant::now() < deadline => {}
                GateEvent::Timeout => panic!("nothing arrived within {T:?}"),
                e => return Ok(e),
            }
        }
    }

    /// Consecutive record batches merged (the producer coalesces them).
    fn merged(elements: Vec<StreamElement>) -> Vec<StreamElement> {
        let mut out: Vec<StreamElement> = Vec::new();
        for e in elements {
            match (out.last_mut(), e) {
                (Some(StreamElement::Records(a)), StreamElement::Records(b)) => {
                    a.bytes.extend_from_slice(&b.bytes);
                    a.len += b.len;
                }
                (_, e) => out.push(e),
            }
        }
        out
    }

    fn script(channel: u32) -> Vec<StreamElement> {
        let mut out = Vec::new();
        let mut seed = channel as u64 * 7919 + 1;
        let value = |seed: &mut u64| {
            *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            vec![(*seed >> 56) as u8; (*seed >> 40) as usize % 100]
        };
        for round in 0..30 {
            for _ in 0..5 {
                let vs: Vec<Vec<u8>> = (0..(seed % 7 + 1)).map(|_| value(&mut seed)).collect();
                let refs: Vec<&[u8]> = vs.iter().map(|v| &v[..]).collect();
                out.push(StreamElement::Records(batch(&refs)));
            }
            out.push(match round % 4 {
                0 => StreamElement::Watermark(-5 + round as i64 * 1000),
                1 => StreamElement::Idle(round % 8 == 1),
                2 => StreamElement::Barrier(Barrier {
                    id: round as u64,
                    kind: BarrierKind::Checkpoint,
                    aligned: true,
                }),
                _ => StreamElement::Barrier(Barrier {
                    id: u64::MAX - round as u64,
                    kind: BarrierKind::Savepoint { stop: round % 8 == 3 },
                    aligned: false,
                }),
            });
        }
        // Larger than a frame: goes in pieces.
        let big: Vec<Vec<u8>> = (0..8).map(|i| vec![i; 700]).collect();
        out.push(StreamElement::Records(batch(&big.iter().map(|v| &v[..]).collect::<Vec<_>>())));
        out.push(StreamElement::EndOfData);
        out
    }

    #[test]
    fn elements_of_every_kind_arrive_in_order_over_one_connection() {
        let cfg = NetworkConfig {
            buffer_bytes: 600,
            buffer_timeout: Duration::from_millis(5),
            max_frame_bytes: 2048,
            ..Default::default()
        };
        let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
        let consumer = DataPlane::bind(local(), cfg).unwrap();
        let n = 8;
        // Half the senders exist before their consumer subscribes, half after.
        let mut early: Vec<_> = (0..n / 2).map(|c| Some(producer.sender(key(c)))).collect();
        let receivers = consumer
            .receivers((0..n).map(|c| (key(c), producer.local_addr())).collect())
            .unwrap();
        let (local_tx, local_rx) = local_channel(4, 1 << 20);
        let mut all = receivers;
        all.push(local_rx);
        let mut gate = LocalInputGate::new(all);
        let threads: Vec<_> = (0..n)
            .map(|c| {
                let tx = early
                    .get_mut(c as usize)
                    .and_then(Option::take)
                    .unwrap_or_else(|| producer.sender(key(c)));
                std::thread::spawn(move || {
                    for e in script(c) {
                        tx.send(e).unwrap();
                    }
                })
            })
            .collect();
        let local_thread = std::thread::spawn(move || {
            for e in script(99) {
                local_tx.send(e).unwrap();
            }
        });
        let mut got: Vec<Vec<StreamElement>> = vec![Vec::new(); n as usize + 1];
        loop {
            match next(&mut gate).unwrap() {
                GateEvent::Element(i, e) => got[i].push(e),
                GateEvent::Ended => break,
                GateEvent::Timeout => unreachable!(),
            }
        }
        for t in threads {
            t.join().unwrap();
        }
        local_thread.join().unwrap();
        for (c, got) in got.into_iter().enumerate() {
            let script = script(if c == n as usize { 99 } else { c as u32 });
            let frames = got.len();
            assert_eq!(merged(got), merged(script.clone()), "channel {c}");
            if c < n as usize {
                assert!(
                    frames < script.len(),
                    "channel {c}: batches coalesced ({frames} of {})",
                    script.len()
                );
            }
        }
        assert_eq!(consumer.connections(), 1, "one connection carries every channel");
        assert_eq!(producer.connections(), 1);
        assert!(consumer.bytes_received() > 100_000);
        assert_eq!(producer.bytes_sent(), consumer.bytes_received());
    }

    #[test]
    fn credits_backpressure_one_channel_while_others_flow() {
        let cfg = NetworkConfig {
            exclusive_credits: 2,
            floating_credits: 3,
            buffer_bytes: 1,
            ..Default::default()
        };
        let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
        let consumer = DataPlane::bind(local(), cfg).unwrap();
        let (a, b) = (producer.sender(key(0)), producer.sender(key(1)));
        let addr = producer.local_addr();
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), addr), (key(1), addr)]).unwrap());
        gate.set_blocked(0, true);
        // Nobody reads A: its producer stops after its exclusive credits
        // plus the floating ones its backlog earned.
        let mut accepted = 0;
        let mut progress = Instant::now();
        let start = Instant::now();
        while progress.elapsed() < Duration::from_millis(300) && start.elapsed() < T {
            let e = StreamElement::Records(batch(&[b"a"]));
            match a.try_send(e.clone()).unwrap() {
                None => {
                    accepted += 1;
                    progress = Instant::now();
                }
                Some(back) => {
                    assert_eq!(back, e, "the element comes back");
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        assert_eq!(accepted, 5, "exclusive + floating frames, then A waits");
        // B, on the same connection, keeps flowing.
        let sent_b = std::thread::spawn(move || {
            for i in 0..100u32 {
                b.send(StreamElement::Records(batch(&[&i.to_le_bytes()]))).unwrap();
            }
            b.send(StreamElement::EndOfData).unwrap();
        });
        let mut from_b = 0;
        loop {
            match next(&mut gate).unwrap() {
                GateEvent::Element(1, StreamElement::EndOfData) => break,
                GateEvent::Element(1, e) => {
                    assert_eq!(records(&e).unwrap().records().next().unwrap().value, (from_b as u32).to_le_bytes());
                    from_b += 1;
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(from_b, 100);
        sent_b.join().unwrap();
        assert!(a.try_send(StreamElement::Watermark(1)).unwrap().is_some(), "A still has no credit");
        assert_eq!(consumer.connections(), 1);
        // Reading A lets it continue.
        gate.set_blocked(0, false);
        let sent_a = std::thread::spawn(move || {
            for _ in 0..20 {
                a.send(StreamElement::Records(batch(&[b"a"]))).unwrap();
            }
            a.send(StreamElement::EndOfData).unwrap();
        });
        let mut from_a = 0;
        loop {
            match next(&mut gate).unwrap() {
                GateEvent::Element(0, StreamElement::Records(r)) => from_a += r.len,
                GateEvent::Element(0, StreamElement::EndOfData) => {}
                GateEvent::Ended => break,
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(from_a, 25);
        sent_a.join().unwrap();
    }

    #[test]
    fn small_batches_are_coalesced_and_a_lone_one_goes_after_the_timeout() {
        let cfg = NetworkConfig {
            buffer_bytes: 4096,
            buffer_timeout: Duration::from_millis(50),
            ..Default::default()
        };
        let producer = DataPlane::bind(local(), cfg.clone()).unwrap();
        let consumer = DataPlane::bind(local(), cfg).unwrap();
        let tx = producer.sender(key(0));
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), producer.local_addr())]).unwrap());
        let mut sent = Vec::new();
        for i in 0..150u32 {
            let b = batch(&[&i.to_le_bytes()]);
            sent.extend_from_slice(&b.bytes);
            assert_eq!(
                tx.try_send(StreamElement::Records(b)).unwrap(),
                None,
                "a small batch needs no credit"
            );
        }
        let (mut got, mut frames) = (Vec::new(), 0);
        while got.len() < sent.len() {
            match next(&mut gate).unwrap() {
                GateEvent::Element(0, StreamElement::Records(b)) => {
                    got.extend_from_slice(&b.bytes);
                    frames += 1;
                }
                e => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(got, sent, "the bytes arrive as sent");
        assert!(frames <= 3, "150 batches in {frames} frames");
        let started = Instant::now();
        tx.send(StreamElement::Records(batch(&[b"lone"]))).unwrap();
        match next(&mut gate).unwrap() {
            GateEvent::Element(0, StreamElement::Records(b)) => assert_eq!(b.len, 1),
            e => panic!("unexpected {e:?}"),
        }
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(40) && waited < Duration::from_millis(1000),
            "flushed after {waited:?}"
        );
        tx.send(StreamElement::EndOfData).unwrap();
        assert!(matches!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::EndOfData)));
    }

    /// A connection to `plane` that the plane closed.
    fn closed_by(plane: &DataPlane, bytes: &[u8]) {
        let mut s = TcpStream::connect(plane.local_addr()).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(bytes).unwrap();
        let mut sink = Vec::new();
        // Everything the plane sends (a hello, perhaps), then the end.
        match s.read_to_end(&mut sink) {
            Ok(_) => {}
            Err(e) => assert!(
                !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
                "the plane kept the connection open"
            ),
        }
    }

    /// A fake producer that answers the hello and the subscription with `frames`.
    fn fake_producer(frames: Vec<u8>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind(local()).unwrap();
        let addr = listener.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let mut hello_in = [0u8; 10];
            s.read_exact(&mut hello_in).unwrap();
            s.write_all(hello().finish(0)).unwrap();
            let mut len = [0u8; 4];
            s.read_exact(&mut len).unwrap();
            let mut sub = vec![0; u32::from_le_bytes(len) as usize];
            s.read_exact(&mut sub).unwrap();
            assert_eq!(sub[0], SUBSCRIBE);
            s.write_all(&frames).unwrap();
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        (addr, t)
    }

    fn records_frame(bytes: &[u8], count: u32) -> Vec<u8> {
        let mut f = records_head(0, 0, count).finish(bytes.len()).to_vec();
        f.extend_from_slice(bytes);
        f
    }

    #[test]
    fn a_malformed_frame_closes_its_connection_and_fails_its_channels() {
        let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
        let consumer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
        // At the producer: garbage, an oversized length, a long job id, a
        // data frame from a consumer.
        closed_by(&producer, b"GET / HTTP/1.1\r\nHost: sluice\r\n\r\n");
        let mut oversized = hello().finish(0).to_vec();
        oversized.extend_from_slice(&u32::MAX.to_le_bytes());
        closed_by(&producer, &oversized);
        let mut long_job = hello().finish(0).to_vec();
        long_job.extend_from_slice(&subscribe_frame(
            0,
            2,
            &ChannelKey {
                job: "j".repeat(1000),
                ..key(0)
            },
        ));
        let at = long_job.len() - 1000 - 2;
        long_job[at..at + 2].copy_from_slice(&2000u16.to_le_bytes());
        closed_by(&producer, &long_job);
        let mut data = hello().finish(0).to_vec();
        data.extend_from_slice(control_frame(0, 0, &StreamElement::Watermark(1)).finish(0));
        closed_by(&producer, &data);
        // At the consumer: a malformed batch, a wrong count, a frame without
        // credit (two exclusive credits), an unknown element.
        let good = batch(&[b"x", b"y"]);
        let mut bad_value = good.bytes.clone();
        bad_value.truncate(good.bytes.len() - 1);
        let mut no_credit = Vec::new();
        for _ in 0..3 {
            no_credit.extend_from_slice(&records_frame(&good.bytes, 2));
        }
        let mut unknown = control_frame(0, 0, &StreamElement::EndOfData).finish(0).to_vec();
        unknown[13] = 77;
        for frames in [records_frame(&bad_value, 2), records_frame(&good.bytes, 3), no_credit, unknown] {
            let (addr, fake) = fake_producer(frames);
            let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), addr)]).unwrap());
            // Not read at first: every frame meets the credits of the subscription.
            gate.set_blocked(0, true);
            std::thread::sleep(Duration::from_millis(100));
            gate.set_blocked(0, false);
            let mut failed = false;
            for _ in 0..4 {
                match next(&mut gate) {
                    Err(ChannelClosed) => {
                        failed = true;
                        break;
                    }
                    Ok(GateEvent::Element(0, StreamElement::Records(_))) => {}
                    Ok(e) => panic!("unexpected {e:?}"),
                }
            }
            assert!(failed, "the gate fails");
            fake.join().unwrap();
        }
        // Both planes still serve.
        let tx = producer.sender(key(5));
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(5), producer.local_addr())]).unwrap());
        tx.send(StreamElement::Watermark(7)).unwrap();
        assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Watermark(7)));
    }

    /// Sends until the sender fails, within `T`.
    fn fails(tx: &dyn ElementSender) {
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if tx.send(StreamElement::Watermark(0)) == Err(ChannelClosed) {
                return;
            }
        }
        panic!("the sender did not fail");
    }

    #[test]
    fn lost_connections_releases_and_dropped_ends_fail_the_other_side() {
        let consumer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
        // The producer's plane goes away: the gate fails at once, though an
        // element is still queued, and so does the sender.
        let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
        let tx = producer.sender(key(0));
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(0), producer.local_addr())]).unwrap());
        tx.send(StreamElement::Watermark(1)).unwrap();
        tx.send(StreamElement::Watermark(2)).unwrap();
        assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Watermark(1)));
        drop(producer);
        let deadline = Instant::now() + T;
        while consumer.connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(next(&mut gate), Err(ChannelClosed), "at once, with an element still queued");
        fails(&*tx);
        drop(tx);

        let producer = DataPlane::bind(local(), NetworkConfig::default()).unwrap();
        let addr = producer.local_addr();
        // Released at the consumer: the gate fails and the sender learns.
        let tx = producer.sender(key(1));
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(1), addr)]).unwrap());
        consumer.release("job-1/token", 1);
        assert_eq!(next(&mut gate), Err(ChannelClosed));
        fails(&*tx);
        drop((tx, gate));
        // Released at the producer: a waiting sender fails, and the gate.
        let key2 = ChannelKey { attempt: 2, ..key(2) };
        let tx = producer.sender(key2.clone());
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key2.clone(), addr)]).unwrap());
        gate.set_blocked(0, true);
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let waiting = std::thread::spawn(move || {
            for i in 0.. {
                tx.send(StreamElement::Watermark(i))?;
                counter.fetch_add(1, Ordering::SeqCst);
            }
            Ok::<(), ChannelClosed>(())
        });
        // Exclusive and floating credits used up, the sender waits.
        let deadline = Instant::now() + T;
        while sent.load(Ordering::SeqCst) < 10 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(sent.load(Ordering::SeqCst), 10, "2 exclusive + 8 floating credits");
        producer.release(&key2.job, 2);
        assert_eq!(waiting.join().unwrap(), Err(ChannelClosed), "the waiting sender fails");
        gate.set_blocked(0, false);
        let mut result = next(&mut gate);
        while let Ok(GateEvent::Element(0, StreamElement::Watermark(_))) = result {
            result = next(&mut gate);
        }
        assert_eq!(result, Err(ChannelClosed));
        // A dropped receiver fails its sender.
        let tx = producer.sender(key(3));
        let gate = LocalInputGate::new(consumer.receivers(vec![(key(3), addr)]).unwrap());
        tx.send(StreamElement::Idle(true)).unwrap();
        drop(gate);
        fails(&*tx);
        // A sender dropped without the end of data fails the gate.
        let tx = producer.sender(key(4));
        let mut gate = LocalInputGate::new(consumer.receivers(vec![(key(4), addr)]).unwrap());
        tx.send(StreamElement::Idle(false)).unwrap();
        drop(tx);
        assert_eq!(next(&mut gate).unwrap(), GateEvent::Element(0, StreamElement::Idle(false)));
        assert_eq!(next(&mut gate), Err(ChannelClosed));
        // A malformed address fails with the peer named.
        let err = consumer
            .receivers(vec![(key(6), "127.0.0.1:1".parse().unwrap())])
            .err()
            .expect("nobody listens on port 1");
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        let long = ChannelKey {
            job: "j".repeat(2000),
            ..key(7)
        };
        let err = consumer.receivers(vec![(long, addr)]).err().expect("a job id over 1 KiB");
        assert!(matches!(err, NetworkError::JobTooLong { .. }), "{err}");
    }
}
