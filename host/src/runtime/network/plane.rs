//! The data plane of one process: the listener and its accept thread, the
//! flusher thread, the connections both ways (a reader thread each), the
//! release of an attempt's channels, and the counters.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::NetworkConfig;
use super::connection::{self, FrameReader, ReadError, Stats, WAIT_SLICE};
use super::error::NetworkError;
use super::flusher::Flusher;
use super::key::ChannelKey;
use super::lock;
use super::receiver::{self, ClientConn};
use super::sender::{Producer, ServerConn};
use crate::runtime::channel::{ElementSender, LocalReceiver};

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
    producer: Arc<Producer>,
    /// Buffers to flush when their timeout is up.
    flusher: Arc<Flusher>,
    /// Producer side: accepted connections, by serial.
    servers: Mutex<HashMap<u64, Arc<ServerConn>>>,
    next_serial: AtomicU64,
    /// Consumer side: the connection to each producer.
    clients: Mutex<HashMap<SocketAddr, Arc<ClientConn>>>,
}

impl DataPlane {
    /// Listen on `addr` (port 0 picks one) and start the accept and flusher
    /// threads.
    pub fn bind(addr: SocketAddr, cfg: NetworkConfig) -> io::Result<Arc<DataPlane>> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let cfg = cfg.sanitized();
        let flusher = Arc::new(Flusher::new(cfg.buffer_timeout));
        let shared = Arc::new(Shared {
            producer: Arc::new(Producer::new(cfg.clone(), flusher.clone())),
            flusher,
            cfg,
            addr: local,
            stats: Arc::default(),
            stopping: AtomicBool::new(false),
            servers: Mutex::default(),
            next_serial: AtomicU64::new(0),
            clients: Mutex::default(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("sluice-data-accept".into())
            .spawn(move || s.accept(listener))?;
        let f = shared.flusher.clone();
        std::thread::Builder::new()
            .name("sluice-data-flush".into())
            .spawn(move || f.run())?;
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
        self.shared.producer.sender(key)
    }

    /// Consumer side: the receiving ends of the channels of one input gate,
    /// each produced at a remote [`DataPlane`]'s address. Connects to each
    /// address (or reuses the connection), subscribes each channel and
    /// grants its exclusive credits; the gate's floating credits are shared
    /// by these channels. The receivers go into a
    /// [`LocalInputGate`](crate::runtime::LocalInputGate), next to in-process ones.
    pub fn receivers(&self, channels: Vec<(ChannelKey, SocketAddr)>) -> Result<Vec<LocalReceiver>, NetworkError> {
        receiver::receivers(&self.shared.cfg, channels, |peer| self.shared.client(peer))
    }

    /// Forget every channel of (`job`, `attempt`): its blocked senders fail
    /// with [`ChannelClosed`](crate::runtime::ChannelClosed), its receivers
    /// end (the gate fails with `ChannelClosed`), later frames and
    /// subscriptions for it are dropped.
    pub fn release(&self, job: &str, attempt: u32) {
        self.shared.producer.release(job, attempt);
        let clients: Vec<_> = lock(&self.shared.clients).values().cloned().collect();
        for conn in clients {
            conn.release(job, attempt);
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
        self.flusher.stop();
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
        let (wire, mut reader) = match connection::accepted(&stream, peer, &self.cfg, &self.stats) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%peer, "setting up a data connection failed: {e}");
                return;
            }
        };
        let conn = Arc::new(ServerConn::new(wire));
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        lock(&self.servers).insert(serial, conn.clone());
        if self.stopping.load(Ordering::SeqCst) {
            conn.wire.kill();
        }
        let result: Result<(), ReadError> = (|| {
            connection::answer_hello(&mut reader, &conn.wire)?;
            loop {
                let frame = reader.next()?;
                self.producer.on_consumer_frame(&conn, frame)?;
            }
        })();
        connection::report(peer, "consumer", result);
        conn.wire.kill();
        lock(&self.servers).remove(&serial);
        self.producer.disconnected(&conn);
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
        let (wire, reader) = connection::open(peer, &self.cfg, &self.stats)?;
        let conn = Arc::new(ClientConn::new(wire));
        let (s, c) = (self.clone(), conn.clone());
        std::thread::Builder::new()
            .name("sluice-data-out".into())
            .spawn(move || s.read_producer(c, reader))
            .map_err(|source| NetworkError::Io { peer, source })?;
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
        connection::report(conn.wire.peer, "producer", result);
        conn.lost();
        let mut clients = lock(&self.clients);
        if clients.get(&conn.wire.peer).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            clients.remove(&conn.wire.peer);
        }
    }
}
