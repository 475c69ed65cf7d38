//! Checkpoint storage: a directory opened with cap-std, so no path written
//! or read can escape it.
//!
//! ```text
//! <dir>/chk-00000007/<operator>-<subtask>.state   one file per operator subtask
//! <dir>/chk-00000007/_metadata.json               written last, atomically
//! <dir>/savepoints/savepoint-00000009/…           same format, never pruned
//! <dir>/requests/                                  savepoint requests (`sluice savepoint`)
//! ```
//!
//! A checkpoint is complete exactly when its `_metadata.json` exists: it is
//! written to a temporary name, synced, then renamed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::DecodedSnapshot;

/// Name of the metadata file of a checkpoint or savepoint.
pub const METADATA: &str = "_metadata.json";
/// The metadata format version.
pub const METADATA_FORMAT: u32 = 1;

/// Why checkpoint storage failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// An I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file that does not match its checksum, or does not decode.
    #[error("checkpoint {checkpoint} is damaged: {file}: {reason}")]
    Damaged {
        /// The checkpoint's directory.
        checkpoint: PathBuf,
        /// The damaged file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The checkpoint does not fit the job.
    #[error("cannot restore {checkpoint}: {reason}")]
    Incompatible {
        /// The checkpoint's directory.
        checkpoint: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The metadata of a complete checkpoint or savepoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// [`METADATA_FORMAT`].
    pub format: u32,
    /// The job's name.
    pub job: String,
    /// The checkpoint id.
    pub checkpoint: u64,
    /// `checkpoint` or `savepoint`.
    pub kind: String,
    /// When it completed (ms since the Unix epoch).
    pub completed_ms: u64,
    /// The job's number of key groups.
    pub max_parallelism: u32,
    /// `exactly-once` or `at-least-once`.
    pub mode: String,
    /// Operators with state, in job order.
    pub operators: Vec<OperatorMeta>,
    /// Sink output sealed for this checkpoint, committed when it completes.
    pub sinks: Vec<SinkMeta>,
}

/// The state files of one operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorMeta {
    /// The operator's name in the job.
    pub name: String,
    /// `source`, `keyed-process` or `window`.
    pub kind: String,
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// Digest of its component, if it has one.
    pub component: Option<String>,
    /// One file per subtask, by subtask.
    pub files: Vec<StateFile>,
}

/// One state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateFile {
    /// The subtask.
    pub subtask: u32,
    /// File name within the checkpoint directory.
    pub file: String,
    /// Its size.
    pub bytes: u64,
    /// SHA-256 of its bytes, hex.
    pub sha256: String,
}

/// Files of a sink to publish when the checkpoint completes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkMeta {
    /// The sink's name in the job.
    pub name: String,
    /// Names of the sealed files (see [`crate::connectors::TransactionalFileSink`]).
    pub pending: Vec<String>,
}

/// A checkpoint read back and verified.
#[derive(Debug, Clone)]
pub struct LoadedCheckpoint {
    /// Where it is.
    pub path: PathBuf,
    /// Its metadata.
    pub meta: Metadata,
    /// Decoded state files per operator name, by subtask.
    pub states: std::collections::HashMap<String, Vec<Arc<DecodedSnapshot>>>,
}

fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let path = path.into();
    move |source| CheckpointError::Io { path, source }
}

/// The directory of checkpoint `id`.
pub fn checkpoint_dir(id: u64) -> String {
    format!("chk-{id:08}")
}

/// The directory of savepoint `id`.
pub fn savepoint_dir(id: u64) -> String {
    format!("savepoints/savepoint-{id:08}")
}

/// A file name for an operator's state: readable, and unique even when
/// two names differ only in characters a file name cannot hold.
pub fn state_file_name(operator: &str, subtask: u32) -> String {
    let clean: String = operator
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let hash = xxhash_rust::xxh3::xxh3_64(operator.as_bytes()) as u32;
    format!("{clean}-{hash:08x}-{subtask}.state")
}

/// Checkpoint storage rooted at one directory.
#[derive(Debug)]
pub struct CheckpointStorage {
    root: Dir,
    path: PathBuf,
}

impl CheckpointStorage {
    /// Open (creating) the directory.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        std::fs::create_dir_all(path).map_err(io(path))?;
        let root = Dir::open_ambient_dir(path, ambient_authority()).map_err(io(path))?;
        Ok(CheckpointStorage {
            root,
            path: path.to_owned(),
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Write one state file into `dir`; returns its handle.
    pub fn write_state(&self, dir: &str, file: &str, subtask: u32, bytes: &[u8]) -> Result<StateFile, CheckpointError> {
        let rel = Path::new(dir).join(file);
        self.root.create_dir_all(dir).map_err(io(self.path.join(dir)))?;
        let mut f = self.root.create(&rel).map_err(io(self.path.join(&rel)))?;
        f.write_all(bytes).map_err(io(self.path.join(&rel)))?;
        f.sync_all().map_err(io(self.path.join(&rel)))?;
        Ok(StateFile {
            subtask,
            file: file.to_owned(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Write the metadata last and atomically: the checkpoint is complete
    /// when this returns.
    pub fn write_metadata(&self, dir: &str, meta: &Metadata) -> Result<(), CheckpointError> {
        self.root.create_dir_all(dir).map_err(io(self.path.join(dir)))?;
        let tmp = Path::new(dir).join("_metadata.json.tmp");
        let fin = Path::new(dir).join(METADATA);
        let text = serde_json::to_vec_pretty(meta).map_err(|e| io(self.path.join(&tmp))(std::io::Error::other(e)))?;
        let mut f = self.root.create(&tmp).map_err(io(self.path.join(&tmp)))?;
        f.write_all(&text).map_err(io(self.path.join(&tmp)))?;
        f.sync_all().map_err(io(self.path.join(&tmp)))?;
        self.root.rename(&tmp, &self.root, &fin).map_err(io(self.path.join(&fin)))?;
        if let Ok(d) = self.root.open_dir(dir) {
            // Make the rename durable (best effort: not every filesystem can sync a directory).
            let _ = d.open(".").and_then(|f| f.sync_all());
        }
        Ok(())
    }

    /// Remove a checkpoint directory (missing is fine).
    pub fn remove(&self, dir: &str) {
        if let Err(e) = self.root.remove_dir_all(dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.path.join(dir).display(), error = %e, "could not remove a checkpoint");
        }
    }

    /// Ids of checkpoint directories, complete or not, ascending.
    fn checkpoint_ids(&self) -> Vec<(u64, bool)> {
        let mut ids = Vec::new();
        if let Ok(entries) = self.root.entries() {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) {
                    let complete = self.root.exists(Path::new(&name).join(METADATA));
                    ids.push((id, complete));
                }
            }
        }
        ids.sort_unstable();
        ids
    }

    /// Ids of complete checkpoints, newest first.
    pub fn complete_checkpoints(&self) -> Vec<u64> {
        self.checkpoint_ids().into_iter().rev().filter(|c| c.1).map(|c| c.0).collect()
    }

    /// The highest id used by any checkpoint or savepoint directory.
    pub fn max_id(&self) -> u64 {
        let mut max = self.checkpoint_ids().last().map_or(0, |c| c.0);
        if let Ok(entries) = self.root.read_dir("savepoints") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(id) = name.strip_prefix("savepoint-").and_then(|n| n.parse::<u64>().ok()) {
                    max = max.max(id);
                }
            }
        }
        max
    }

    /// Keep the newest `retain` complete checkpoints; remove older ones and
    /// incomplete ones older than the newest complete one.
    pub fn prune(&self, retain: usize) {
        let complete = self.complete_checkpoints();
        let Some(&newest) = complete.first() else { return };
        let keep: Vec<u64> = complete.into_iter().take(retain.max(1)).collect();
        for (id, _) in self.checkpoint_ids() {
            if id < newest && !keep.contains(&id) {
                self.remove(&checkpoint_dir(id));
            }
        }
    }

    /// Read, verify and decode the checkpoint in `dir`.
    pub fn load(&self, dir: &str) -> Result<LoadedCheckpoint, CheckpointError> {
        let d = self.root.open_dir(dir).map_err(io(self.path.join(dir)))?;
        load_dir(&d, &self.path.join(dir))
    }

    /// The newest complete checkpoint with an id of at least `min_id` that
    /// verifies, falling back to older ones (and saying why) when the newest
    /// is damaged.
    pub fn load_latest(&self, min_id: u64) -> Option<LoadedCheckpoint> {
        for id in self.complete_checkpoints().into_iter().filter(|&id| id >= min_id) {
            match self.load(&checkpoint_dir(id)) {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!("{e}; falling back to the previous complete checkpoint"),
            }
        }
        None
    }

    /// The directory for savepoint requests.
    pub fn requests_dir(&self) -> PathBuf {
        self.path.join("requests")
    }
}

/// Read, verify and decode a checkpoint or savepoint at `path` (a
/// directory holding `_metadata.json`).
pub fn load_path(path: &Path) -> Result<LoadedCheckpoint, CheckpointError> {
    let d = Dir::open_ambient_dir(path, ambient_authority()).map_err(io(path))?;
    load_dir(&d, path)
}

fn load_dir(d: &Dir, path: &Path) -> Result<LoadedCheckpoint, CheckpointError> {
    let damaged = |file: &str, reason: String| CheckpointError::Damaged {
        checkpoint: path.to_owned(),
        file: path.join(file).display().to_string(),
        reason,
    };
    let text = d.read(METADATA).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => CheckpointError::Incompatible {
            checkpoint: path.to_owned(),
            reason: format!("no {METADATA}: not a complete checkpoint or savepoint"),
        },
        _ => io(path.join(METADATA))(e),
    })?;
    let meta: Metadata = serde_json::from_slice(&text).map_err(|e| damaged(METADATA, e.to_string()))?;
    if meta.format != METADATA_FORMAT {
        return Err(damaged(METADATA, format!("unsupported metadata format {}", meta.format)));
    }
    let mut states = std::collections::HashMap::new();
    for op in &meta.operators {
        let mut files = Vec::new();
        for (i, f) in op.files.iter().enumerate() {
            if f.subtask as usize != i || f.file.contains(['/', '\\']) {
                return Err(damaged(METADATA, format!("bad file entry {:?} of `{}`", f.file, op.name)));
            }
            let bytes = d.read(&f.file).map_err(|e| damaged(&f.file, e.to_string()))?;
            if bytes.len() as u64 != f.bytes {
                return Err(damaged(
                    &f.file,
                    format!("{} bytes, expected {} (truncated?)", bytes.len(), f.bytes),
                ));
            }
            let sum = hex::encode(Sha256::digest(&bytes));
            if sum != f.sha256 {
                return Err(damaged(&f.file, format!("checksum mismatch (sha256 {sum}, expected {})", f.sha256)));
            }
            files.push(Arc::new(DecodedSnapshot::decode(&bytes).map_err(|e| damaged(&f.file, e.0))?));
        }
        states.insert(op.name.clone(), files);
    }
    Ok(LoadedCheckpoint {
        path: path.to_owned(),
        meta,
        states,
    })
}
