//! Why the consumer side could not set up its channels.

use std::io;
use std::net::SocketAddr;

use super::key::ChannelKey;

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
