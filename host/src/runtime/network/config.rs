//! The settings of a data plane, and how they are made workable.

use std::time::Duration;

use super::frame::RECORDS_HEADER;

/// Settings of a [`DataPlane`](super::DataPlane).
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
    pub(super) fn sanitized(mut self) -> Self {
        self.max_frame_bytes = self.max_frame_bytes.clamp(1024, u32::MAX as usize);
        self.buffer_bytes = self.buffer_bytes.clamp(1, self.max_batch());
        self.buffer_timeout = self.buffer_timeout.max(Duration::from_millis(1));
        if self.exclusive_credits == 0 && self.floating_credits == 0 {
            self.exclusive_credits = 1;
        }
        self
    }

    /// Most bytes of packed records one frame carries.
    pub(super) fn max_batch(&self) -> usize {
        self.max_frame_bytes - RECORDS_HEADER
    }
}
