//! Blocking result partitions: what a producer subtask sends one consumer
//! subtask, written to a file instead of a channel.
//!
//! ```text
//! file   magic "SLSPILL1", then frames
//! frame  count u32 LE · length u32 LE · `length` bytes: a packed batch of
//!        `count` records
//! ```
//!
//! Only record batches are kept: watermarks, idleness and barriers mean
//! nothing once the whole input is at hand, and the end of data is the end
//! of the file. A reader bounds every frame before allocating it and checks
//! that it parses, so a damaged file fails the task that reads it with a
//! message naming the file.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sluice_guest::batch::Batch;

use crate::runtime::{ChannelClosed, ElementSender, RecordBatch, StreamElement};

const MAGIC: &[u8; 8] = b"SLSPILL1";

/// Largest frame a reader accepts.
pub const MAX_FRAME: usize = 256 << 20;

/// Where the first write error of a producer task is kept, for its failure
/// report (a sender can only say that the channel is closed).
pub type WriteErrors = Arc<Mutex<Vec<(usize, String)>>>;

/// Writes one channel of a blocking exchange to its file.
pub struct SpillWriter {
    path: PathBuf,
    producer: usize,
    out: Mutex<Option<BufWriter<File>>>,
    errors: WriteErrors,
}

impl SpillWriter {
    /// Create (or truncate: a task run again rewrites its output) `path`.
    pub fn create(path: &Path, producer: usize, errors: WriteErrors) -> std::io::Result<Self> {
        let mut out = BufWriter::with_capacity(256 << 10, File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(SpillWriter {
            path: path.to_owned(),
            producer,
            out: Mutex::new(Some(out)),
            errors,
        })
    }

    fn fail(&self, what: &str, e: std::io::Error) -> ChannelClosed {
        let message = format!("{what} spill file {}: {e}", self.path.display());
        tracing::error!("{message}");
        self.errors.lock().unwrap_or_else(|p| p.into_inner()).push((self.producer, message));
        ChannelClosed
    }
}

impl ElementSender for SpillWriter {
    fn send(&self, element: StreamElement) -> Result<(), ChannelClosed> {
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        match element {
            StreamElement::Records(b) if b.len > 0 => {
                let Some(w) = out.as_mut() else { return Err(ChannelClosed) };
                if b.bytes.len() > MAX_FRAME || b.len > u32::MAX as usize {
                    let e = std::io::Error::other(format!("a batch of {} bytes is over the {MAX_FRAME} a frame holds", b.bytes.len()));
                    return Err(self.fail("writing", e));
                }
                let written = w
                    .write_all(&(b.len as u32).to_le_bytes())
                    .and_then(|()| w.write_all(&(b.bytes.len() as u32).to_le_bytes()))
                    .and_then(|()| w.write_all(&b.bytes));
                written.map_err(|e| self.fail("writing", e))
            }
            StreamElement::EndOfData => match out.take() {
                Some(mut w) => w.flush().map_err(|e| self.fail("flushing", e)),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn try_send(&self, element: StreamElement) -> Result<Option<StreamElement>, ChannelClosed> {
        self.send(element).map(|()| None)
    }
}

/// Reads the batches of a spill file back.
pub struct SpillReader {
    path: PathBuf,
    input: BufReader<File>,
}

impl SpillReader {
    /// Open `path`, checking its magic.
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| format!("opening spill file {}: {e}", path.display()))?;
        let mut input = BufReader::with_capacity(256 << 10, file);
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .map_err(|e| format!("reading spill file {}: {e}", path.display()))?;
        if &magic != MAGIC {
            return Err(format!("{} is not a spill file (bad magic)", path.display()));
        }
        Ok(SpillReader {
            path: path.to_owned(),
            input,
        })
    }

    /// The next batch; none at the end of the file.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, String> {
        let mut head = [0u8; 8];
        match read_full(&mut self.input, &mut head) {
            Ok(0) => return Ok(None),
            Ok(8) => {}
            Ok(n) => {
                return Err(format!(
                    "spill file {}: a frame header cut off after {n} bytes",
                    self.path.display()
                ));
            }
            Err(e) => return Err(format!("reading spill file {}: {e}", self.path.display())),
        }
        let count = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        if len > MAX_FRAME {
            return Err(format!(
                "spill file {}: a frame of {len} bytes is over the {MAX_FRAME} allowed",
                self.path.display()
            ));
        }
        let mut bytes = vec![0u8; len];
        self.input
            .read_exact(&mut bytes)
            .map_err(|e| format!("spill file {}: a frame of {len} bytes cut off: {e}", self.path.display()))?;
        match Batch::new(&bytes).validate() {
            Ok(n) if n == count => Ok(Some(RecordBatch { bytes, len: count })),
            Ok(n) => Err(format!(
                "spill file {}: a frame says {count} records and holds {n}",
                self.path.display()
            )),
            Err(e) => Err(format!("spill file {}: a malformed batch: {e}", self.path.display())),
        }
    }
}

/// Read until `buf` is full or the input ends; the bytes read.
pub(crate) fn read_full(input: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::batch::BatchWriter;

    #[test]
    fn a_spill_file_gives_back_its_batches_and_a_damaged_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-spill-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ch-0.spill");
        let errors = WriteErrors::default();
        let w = SpillWriter::create(&path, 0, errors.clone()).unwrap();
        let mut b = BatchWriter::new();
        b.push(Some(b"k"), b"v1", Some(5));
        b.push(None, b"v2", None);
        w.send(StreamElement::Records(RecordBatch { bytes: b.finish(), len: 2 })).unwrap();
        w.send(StreamElement::Watermark(10)).unwrap();
        w.send(StreamElement::EndOfData).unwrap();
        let mut r = SpillReader::open(&path).unwrap();
        let batch = r.next_batch().unwrap().unwrap();
        let records = batch.record_vec();
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].key, records[0].value, records[0].timestamp),
            (Some(&b"k"[..]), &b"v1"[..], Some(5))
        );
        assert_eq!(r.next_batch().unwrap(), None);
        assert!(errors.lock().unwrap().is_empty());

        // Cut off, over-long and wrong-count frames are errors, not panics.
        let good = std::fs::read(&path).unwrap();
        std::fs::write(&path, &good[..good.len() - 3]).unwrap();
        assert!(SpillReader::open(&path).unwrap().next_batch().unwrap_err().contains("cut off"));
        let mut long = good[..8].to_vec();
        long.extend_from_slice(&1u32.to_le_bytes());
        long.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &long).unwrap();
        assert!(SpillReader::open(&path).unwrap().next_batch().unwrap_err().contains("over the"));
        let mut wrong = good.clone();
        wrong[8] = 7;
        std::fs::write(&path, &wrong).unwrap();
        assert!(
            SpillReader::open(&path)
                .unwrap()
                .next_batch()
                .unwrap_err()
                .contains("says 7 records")
        );
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(SpillReader::open(&path).err().unwrap().contains("bad magic"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
