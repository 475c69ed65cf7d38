//! The data plane between TaskManager processes: logical channels carrying
//! [`StreamElement`](super::StreamElement)s, multiplexed over one TCP connection per pair of
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
//! senders with [`ChannelClosed`](super::ChannelClosed).
//!
//! The files, each using only those below it:
//!
//! ```text
//! plane       DataPlane: the listener, the connections both ways and their
//!             reader threads, release, the counters
//! receiver    the consumer side: a gate's channels, credits back, the
//!             floating credits of a gate
//! sender      the producer side: channels, credit, coalescing buffers,
//!             subscriptions, the sender
//! flusher     the buffer timeout: deadlines and the thread that flushes
//! connection  one TCP connection: the shared writer, the bounded reader,
//!             the hellos, the byte counters
//! error       NetworkError
//! config      NetworkConfig
//! frame       the wire format: kinds, bounds, encoding, decoding
//! key         ChannelKey
//! ```

use std::sync::{Mutex, MutexGuard};

mod config;
mod connection;
mod error;
mod flusher;
mod frame;
mod key;
mod plane;
mod receiver;
mod sender;
#[cfg(test)]
mod tests;

pub use config::NetworkConfig;
pub use error::NetworkError;
pub use frame::PROTOCOL_VERSION;
pub use key::ChannelKey;
pub use plane::DataPlane;

/// `m` locked, even if a thread panicked holding it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
