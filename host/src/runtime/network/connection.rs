//! One TCP connection, whatever it carries: the writer its threads share
//! (one frame at a time; a peer that reads nothing kills the connection),
//! the reader that bounds every length before it allocates, the hellos both
//! ends exchange first, and the bytes counted both ways.

use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::config::NetworkConfig;
use super::error::NetworkError;
use super::frame::{self, DATA, Frame, MAX_CONTROL_BODY, MAX_ELEMENT_BODY, PROTOCOL_VERSION, TAG_RECORDS, kind_name};
use super::lock;

/// How often a waiting sender looks whether its channel was closed (and a
/// blocked write whether its connection died).
pub(super) const WAIT_SLICE: Duration = Duration::from_millis(100);
/// A write that makes no progress for this long kills its connection.
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Bytes on the wire, both ways, every connection.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
}

// ---------------------------------------------------------------------------
// Writing

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
pub(super) struct Wire {
    pub(super) peer: SocketAddr,
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
    pub(super) fn send(&self, head: &[u8], body: &[u8]) -> io::Result<()> {
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

    pub(super) fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        let _ = self.control.shutdown(Shutdown::Both);
    }

    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------
// Reading

/// Why a connection's reader stopped.
#[derive(Debug)]
pub(super) enum ReadError {
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

/// Reads frames from one connection, bounding every length first.
pub(super) struct FrameReader {
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
    pub(super) fn next(&mut self) -> Result<Frame, ReadError> {
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
        let (id, backlog, tag) = frame::data_head(&self.exact::<9>()?);
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
            let element = frame::decode_records(id, bytes, count).map_err(ReadError::Protocol)?;
            return Ok(Frame::Data { id, backlog, element });
        }
        if rest > MAX_ELEMENT_BODY {
            return Err(ReadError::Protocol(format!("channel {id}: a control element of {rest} bytes")));
        }
        let mut body = [0u8; MAX_ELEMENT_BODY];
        self.r.read_exact(&mut body[..rest])?;
        let element = frame::decode_element(id, tag, &body[..rest]).map_err(ReadError::Protocol)?;
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
        frame::decode_control_frame(kind, &body[..rest]).map_err(ReadError::Protocol)
    }
}

/// Log why a connection's reader stopped.
pub(super) fn report(peer: SocketAddr, role: &str, result: Result<(), ReadError>) {
    match result {
        Ok(()) | Err(ReadError::Closed) => tracing::debug!(%peer, "the data connection of a {role} closed"),
        Err(ReadError::Io(e)) => tracing::debug!(%peer, "the data connection of a {role} failed: {e}"),
        Err(ReadError::Protocol(p)) => {
            tracing::warn!(%peer, "closing the data connection of a {role} at {peer}: {p}")
        }
    }
}

// ---------------------------------------------------------------------------
// Handshake

/// Producer side: the writer and reader of a connection a consumer opened,
/// its hello still to come (within the connect timeout).
pub(super) fn accepted(stream: &TcpStream, peer: SocketAddr, cfg: &NetworkConfig, stats: &Arc<Stats>) -> io::Result<(Wire, FrameReader)> {
    stream.set_read_timeout(Some(cfg.connect_timeout))?;
    let wire = Wire::new(stream, peer, stats.clone())?;
    let read = stream.try_clone()?;
    Ok((wire, FrameReader::new(read, cfg.max_frame_bytes, stats.clone())))
}

/// Producer side: the consumer's hello, answered with this process's; then
/// reads wait as long as it takes.
pub(super) fn answer_hello(reader: &mut FrameReader, wire: &Wire) -> Result<(), ReadError> {
    match reader.next()? {
        Frame::Hello { version } => {
            wire.send(frame::hello().finish(0), &[])?;
            if version != PROTOCOL_VERSION {
                return Err(ReadError::Protocol(format!(
                    "it speaks protocol version {version}, this process {PROTOCOL_VERSION}"
                )));
            }
        }
        f => return Err(ReadError::Protocol(format!("a {} frame before the hello", f.name()))),
    }
    reader.r.get_ref().set_read_timeout(None)?;
    Ok(())
}

/// Consumer side: a connection to the producer at `peer`, hellos exchanged.
pub(super) fn open(peer: SocketAddr, cfg: &NetworkConfig, stats: &Arc<Stats>) -> Result<(Wire, FrameReader), NetworkError> {
    let io = |source| NetworkError::Io { peer, source };
    let handshake = |reason: String| NetworkError::Handshake { peer, reason };
    let stream = TcpStream::connect_timeout(&peer, cfg.connect_timeout).map_err(|source| NetworkError::Connect { peer, source })?;
    let wire = Wire::new(&stream, peer, stats.clone()).map_err(io)?;
    stream.set_read_timeout(Some(cfg.connect_timeout)).map_err(io)?;
    wire.send(frame::hello().finish(0), &[]).map_err(io)?;
    let mut reader = FrameReader::new(stream, cfg.max_frame_bytes, stats.clone());
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
    Ok((wire, reader))
}
