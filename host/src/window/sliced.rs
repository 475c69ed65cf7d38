//! Sliding windows by slices: a record is added once, to the slice (one
//! `slide` long) it falls in, instead of to each of the `size / slide`
//! windows that overlap it; a window's result merges its slices when it
//! fires. This is how Flink computes hopping windows in SQL ("window
//! slicing"), and it makes the cost per record independent of the overlap.
//!
//! It applies to the host's built-in aggregates (their accumulators merge)
//! over event-time sliding windows whose size is a multiple of the slide,
//! with the default trigger and no allowed lateness; other sliding windows
//! keep an accumulator per window.
//!
//! State, per key: one `window-contents` entry under the empty user key (a
//! window's entry is 16 bytes, so they cannot meet) holding the key's
//! slices in order, each `start: i64 LE` then the 9-byte accumulator.
//! Timers have the empty namespace: one at the end of the earliest window
//! not yet fired that holds a slice, and each firing registers the next.

use super::Window;

/// One slice's encoded size: start and accumulator.
const SLICE_BYTES: usize = 8 + 9;

/// The geometry of sliced windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Slicing {
    pub size: i64,
    pub slide: i64,
    pub offset: i64,
}

/// A key's slices, ordered by start.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Slices(pub Vec<(i64, [u8; 9])>);

impl Slices {
    /// Read stored slices; `None` when the bytes are not a slice list.
    pub fn decode(bytes: &[u8]) -> Option<Slices> {
        if !bytes.len().is_multiple_of(SLICE_BYTES) {
            return None;
        }
        let slices = bytes
            .chunks_exact(SLICE_BYTES)
            .map(|c| {
                let (start, acc) = c.split_at(8);
                (
                    i64::from_le_bytes(start.try_into().expect("8 bytes")),
                    acc.try_into().expect("9 bytes"),
                )
            })
            .collect();
        Some(Slices(slices))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * SLICE_BYTES);
        for (start, acc) in &self.0 {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(acc);
        }
        out
    }

    /// The accumulator of the slice starting at `start`, if present, and
    /// where it is (or would go).
    pub fn find(&self, start: i64) -> (usize, Option<[u8; 9]>) {
        // Slices are few (size / slide, and what runs ahead of the
        // watermark), and new ones go last: search from the back.
        let mut i = self.0.len();
        while i > 0 && self.0[i - 1].0 > start {
            i -= 1;
        }
        match i.checked_sub(1).map(|j| self.0[j]) {
            Some((s, acc)) if s == start => (i - 1, Some(acc)),
            _ => (i, None),
        }
    }

    /// Store the accumulator of the slice starting at `start`, at the
    /// position [`Slices::find`] gave.
    pub fn store(&mut self, at: usize, start: i64, acc: [u8; 9], existed: bool) {
        if existed {
            self.0[at].1 = acc;
        } else {
            self.0.insert(at, (start, acc));
        }
    }
}

impl Slicing {
    /// The slice holding time `t`: the start of the latest window with `t`.
    pub fn slice_of(&self, t: i64) -> i64 {
        t.saturating_sub(t.wrapping_sub(self.offset).rem_euclid(self.slide))
    }

    /// The window ending at `max_timestamp` + 1.
    pub fn window_ending_at(&self, max_timestamp: i64) -> Window {
        let end = max_timestamp.saturating_add(1);
        Window {
            start: end.saturating_sub(self.size),
            end,
        }
    }

    /// The last millisecond of the last window holding slice `start`: once
    /// the watermark reaches it, the slice is no longer needed.
    pub fn last_fire_of(&self, start: i64) -> i64 {
        start.saturating_add(self.size).saturating_sub(1)
    }

    /// The earliest window end (its last millisecond) after `watermark` of a
    /// window holding slice `start`; none when all have fired.
    pub fn next_fire_of(&self, start: i64, watermark: i64) -> Option<i64> {
        let first = start.saturating_add(self.slide).saturating_sub(1);
        if first > watermark {
            return Some(first);
        }
        if self.last_fire_of(start) <= watermark {
            return None;
        }
        // Windows holding the slice end every `slide` from `first`.
        let behind = watermark.saturating_sub(first);
        let steps = behind / self.slide + 1;
        Some(first.saturating_add(steps.saturating_mul(self.slide)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_find_their_windows_and_round_trip() {
        let s = Slicing {
            size: 1000,
            slide: 250,
            offset: 0,
        };
        assert_eq!(s.slice_of(1249), 1000);
        assert_eq!(s.slice_of(-1), -250);
        // Slice [1000, 1250) is in the windows ending 1250, 1500, 1750, 2000.
        assert_eq!(s.next_fire_of(1000, i64::MIN), Some(1249));
        assert_eq!(s.next_fire_of(1000, 1249), Some(1499));
        assert_eq!(s.next_fire_of(1000, 1600), Some(1749));
        assert_eq!(s.next_fire_of(1000, 1998), Some(1999));
        assert_eq!(s.next_fire_of(1000, 1999), None);
        assert_eq!(s.last_fire_of(1000), 1999);
        assert_eq!(s.window_ending_at(1999), Window { start: 1000, end: 2000 });

        let mut slices = Slices::default();
        for start in [500, 0, 250, 500] {
            let (at, acc) = slices.find(start);
            slices.store(at, start, [start as u8; 9], acc.is_some());
        }
        assert_eq!(slices.0.iter().map(|s| s.0).collect::<Vec<_>>(), [0, 250, 500]);
        assert_eq!(Slices::decode(&slices.encode()), Some(slices.clone()));
        assert_eq!(Slices::decode(&[1, 2, 3]), None);
    }
}
