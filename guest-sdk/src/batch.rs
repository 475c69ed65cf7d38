//! The packed batch format of `sluice:udf/types.batch`, shared by the host and
//! the Rust guest SDK.
//!
//! A batch is many records in one buffer, so one call crosses the Wasm boundary
//! for many records with one copy, instead of one allocation per field. Each
//! record is:
//!
//! ```text
//! flags u8 | [key-len u32 LE | key] | [timestamp i64 LE] | value-len u32 LE | value
//! ```
//!
//! where bit 0 of `flags` says a key follows and bit 1 a timestamp. Decoding
//! borrows from the buffer: reading a batch allocates nothing.
//!
//! ```
//! use sluice_guest::batch::{BatchWriter, Batch};
//! let mut w = BatchWriter::new();
//! w.push(Some(b"k"), b"hello", Some(7));
//! w.push(None, b"world", None);
//! let bytes = w.finish();
//! let records: Vec<_> = Batch::new(&bytes).iter().collect::<Result<_, _>>().unwrap();
//! assert_eq!(records[0].key, Some(&b"k"[..]));
//! assert_eq!(records[1].value, b"world");
//! assert_eq!(records[0].timestamp, Some(7));
//! ```

use std::fmt;

const HAS_KEY: u8 = 0b01;
const HAS_TIMESTAMP: u8 = 0b10;

/// One record, borrowed from a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// The record's key, if it has one.
    pub key: Option<&'a [u8]>,
    /// The record's value.
    pub value: &'a [u8],
    /// Event time in milliseconds since the Unix epoch, if assigned.
    pub timestamp: Option<i64>,
}

/// Why a buffer is not a valid batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchError {
    /// Byte offset of the record that failed to parse.
    pub offset: usize,
    /// Index of that record in the batch.
    pub record: usize,
    /// What was wrong.
    pub reason: &'static str,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed batch: record {} at byte {}: {}",
            self.record, self.offset, self.reason
        )
    }
}

impl std::error::Error for BatchError {}

/// A packed batch, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Batch<'a> {
    bytes: &'a [u8],
}

impl<'a> Batch<'a> {
    /// View `bytes` as a batch. Nothing is checked until records are read.
    pub fn new(bytes: &'a [u8]) -> Self {
        Batch { bytes }
    }

    /// The records, in order; an item is an error if the buffer is malformed
    /// at that point (and iteration ends after it).
    pub fn iter(&self) -> BatchIter<'a> {
        BatchIter {
            bytes: self.bytes,
            pos: 0,
            index: 0,
            failed: false,
        }
    }

    /// Check the whole buffer and count its records.
    pub fn validate(&self) -> Result<usize, BatchError> {
        let mut n = 0;
        for r in self.iter() {
            r?;
            n += 1;
        }
        Ok(n)
    }
}

/// Iterator over the records of a [`Batch`].
#[derive(Debug, Clone)]
pub struct BatchIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    index: usize,
    failed: bool,
}

impl<'a> BatchIter<'a> {
    fn take(&mut self, n: usize, start: usize, reason: &'static str) -> Result<&'a [u8], BatchError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(BatchError {
                offset: start,
                record: self.index,
                reason,
            }),
        }
    }

    fn read_u32(&mut self, start: usize, reason: &'static str) -> Result<usize, BatchError> {
        let b = self.take(4, start, reason)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn next_record(&mut self) -> Result<RecordRef<'a>, BatchError> {
        let start = self.pos;
        let flags = self.take(1, start, "truncated flags")?[0];
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 {
            return Err(BatchError {
                offset: start,
                record: self.index,
                reason: "unknown flag bits",
            });
        }
        let key = if flags & HAS_KEY != 0 {
            let len = self.read_u32(start, "truncated key length")?;
            Some(self.take(len, start, "key runs past the end of the batch")?)
        } else {
            None
        };
        let timestamp = if flags & HAS_TIMESTAMP != 0 {
            let b = self.take(8, start, "truncated timestamp")?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(i64::from_le_bytes(a))
        } else {
            None
        };
        let len = self.read_u32(start, "truncated value length")?;
        let value = self.take(len, start, "value runs past the end of the batch")?;
        self.index += 1;
        Ok(RecordRef { key, value, timestamp })
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = Result<RecordRef<'a>, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.bytes.len() {
            return None;
        }
        let r = self.next_record();
        self.failed = r.is_err();
        Some(r)
    }
}

/// Walk the headers of a batch's records without reading their values:
/// `f(has key, timestamp)` per record. `None` when the batch is malformed
/// (where [`BatchIter`] reports the fault); `f` has then seen the records
/// before it.
pub fn scan_headers(bytes: &[u8], mut f: impl FnMut(bool, Option<i64>)) -> Option<()> {
    let len_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let flags = bytes[pos];
        if flags & !(HAS_KEY | HAS_TIMESTAMP) != 0 {
            return None;
        }
        pos += 1;
        if flags & HAS_KEY != 0 {
            pos = pos.checked_add(4)?.checked_add(len_at(pos)?)?;
        }
        let timestamp = if flags & HAS_TIMESTAMP != 0 {
            let b = bytes.get(pos..pos.checked_add(8)?)?;
            pos += 8;
            Some(i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        } else {
            None
        };
        pos = pos.checked_add(4)?.checked_add(len_at(pos)?)?;
        if pos > bytes.len() {
            return None;
        }
        f(flags & HAS_KEY != 0, timestamp);
    }
    Some(())
}

/// Builds a packed batch.
#[derive(Debug, Default, Clone)]
pub struct BatchWriter {
    buf: Vec<u8>,
    len: usize,
}

impl BatchWriter {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty writer with room for `bytes` bytes.
    pub fn with_capacity(bytes: usize) -> Self {
        BatchWriter {
            buf: Vec::with_capacity(bytes),
            len: 0,
        }
    }

    /// Append a record.
    ///
    /// # Panics
    /// When the key or value is 4 GiB or larger (the format's limit).
    #[inline]
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>) {
        let flags = key.map_or(0, |_| HAS_KEY) | timestamp.map_or(0, |_| HAS_TIMESTAMP);
        self.buf.reserve(1 + 4 + 8 + 4 + key.map_or(0, <[u8]>::len) + value.len());
        self.buf.push(flags);
        if let Some(k) = key {
            self.buf.extend_from_slice(&len_u32(k.len()).to_le_bytes());
            self.buf.extend_from_slice(k);
        }
        if let Some(t) = timestamp {
            self.buf.extend_from_slice(&t.to_le_bytes());
        }
        self.buf.extend_from_slice(&len_u32(value.len()).to_le_bytes());
        self.buf.extend_from_slice(value);
        self.len += 1;
    }

    /// Append a record whose value is written by `write` straight into the
    /// batch (no intermediate buffer).
    #[inline]
    pub fn push_with(&mut self, key: Option<&[u8]>, timestamp: Option<i64>, write: impl FnOnce(&mut Vec<u8>)) {
        let flags = key.map_or(0, |_| HAS_KEY) | timestamp.map_or(0, |_| HAS_TIMESTAMP);
        self.buf.push(flags);
        if let Some(k) = key {
            self.buf.extend_from_slice(&len_u32(k.len()).to_le_bytes());
            self.buf.extend_from_slice(k);
        }
        if let Some(t) = timestamp {
            self.buf.extend_from_slice(&t.to_le_bytes());
        }
        let len_at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        let n = len_u32(self.buf.len() - len_at - 4);
        self.buf[len_at..len_at + 4].copy_from_slice(&n.to_le_bytes());
        self.len += 1;
    }

    /// Append a borrowed record.
    #[inline]
    pub fn push_ref(&mut self, r: &RecordRef<'_>) {
        self.push(r.key, r.value, r.timestamp);
    }

    /// Number of records written.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no record has been written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes written so far.
    pub fn byte_len(&self) -> usize {
        self.buf.len()
    }

    /// The packed bytes.
    pub fn finish(self) -> Vec<u8> {
        self.buf
    }

    /// The packed bytes, leaving the writer empty (keeping no capacity).
    pub fn take(&mut self) -> Vec<u8> {
        self.len = 0;
        std::mem::take(&mut self.buf)
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).expect("a key or value of 4 GiB or more cannot be packed into a batch")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_scanned_as_the_iterator_reads_them() {
        let mut w = BatchWriter::new();
        w.push(Some(b"k"), b"value", Some(7));
        w.push(None, b"", None);
        w.push(Some(b""), b"v", Some(-5));
        let bytes = w.finish();
        let mut seen = Vec::new();
        assert_eq!(scan_headers(&bytes, |k, t| seen.push((k, t))), Some(()));
        let expected: Vec<_> = Batch::new(&bytes)
            .iter()
            .map(|r| r.map(|r| (r.key.is_some(), r.timestamp)).unwrap())
            .collect();
        assert_eq!(seen, expected);
        // Cut anywhere inside the last record: the first two are seen, then
        // the scan reports the damage.
        for cut in 1..8 {
            let mut seen = Vec::new();
            assert_eq!(scan_headers(&bytes[..bytes.len() - cut], |k, t| seen.push((k, t))), None);
            assert_eq!(seen, expected[..2]);
        }
        assert_eq!(scan_headers(&[0b100], |_, _| {}), None);
    }

    #[test]
    fn round_trip_all_shapes() {
        let mut w = BatchWriter::new();
        w.push(None, b"", None);
        w.push(Some(b""), b"v", Some(-5));
        w.push_with(Some(b"key"), None, |b| b.extend_from_slice(b"written"));
        let bytes = w.finish();
        let got: Vec<_> = Batch::new(&bytes).iter().map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[0],
            RecordRef {
                key: None,
                value: b"",
                timestamp: None
            }
        );
        assert_eq!(
            got[1],
            RecordRef {
                key: Some(b""),
                value: b"v",
                timestamp: Some(-5)
            }
        );
        assert_eq!(got[2].value, b"written");
        assert_eq!(got[2].key, Some(&b"key"[..]));
    }

    #[test]
    fn truncated_and_garbage_are_errors_not_panics() {
        let mut w = BatchWriter::new();
        w.push(Some(b"abc"), b"hello", Some(1));
        let bytes = w.finish();
        for cut in 1..bytes.len() {
            let err = Batch::new(&bytes[..cut]).validate().unwrap_err();
            assert_eq!(err.record, 0, "cut at {cut}");
        }
        assert_eq!(Batch::new(&[0xff]).validate().unwrap_err().reason, "unknown flag bits");
        let huge = [0u8, 0xff, 0xff, 0xff, 0xff];
        assert!(Batch::new(&huge).validate().is_err());
    }
}
