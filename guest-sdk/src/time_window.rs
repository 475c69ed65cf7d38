//! The window type shared by the host and guests.

/// A time window: `[start, end)` in milliseconds since the Unix epoch. A
/// global window (and a count window) is `[i64::MIN, i64::MAX)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    /// First millisecond.
    pub start: i64,
    /// First millisecond after the window.
    pub end: i64,
}

impl Window {
    /// The window of global and count windows.
    pub const GLOBAL: Window = Window {
        start: i64::MIN,
        end: i64::MAX,
    };

    /// The last millisecond in the window: when it fires.
    pub fn max_timestamp(&self) -> i64 {
        self.end.saturating_sub(1)
    }

    /// True for the global window.
    pub fn is_global(&self) -> bool {
        *self == Window::GLOBAL
    }

    /// 16 bytes that sort like the window (start, then end).
    pub fn encode(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&((self.start as u64) ^ (1 << 63)).to_be_bytes());
        b[8..].copy_from_slice(&((self.end as u64) ^ (1 << 63)).to_be_bytes());
        b
    }

    /// The inverse of [`encode`](Self::encode).
    pub fn decode(b: &[u8]) -> Option<Window> {
        let start = u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63);
        let end = u64::from_be_bytes(b.get(8..16)?.try_into().ok()?) ^ (1 << 63);
        Some(Window {
            start: start as i64,
            end: end as i64,
        })
    }

    /// True when the windows overlap or touch (sessions that merge).
    pub fn intersects(&self, other: &Window) -> bool {
        self.start <= other.end && self.end >= other.start
    }

    /// The smallest window covering both.
    pub fn cover(&self, other: &Window) -> Window {
        Window {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// True when `other` lies inside this window.
    pub fn contains(&self, other: &Window) -> bool {
        self.start <= other.start && other.end <= self.end
    }
}
