//! The exactly-once file sink: JSON lines into a directory, published by a
//! two-phase commit tied to checkpoints.
//!
//! ```text
//! write            ─► .part-<subtask>.inprogress          (hidden)
//! barrier n        ─► flush, fsync, rename to .part-<subtask>-<n>.pending
//! checkpoint n done ─► the coordinator renames it to part-<subtask>-<n>.jsonl
//! end of input     ─► sealed as part-<subtask>-<n>-end, committed by the final checkpoint
//! ```
//!
//! Readers of the directory see only `part-*.jsonl` files, each complete and
//! committed exactly once. On recovery the restored checkpoint's sealed
//! files are committed and every other hidden file is discarded.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::json_sink::format_batch;
use super::{ConnectorError, SinkWriter};
use crate::spec::SinkFormat;
use crate::types::RecordBatch;

/// A transactional file sink subtask.
pub struct TransactionalFileSink {
    dir: PathBuf,
    /// `.part-<subtask>.inprogress` in `dir`.
    in_progress: PathBuf,
    subtask: u32,
    format: SinkFormat,
    /// How a batch becomes lines.
    encode: Encoder,
    current: Option<BufWriter<File>>,
    /// Sealed files not yet known to be committed: (checkpoint, name).
    pending: Vec<(u64, String)>,
    /// The newest completed checkpoint (shared with the coordinator).
    completed: Arc<AtomicU64>,
    line: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ConnectorError + '_ {
    move |source| ConnectorError::Io {
        path: path.to_owned(),
        source,
    }
}

fn pending_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!(".{name}.pending"))
}

fn committed_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.jsonl"))
}

/// Appends a batch's records to a file's bytes, one line each.
pub type Encoder = fn(SinkFormat, &RecordBatch, &mut Vec<u8>);

impl TransactionalFileSink {
    /// A sink subtask writing JSON lines into `dir`.
    pub fn new(dir: &Path, subtask: u32, format: SinkFormat, completed: Arc<AtomicU64>) -> Result<Self, ConnectorError> {
        Self::with_encoder(dir, subtask, format, format_batch, completed)
    }

    /// A sink subtask writing lines `encode` makes into `dir` (a spool of
    /// records a sink publishes elsewhere once their checkpoint completes).
    pub fn with_encoder(
        dir: &Path,
        subtask: u32,
        format: SinkFormat,
        encode: Encoder,
        completed: Arc<AtomicU64>,
    ) -> Result<Self, ConnectorError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        Ok(TransactionalFileSink {
            dir: dir.to_owned(),
            in_progress: dir.join(format!(".part-{subtask}.inprogress")),
            subtask,
            format,
            encode,
            current: None,
            pending: Vec::new(),
            completed,
            line: Vec::new(),
        })
    }
}

impl SinkWriter for TransactionalFileSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let path = &self.in_progress;
        let w = match &mut self.current {
            Some(w) => w,
            None => self
                .current
                .insert(BufWriter::with_capacity(256 << 10, File::create(path).map_err(io(path))?)),
        };
        self.line.clear();
        (self.encode)(self.format, batch, &mut self.line);
        w.write_all(&self.line).map_err(io(path))
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        // Nothing becomes visible before its checkpoint completes.
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint: u64, last: bool) -> Result<Vec<String>, ConnectorError> {
        let done = self.completed.load(Ordering::SeqCst);
        self.pending.retain(|(id, _)| *id > done);
        if let Some(mut w) = self.current.take() {
            let path = &self.in_progress;
            w.flush().map_err(io(path))?;
            let f = w.into_inner().map_err(|e| io(path)(e.into_error()))?;
            f.sync_all().map_err(io(path))?;
            let name = format!("part-{}-{checkpoint:08}{}", self.subtask, if last { "-end" } else { "" });
            std::fs::rename(path, pending_path(&self.dir, &name)).map_err(io(path))?;
            self.pending.push((checkpoint, name));
        }
        Ok(self.pending.iter().map(|(_, n)| n.clone()).collect())
    }
}

/// Publish sealed files of a completed checkpoint (idempotent: a file
/// already published is fine).
pub fn commit(dir: &Path, names: &[String]) -> Result<(), ConnectorError> {
    for name in names {
        let (from, to) = (pending_path(dir, name), committed_path(dir, name));
        if to.exists() && from.exists() {
            return Err(ConnectorError::Io {
                path: from,
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("sealed output `{name}` would replace committed output of the same name"),
                ),
            });
        }
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(_) if to.exists() => {}
            Err(e) => {
                return Err(ConnectorError::Io {
                    path: from,
                    source: std::io::Error::new(e.kind(), format!("sealed output `{name}` cannot be committed: {e}")),
                });
            }
        }
    }
    Ok(())
}

/// The subtask that wrote a file of the sink directory, from its name
/// (`part-<i>-…jsonl`, `.part-<i>.inprogress`, `.part-<i>-….pending`).
pub(crate) fn writer_of(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(".part-").or_else(|| name.strip_prefix("part-"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Before sink subtask `subtask` of `parallelism` runs: it looks after the
/// files of every earlier subtask `i` with `i % parallelism == subtask`
/// (so a rescaled sink leaves nothing behind), and no other subtask's.
///
/// Restoring checkpoint `restored` with its sealed files `keep`: those are
/// committed, committed files sealed after it are removed (their records
/// are replayed; readers may have seen them, which happens only when
/// recovery falls back past a damaged checkpoint or an older savepoint is
/// restored), and every other hidden file is discarded. On a fresh start
/// (`restored` none) the output of earlier runs is removed too.
///
/// Returns the names of the committed files it removed.
pub fn prepare(dir: &Path, subtask: u32, parallelism: u32, restored: Option<(u64, &[String])>) -> Result<Vec<String>, ConnectorError> {
    let mine = |name: &str| writer_of(name).is_some_and(|i| i % parallelism.max(1) == subtask);
    if let Some((_, keep)) = restored {
        let keep: Vec<String> = keep.iter().filter(|n| mine(n)).cloned().collect();
        commit(dir, &keep)?;
    }
    let mut rolled_back = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(rolled_back);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !mine(&name) {
            continue;
        }
        let hidden = name.starts_with(".part-") && (name.ends_with(".inprogress") || name.ends_with(".pending"));
        let remove = match (restored, name.strip_suffix(".jsonl").filter(|n| n.starts_with("part-"))) {
            _ if hidden => true,
            (None, Some(_)) => true,
            (Some((id, keep)), Some(stem)) => {
                let sealed = stem.trim_end_matches("-end").rsplit('-').next().and_then(|n| n.parse::<u64>().ok());
                let after = sealed.is_some_and(|s| s > id) && !keep.iter().any(|k| k == stem);
                if after {
                    tracing::warn!(file = %e.path().display(), checkpoint = id, "removing output committed after the restored checkpoint");
                    rolled_back.push(name.clone());
                }
                after
            }
            (_, None) => false,
        };
        if remove {
            std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
        }
    }
    rolled_back.sort();
    Ok(rolled_back)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::batch::BatchWriter;

    fn batch(values: &[&str]) -> RecordBatch {
        let mut w = BatchWriter::new();
        for v in values {
            w.push(None, v.as_bytes(), None);
        }
        let len = w.len();
        RecordBatch { bytes: w.finish(), len }
    }

    fn visible(dir: &Path) -> Vec<String> {
        let mut lines: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .flat_map(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn output_becomes_visible_only_when_committed() {
        let dir = std::env::temp_dir().join(format!("sluice-2pc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let done = Arc::new(AtomicU64::new(0));
        let mut s = TransactionalFileSink::new(&dir, 0, SinkFormat::Value, done.clone()).unwrap();
        s.write(&batch(&["a", "b"])).unwrap();
        assert!(visible(&dir).is_empty());
        let p1 = s.prepare_commit(1, false).unwrap();
        s.write(&batch(&["c"])).unwrap();
        assert!(visible(&dir).is_empty());
        commit(&dir, &p1).unwrap();
        commit(&dir, &p1).unwrap();
        done.store(1, Ordering::SeqCst);
        assert_eq!(visible(&dir), ["\"a\"", "\"b\""]);
        // Checkpoint 2 is sealed but never completes; a restore from 1 discards it.
        let p2 = s.prepare_commit(2, false).unwrap();
        assert_eq!(p2, ["part-0-00000002"]);
        prepare(&dir, 0, 1, Some((1, &p1))).unwrap();
        assert_eq!(visible(&dir), ["\"a\"", "\"b\""]);
        assert!(commit(&dir, &p2).is_err());
        // Another subtask's files are not this subtask's to touch; a fresh
        // start of the subtask that wrote them removes them.
        let mut other = TransactionalFileSink::new(&dir, 1, SinkFormat::Value, done.clone()).unwrap();
        other.write(&batch(&["d"])).unwrap();
        let p3 = other.prepare_commit(3, false).unwrap();
        commit(&dir, &p3).unwrap();
        prepare(&dir, 0, 2, None).unwrap();
        assert_eq!(visible(&dir), ["\"d\""]);
        prepare(&dir, 1, 2, None).unwrap();
        assert!(visible(&dir).is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
