//! Checkpoint storage: the checkpoints and savepoints of one job in a
//! [`CheckpointStore`] (a directory opened with cap-std, so no path written
//! or read can escape it; see [`super::store`]).
//!
//! ```text
//! <dir>/chk-00000007/<operator>-<subtask>.state   one file per operator subtask
//! <dir>/chk-00000007/_metadata.json               written last, atomically
//! <dir>/savepoints/savepoint-00000009/…           same format, never pruned
//! <dir>/requests/                                  savepoint requests (`sluice savepoint`)
//! ```
//!
//! A checkpoint is complete exactly when its `_metadata.json` exists: it is
//! written last, atomically (to a temporary name, synced, then renamed).
//!
//! Restoring trusts nothing it reads ([`RestoreLimits`]): a file is opened
//! only if `lstat` says it is a regular file (a symlink, FIFO or device is
//! refused before it is opened, and the file is opened non-blocking and
//! checked again through its handle); its length is checked against the
//! size the metadata declares and a cap before a byte is read; the checksum
//! is computed by streaming, and the payload is decompressed into a capped
//! buffer. The metadata must describe the job ([`ExpectedState`]): one file
//! per subtask of every operator, named as the coordinator names them, and
//! key groups within each subtask's range. A checkpoint that fails any of
//! this is damaged, and [`CheckpointStorage::load_latest`] falls back to the
//! previous complete one, as for a checksum mismatch.

use std::collections::HashSet;
use std::io::{Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::format::{CappedReadError, DEFAULT_MAX_PAYLOAD_BYTES, DecodeBounds, DecodedSnapshot, KeyGroupBounds, read_capped};
use super::store::{CheckpointStore, FileError, join, open_store};
use crate::state::KeyGroupRange;

/// Name of the metadata file of a checkpoint or savepoint.
pub const METADATA: &str = "_metadata.json";
/// The metadata format version.
pub const METADATA_FORMAT: u32 = 1;

/// Most bytes a state file may have on disk unless [`RestoreLimits`] says
/// otherwise: 4 GiB. A file's length is checked against it (and against the
/// size its metadata declares) before the file is read, so a huge or sparse
/// file is refused without reading it.
pub const DEFAULT_MAX_STATE_FILE_BYTES: u64 = 4 << 30;

/// Most bytes a `_metadata.json` may have: 16 MiB. Metadata grows with the
/// state files (~200 bytes each), so this is room for ~80 000 of them.
pub const DEFAULT_MAX_METADATA_BYTES: u64 = 16 << 20;

/// Most bytes the state files of one checkpoint may decompress to together
/// unless [`RestoreLimits`] says otherwise: 4 GiB. Every payload stays in
/// memory until each new subtask has taken its key groups.
pub const DEFAULT_MAX_CHECKPOINT_PAYLOAD_BYTES: u64 = 4 << 30;

/// The largest `max_parallelism` a job can have (the job graph refuses
/// more), so the largest a checkpoint can claim.
const MAX_MAX_PARALLELISM: u32 = 32_768;

/// Bounds on reading a checkpoint back: every size that comes from a file
/// is checked against one of them before it is allocated. A checkpoint that
/// crosses one is damaged (recovery falls back to the previous one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreLimits {
    /// Most bytes one state file may have on disk. Default
    /// [`DEFAULT_MAX_STATE_FILE_BYTES`].
    pub max_state_file_bytes: u64,
    /// Most bytes one state file may decompress to. Default
    /// [`DEFAULT_MAX_PAYLOAD_BYTES`].
    pub max_payload_bytes: u64,
    /// Most bytes all state files of a checkpoint may decompress to.
    /// Default [`DEFAULT_MAX_CHECKPOINT_PAYLOAD_BYTES`].
    pub max_checkpoint_payload_bytes: u64,
    /// Most bytes of `_metadata.json`. Default [`DEFAULT_MAX_METADATA_BYTES`].
    pub max_metadata_bytes: u64,
}

impl Default for RestoreLimits {
    fn default() -> Self {
        RestoreLimits {
            max_state_file_bytes: DEFAULT_MAX_STATE_FILE_BYTES,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_checkpoint_payload_bytes: DEFAULT_MAX_CHECKPOINT_PAYLOAD_BYTES,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
        }
    }
}

/// What the job restoring a checkpoint needs its metadata to describe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedState {
    /// Names of the job's operators with state (sources, keyed operators,
    /// windows, joins): each writes a state file per subtask at every
    /// checkpoint.
    pub operators: Vec<String>,
    /// Whether every one of them must have its state in the checkpoint.
    /// True for the job's own checkpoints (`--restore latest`, a restart):
    /// one missing is damage, and restoring it would replay that operator's
    /// input on top of committed output. False for an explicit
    /// `--restore DIR`, where an operator added since the savepoint starts
    /// empty.
    pub require_all: bool,
}

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
    /// A file that cannot be restored: it does not match its checksum or
    /// its declared size, does not decode, is too large, is not a regular
    /// file, or (the metadata) does not describe the job.
    #[error("restoring {checkpoint}: {what} `{}`: {reason}", file.display())]
    Damaged {
        /// The checkpoint: `checkpoint 7`, `savepoint 9`, or its directory.
        checkpoint: String,
        /// `state file` or `metadata`.
        what: &'static str,
        /// The damaged file.
        file: PathBuf,
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

/// The checkpoints of one job in a [`CheckpointStore`].
#[derive(Debug, Clone)]
pub struct CheckpointStorage {
    store: Arc<dyn CheckpointStore>,
    limits: RestoreLimits,
}

impl CheckpointStorage {
    /// Open (creating) the directory.
    pub fn open(path: &Path) -> Result<Self, CheckpointError> {
        Ok(Self::with_store(open_store(path, true).map_err(io(path))?))
    }

    /// The checkpoints in `store`.
    pub fn with_store(store: Arc<dyn CheckpointStore>) -> Self {
        CheckpointStorage {
            store,
            limits: RestoreLimits::default(),
        }
    }

    /// Restore with these limits instead of the defaults.
    pub fn with_limits(mut self, limits: RestoreLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits restores from this storage obey.
    pub fn limits(&self) -> &RestoreLimits {
        &self.limits
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        self.store.location()
    }

    /// Write one state file into `dir`; returns its handle.
    pub fn write_state(&self, dir: &str, file: &str, subtask: u32, bytes: &[u8]) -> Result<StateFile, CheckpointError> {
        let rel = join(dir, file);
        self.store.put(&rel, bytes).map_err(io(self.path().join(&rel)))?;
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
        let fin = join(dir, METADATA);
        let text = serde_json::to_vec_pretty(meta).map_err(|e| io(self.path().join(&fin))(std::io::Error::other(e)))?;
        self.store.put_atomic(&fin, &text).map_err(io(self.path().join(&fin)))
    }

    /// Remove a checkpoint directory (missing is fine).
    pub fn remove(&self, dir: &str) {
        if let Err(e) = self.store.remove_all(dir) {
            tracing::warn!(dir = %self.path().join(dir).display(), error = %e, "could not remove a checkpoint");
        }
    }

    /// Ids of checkpoint directories, complete or not, ascending.
    fn checkpoint_ids(&self) -> Vec<(u64, bool)> {
        let mut ids = Vec::new();
        for name in self.store.list("") {
            if let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse::<u64>().ok()) {
                let complete = self.store.exists(&join(&name, METADATA));
                ids.push((id, complete));
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
        for name in self.store.list("savepoints") {
            if let Some(id) = name.strip_prefix("savepoint-").and_then(|n| n.parse::<u64>().ok()) {
                max = max.max(id);
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

    /// Read, verify and decode the checkpoint in `dir`, which must describe
    /// `expected`.
    pub fn load(&self, dir: &str, expected: &ExpectedState) -> Result<LoadedCheckpoint, CheckpointError> {
        load_dir(self.store.as_ref(), dir, &self.path().join(dir), expected, &self.limits)
    }

    /// The newest complete checkpoint with an id of at least `min_id` that
    /// verifies and describes `expected`, falling back to older ones (and
    /// saying why) when the newest is damaged.
    pub fn load_latest(&self, min_id: u64, expected: &ExpectedState) -> Option<LoadedCheckpoint> {
        for id in self.complete_checkpoints().into_iter().filter(|&id| id >= min_id) {
            match self.load(&checkpoint_dir(id), expected) {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!("{e}; falling back to the previous complete checkpoint"),
            }
        }
        None
    }
}

/// Read, verify and decode a checkpoint or savepoint at `path` (a
/// directory holding `_metadata.json`), which must describe `expected`.
pub fn load_path(path: &Path, expected: &ExpectedState, limits: &RestoreLimits) -> Result<LoadedCheckpoint, CheckpointError> {
    let store = open_store(path, false).map_err(io(path))?;
    load_dir(store.as_ref(), "", path, expected, limits)
}

/// Read, verify and decode the state files of one operator that `keep`
/// selects, from the checkpoint at `path` taken with `max_parallelism` key
/// groups and the operator at `parallelism`: what one task reads to
/// restore, given the handles of its deployment.
pub fn read_operator_state(
    path: &Path,
    max_parallelism: u32,
    parallelism: u32,
    files: &[StateFile],
    keep: impl Fn(&StateFile) -> bool,
    limits: &RestoreLimits,
) -> Result<Vec<Arc<DecodedSnapshot>>, CheckpointError> {
    let store = open_store(path, false).map_err(io(path))?;
    let store = store.as_ref();
    let name = DirName::of(path);
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for f in files.iter().filter(|f| keep(f)) {
        let damaged = |reason: String| CheckpointError::Damaged {
            checkpoint: name.label(path),
            what: "state file",
            file: path.join(&f.file),
            reason,
        };
        if f.file.contains('/') || f.file.contains('\\') || f.file.starts_with('.') {
            return Err(damaged("the name is not a plain file name".into()));
        }
        let bounds = DecodeBounds {
            max_payload_bytes: limits.max_payload_bytes,
            key_groups: Some(KeyGroupBounds {
                range: KeyGroupRange::for_subtask(max_parallelism, parallelism, f.subtask),
                max_parallelism,
            }),
        };
        let snap = read_state_file(store, &f.file, f, &bounds, limits).map_err(damaged)?;
        total = total.saturating_add(snap.payload_bytes() as u64);
        if total > limits.max_checkpoint_payload_bytes {
            return Err(damaged(format!(
                "the state files decompress to more than {} bytes together, the limit",
                limits.max_checkpoint_payload_bytes
            )));
        }
        out.push(Arc::new(snap));
    }
    Ok(out)
}

/// What a directory's name says it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DirName {
    /// `chk-<id>`.
    Checkpoint(u64),
    /// `savepoint-<id>`.
    Savepoint(u64),
    /// Anything else (a directory given to `--restore`).
    Other,
}

impl DirName {
    fn of(path: &Path) -> DirName {
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        if let Some(id) = name.strip_prefix("chk-").and_then(|n| n.parse().ok()) {
            DirName::Checkpoint(id)
        } else if let Some(id) = name.strip_prefix("savepoint-").and_then(|n| n.parse().ok()) {
            DirName::Savepoint(id)
        } else {
            DirName::Other
        }
    }

    fn label(self, path: &Path) -> String {
        match self {
            DirName::Checkpoint(id) => format!("checkpoint {id}"),
            DirName::Savepoint(id) => format!("savepoint {id}"),
            DirName::Other => format!("checkpoint `{}`", path.display()),
        }
    }
}

fn load_dir(
    store: &dyn CheckpointStore,
    dir: &str,
    path: &Path,
    expected: &ExpectedState,
    limits: &RestoreLimits,
) -> Result<LoadedCheckpoint, CheckpointError> {
    let name = DirName::of(path);
    let damaged = |what: &'static str, file: &str, reason: String| CheckpointError::Damaged {
        checkpoint: name.label(path),
        what,
        file: path.join(file),
        reason,
    };
    let text = match store.open(&join(dir, METADATA), limits.max_metadata_bytes) {
        Err(FileError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CheckpointError::Incompatible {
                checkpoint: path.to_owned(),
                reason: format!("no {METADATA}: not a complete checkpoint or savepoint"),
            });
        }
        Err(e) => return Err(damaged("metadata", METADATA, e.to_string())),
        Ok((mut f, len)) => read_capped(&mut f, limits.max_metadata_bytes, len).map_err(|e| {
            let reason = match e {
                CappedReadError::TooLarge => format!("it grew past the limit of {} bytes", limits.max_metadata_bytes),
                CappedReadError::OutOfMemory(n) => format!("out of memory reading {n} bytes"),
                CappedReadError::Io(e) => e.to_string(),
            };
            damaged("metadata", METADATA, reason)
        })?,
    };
    let meta: Metadata = serde_json::from_slice(&text).map_err(|e| damaged("metadata", METADATA, e.to_string()))?;
    drop(text);
    check_metadata(&meta, name, expected).map_err(|reason| damaged("metadata", METADATA, reason))?;
    let mut states = std::collections::HashMap::new();
    let mut total: u64 = 0;
    for op in &meta.operators {
        let mut files = Vec::new();
        files
            .try_reserve_exact(op.files.len())
            .map_err(|_| damaged("metadata", METADATA, format!("out of memory for {} state files", op.files.len())))?;
        for f in &op.files {
            let bounds = DecodeBounds {
                max_payload_bytes: limits.max_payload_bytes,
                key_groups: Some(KeyGroupBounds {
                    range: KeyGroupRange::for_subtask(meta.max_parallelism, op.parallelism, f.subtask),
                    max_parallelism: meta.max_parallelism,
                }),
            };
            let snap = read_state_file(store, &join(dir, &f.file), f, &bounds, limits).map_err(|e| damaged("state file", &f.file, e))?;
            total = total.saturating_add(snap.payload_bytes() as u64);
            if total > limits.max_checkpoint_payload_bytes {
                return Err(damaged(
                    "state file",
                    &f.file,
                    format!(
                        "the state files decompress to more than {} bytes together, the limit",
                        limits.max_checkpoint_payload_bytes
                    ),
                ));
            }
            files.push(Arc::new(snap));
        }
        states.insert(op.name.clone(), files);
    }
    Ok(LoadedCheckpoint {
        path: path.to_owned(),
        meta,
        states,
    })
}

/// Does the metadata hold together, and describe `expected`? Checked
/// before any state file is opened.
fn check_metadata(meta: &Metadata, name: DirName, expected: &ExpectedState) -> Result<(), String> {
    if meta.format != METADATA_FORMAT {
        return Err(format!("unsupported metadata format {}", meta.format));
    }
    let claims = match name {
        DirName::Checkpoint(id) => Some(("checkpoint", id)),
        DirName::Savepoint(id) => Some(("savepoint", id)),
        DirName::Other => None,
    };
    if let Some((kind, id)) = claims
        && (meta.kind != kind || meta.checkpoint != id)
    {
        return Err(format!(
            "it says it is {} {}, but its directory is that of {kind} {id}",
            meta.kind, meta.checkpoint
        ));
    }
    let max = meta.max_parallelism;
    if max == 0 || max > MAX_MAX_PARALLELISM {
        return Err(format!("max_parallelism {max} is not between 1 and {MAX_MAX_PARALLELISM}"));
    }
    if meta.operators.is_empty() {
        return Err("it lists no operators, but every checkpoint holds at least the positions of the job's sources".into());
    }
    let mut names = HashSet::new();
    for op in &meta.operators {
        if !names.insert(op.name.as_str()) {
            return Err(format!("it lists operator `{}` twice", op.name));
        }
        if op.parallelism == 0 || op.parallelism > max {
            return Err(format!(
                "operator `{}` has parallelism {}, not between 1 and max_parallelism {max}",
                op.name, op.parallelism
            ));
        }
        if op.files.len() != op.parallelism as usize {
            return Err(format!(
                "operator `{}` has {} state files for parallelism {}: each subtask has one",
                op.name,
                op.files.len(),
                op.parallelism
            ));
        }
        for (i, f) in op.files.iter().enumerate() {
            let want = state_file_name(&op.name, i as u32);
            if f.subtask as usize != i || f.file != want {
                return Err(format!(
                    "entry {i} of operator `{}` is subtask {} in {:?}; expected subtask {i} in {want:?}",
                    op.name, f.subtask, f.file
                ));
            }
        }
    }
    if expected.require_all
        && let Some(missing) = expected.operators.iter().find(|o| !names.contains(o.as_str()))
    {
        return Err(format!("it has no state of operator `{missing}`, which has state in the job"));
    }
    let mut sinks = HashSet::new();
    for s in &meta.sinks {
        if !sinks.insert(s.name.as_str()) {
            return Err(format!("it lists sink `{}` twice", s.name));
        }
        for p in &s.pending {
            match sealed_checkpoint(p) {
                Some(id) if id <= meta.checkpoint => {}
                Some(id) => {
                    return Err(format!(
                        "sink `{}` output {p:?} was sealed for checkpoint {id}, after this one ({})",
                        s.name, meta.checkpoint
                    ));
                }
                None => return Err(format!("sink `{}` output {p:?} is not a sealed part file name", s.name)),
            }
        }
    }
    Ok(())
}

/// The checkpoint a sealed sink file (`part-<subtask>-<id>` or
/// `part-<subtask>-<id>-end`) belongs to, if `name` is one.
fn sealed_checkpoint(name: &str) -> Option<u64> {
    let rest = name.strip_prefix("part-")?;
    let rest = rest.strip_suffix("-end").unwrap_or(rest);
    let (subtask, id) = rest.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(subtask) && digits(id)).then(|| id.parse().ok()).flatten()
}

/// Open, size-check, checksum and decode one state file.
fn read_state_file(
    store: &dyn CheckpointStore,
    path: &str,
    f: &StateFile,
    bounds: &DecodeBounds,
    limits: &RestoreLimits,
) -> Result<DecodedSnapshot, String> {
    let (mut file, len) = store.open(path, limits.max_state_file_bytes).map_err(|e| e.to_string())?;
    if len != f.bytes {
        return Err(format!(
            "it has {len} bytes, the metadata says {} (truncated or replaced?)",
            f.bytes
        ));
    }
    // The checksum, streamed over exactly the declared length...
    let mut hasher = Sha256::new();
    let read = std::io::copy(&mut (&mut file).take(len), &mut hasher).map_err(|e| e.to_string())?;
    if read != len {
        return Err(format!("it ended after {read} of its {len} bytes"));
    }
    let sum = hex::encode(hasher.finalize());
    if sum != f.sha256 {
        return Err(format!("checksum mismatch (sha256 {sum}, expected {})", f.sha256));
    }
    // ...then the payload, decompressed within its bounds.
    file.rewind().map_err(|e| e.to_string())?;
    DecodedSnapshot::read((&mut file).take(len), bounds).map_err(|e| e.0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::checkpoint::SnapshotWriter;
    use crate::checkpoint::format::encode_file;
    use crate::state::{HeapKeyedState, KeyGroup};

    const MAX: u32 = 16;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-storage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Write checkpoint `id`: a source `src` (parallelism 1) and a keyed
    /// `count` (parallelism 2) holding 50 keys.
    fn write_checkpoint(st: &CheckpointStorage, id: u64) -> Metadata {
        let dir = checkpoint_dir(id);
        let mut count = Vec::new();
        for s in 0..2 {
            let mut b = HeapKeyedState::new(KeyGroupRange::for_subtask(MAX, 2, s));
            let v = b.declare("n").unwrap();
            for i in 0..50u32 {
                let key = format!("k{i}");
                let g = KeyGroup::of(key.as_bytes(), MAX);
                if g.subtask(MAX, 2) == s {
                    b.put(g, key.as_bytes(), v, b"", &i.to_le_bytes()).unwrap();
                }
            }
            let mut w = SnapshotWriter::new();
            w.keyed_state(&b);
            count.push(
                st.write_state(&dir, &state_file_name("count", s), s, &encode_file(&w.finish()))
                    .unwrap(),
            );
        }
        let mut w = SnapshotWriter::new();
        w.operator_state("position", vec![1; 16]);
        let src = st
            .write_state(&dir, &state_file_name("src", 0), 0, &encode_file(&w.finish()))
            .unwrap();
        let op = |name: &str, kind: &str, files: Vec<StateFile>| OperatorMeta {
            name: name.into(),
            kind: kind.into(),
            parallelism: files.len() as u32,
            component: None,
            files,
        };
        let meta = Metadata {
            format: METADATA_FORMAT,
            job: "test".into(),
            checkpoint: id,
            kind: "checkpoint".into(),
            completed_ms: 0,
            max_parallelism: MAX,
            mode: "exactly-once".into(),
            operators: vec![op("count", "keyed-process", count), op("src", "source", vec![src])],
            sinks: vec![SinkMeta {
                name: "out".into(),
                pending: vec![format!("part-0-{id:08}")],
            }],
        };
        st.write_metadata(&dir, &meta).unwrap();
        meta
    }

    fn job(require_all: bool) -> ExpectedState {
        ExpectedState {
            operators: vec!["src".into(), "count".into()],
            require_all,
        }
    }

    fn fresh(name: &str) -> (CheckpointStorage, Metadata, PathBuf) {
        let path = temp(name);
        let st = CheckpointStorage::open(&path).unwrap();
        let meta = write_checkpoint(&st, 1);
        let chk = path.join(checkpoint_dir(1));
        (st, meta, chk)
    }

    fn load_err(st: &CheckpointStorage, expected: &ExpectedState) -> String {
        st.load(&checkpoint_dir(1), expected).unwrap_err().to_string()
    }

    /// Rewrite one file of the checkpoint (its metadata entry updated to match).
    fn replace(st: &CheckpointStorage, meta: &mut Metadata, op: usize, subtask: usize, bytes: &[u8]) {
        let f = &mut meta.operators[op].files[subtask];
        *f = st.write_state(&checkpoint_dir(1), &f.file.clone(), f.subtask, bytes).unwrap();
        st.write_metadata(&checkpoint_dir(1), meta).unwrap();
    }

    #[test]
    fn a_checkpoint_loads_and_names_what_it_holds() {
        let (st, meta, _) = fresh("valid");
        let c = st.load(&checkpoint_dir(1), &job(true)).unwrap();
        assert_eq!(c.meta, meta);
        assert_eq!(c.states["count"].len(), 2);
        assert_eq!(c.states["src"][0].operator_state("position"), Some(&[1u8; 16][..]));
    }

    #[test]
    fn a_state_file_over_the_cap_is_refused_before_it_is_read() {
        let (st, mut meta, chk) = fresh("huge");
        // The largest file, so that the cap is crossed by it alone.
        let (subtask, len) = (0..2)
            .map(|s| (s, meta.operators[0].files[s].bytes))
            .max_by_key(|&(_, len)| len)
            .unwrap();
        let file = chk.join(&meta.operators[0].files[subtask].file);
        // At the cap it loads; one byte under, it does not.
        let at = |cap| {
            CheckpointStorage::open(st.path()).unwrap().with_limits(RestoreLimits {
                max_state_file_bytes: cap,
                ..RestoreLimits::default()
            })
        };
        at(len).load(&checkpoint_dir(1), &job(true)).unwrap();
        let err = load_err(&at(len - 1), &job(true));
        assert!(
            err.contains(&format!("it has {len} bytes, more than the limit of {}", len - 1)),
            "{err}"
        );
        // A sparse 64 GiB file, declared as such: refused by its length alone, at once.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(64 << 30)
            .unwrap();
        meta.operators[0].files[subtask].bytes = 64 << 30;
        st.write_metadata(&checkpoint_dir(1), &meta).unwrap();
        let t = std::time::Instant::now();
        let err = load_err(&st, &job(true));
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(
            err.starts_with("restoring checkpoint 1: state file `")
                && err.contains(&format!("more than the limit of {DEFAULT_MAX_STATE_FILE_BYTES}")),
            "{err}"
        );
        // Declared smaller than it is: refused before it is read too.
        meta.operators[0].files[subtask].bytes = len;
        st.write_metadata(&checkpoint_dir(1), &meta).unwrap();
        let err = load_err(&at(128 << 30), &job(true));
        assert!(err.contains(&format!("the metadata says {len}")), "{err}");
    }

    #[test]
    fn fifos_symlinks_and_directories_are_refused_without_blocking() {
        let (st, meta, chk) = fresh("special");
        let name = meta.operators[0].files[1].file.clone();
        let file = chk.join(&name);
        let load_in_thread = |st: CheckpointStorage| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tx.send(st.load(&checkpoint_dir(1), &job(true)).map(|_| ()).map_err(|e| e.to_string()));
            });
            rx.recv_timeout(Duration::from_secs(10)).expect("the load blocked").unwrap_err()
        };
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink(chk.join(&meta.operators[0].files[0].file), &file).unwrap();
        let err = load_in_thread(CheckpointStorage::open(st.path()).unwrap());
        assert!(
            err.contains(&name) && err.contains("it is a symbolic link, not a regular file"),
            "{err}"
        );
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let err = load_in_thread(CheckpointStorage::open(st.path()).unwrap());
        assert!(err.contains("it is a directory"), "{err}");
        std::fs::remove_dir(&file).unwrap();
        let made = std::process::Command::new("mkfifo").arg(&file).status();
        if made.is_ok_and(|s| s.success()) {
            let err = load_in_thread(CheckpointStorage::open(st.path()).unwrap());
            assert!(err.contains("it is a FIFO"), "{err}");
            // Through the handle too: a FIFO opened non-blocking does not wait for a writer.
            use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};
            let d = Dir::open_ambient_dir(&chk, cap_std::ambient_authority()).unwrap();
            let mut options = OpenOptions::new();
            options.read(true).custom_flags(super::super::store::O_NONBLOCK);
            assert!(d.open_with(&name, &options).is_ok());
        } else {
            eprintln!("no mkfifo: the FIFO case is skipped");
        }
    }

    #[test]
    fn metadata_over_its_cap_is_refused() {
        let (st, _, chk) = fresh("metadata-cap");
        let len = std::fs::metadata(chk.join(METADATA)).unwrap().len();
        let at = |cap| {
            CheckpointStorage::open(st.path()).unwrap().with_limits(RestoreLimits {
                max_metadata_bytes: cap,
                ..RestoreLimits::default()
            })
        };
        at(len).load(&checkpoint_dir(1), &job(true)).unwrap();
        let err = load_err(&at(len - 1), &job(true));
        assert!(
            err.contains("metadata `") && err.contains(&format!("more than the limit of {}", len - 1)),
            "{err}"
        );
        std::fs::OpenOptions::new()
            .write(true)
            .open(chk.join(METADATA))
            .unwrap()
            .set_len(DEFAULT_MAX_METADATA_BYTES + 1)
            .unwrap();
        let err = load_err(&st, &job(true));
        assert!(
            err.contains(&format!("more than the limit of {DEFAULT_MAX_METADATA_BYTES}")),
            "{err}"
        );
    }

    #[test]
    fn metadata_must_describe_every_stateful_operator() {
        let (st, meta, _) = fresh("describe");
        let with = |f: &dyn Fn(&mut Metadata)| {
            let mut m = meta.clone();
            f(&mut m);
            st.write_metadata(&checkpoint_dir(1), &m).unwrap();
        };
        with(&|m| m.operators.clear());
        let err = load_err(&st, &job(false));
        assert!(
            err.starts_with("restoring checkpoint 1: metadata `") && err.contains("lists no operators"),
            "{err}"
        );
        with(&|m| {
            m.operators.pop();
        });
        let err = load_err(&st, &job(true));
        assert!(err.contains("no state of operator `src`, which has state in the job"), "{err}");
        // An explicit restore lets an operator added since start empty.
        st.load(&checkpoint_dir(1), &job(false)).unwrap();
        type Damage<'a> = &'a dyn Fn(&mut Metadata);
        let cases: [(Damage, &str); 9] = [
            (
                &|m| m.operators[0].files.pop().map_or((), drop),
                "has 1 state files for parallelism 2",
            ),
            (&|m| m.operators[0].parallelism = 0, "parallelism 0, not between 1"),
            (&|m| m.operators[0].files.swap(0, 1), "entry 0 of operator `count` is subtask 1"),
            (
                &|m| m.operators[1].files[0].file = "../../etc/passwd".into(),
                "expected subtask 0 in",
            ),
            (&|m| m.operators.push(m.operators[0].clone()), "lists operator `count` twice"),
            (&|m| m.max_parallelism = 0, "max_parallelism 0 is not between"),
            (&|m| m.checkpoint = 9, "its directory is that of checkpoint 1"),
            (&|m| m.sinks[0].pending = vec!["../../x".into()], "is not a sealed part file name"),
            (
                &|m| m.sinks[0].pending = vec!["part-1-00000002".into()],
                "sealed for checkpoint 2, after this one",
            ),
        ];
        for (damage, want) in cases {
            with(damage);
            let err = load_err(&st, &job(true));
            assert!(err.contains(want), "{want}: {err}");
        }
    }

    #[test]
    fn key_groups_outside_a_subtasks_range_are_refused() {
        let (st, mut meta, chk) = fresh("groups");
        let read = |i: usize| std::fs::read(chk.join(&meta.operators[0].files[i].file)).unwrap();
        let (zero, one) = (read(0), read(1));
        // Each subtask's file holds the other's groups, checksums and all valid.
        replace(&st, &mut meta, 0, 0, &one);
        replace(&st, &mut meta, 0, 1, &zero);
        let err = load_err(&st, &job(true));
        let range = KeyGroupRange::for_subtask(MAX, 2, 0);
        assert!(
            err.contains(&format!("is outside the key groups {}..={} of its subtask", range.start, range.end)),
            "{err}"
        );
        // Claiming a smaller max_parallelism: groups beyond it, or keys hashing elsewhere.
        replace(&st, &mut meta, 0, 0, &zero);
        replace(&st, &mut meta, 0, 1, &one);
        meta.max_parallelism = 8;
        st.write_metadata(&checkpoint_dir(1), &meta).unwrap();
        let err = load_err(&st, &job(true));
        assert!(err.contains("key group"), "{err}");
    }

    #[test]
    fn the_payload_limits_are_enforced_per_file_and_per_checkpoint() {
        let (st, meta, _) = fresh("payload");
        let limits = |per_file, total| {
            CheckpointStorage::open(st.path()).unwrap().with_limits(RestoreLimits {
                max_payload_bytes: per_file,
                max_checkpoint_payload_bytes: total,
                ..RestoreLimits::default()
            })
        };
        let c = st.load(&checkpoint_dir(1), &job(true)).unwrap();
        let sizes: Vec<u64> = meta
            .operators
            .iter()
            .flat_map(|o| c.states[&o.name].iter().map(|s| s.payload_bytes() as u64))
            .collect();
        let (largest, sum) = (*sizes.iter().max().unwrap(), sizes.iter().sum::<u64>());
        limits(largest, sum).load(&checkpoint_dir(1), &job(true)).unwrap();
        let err = load_err(&limits(largest - 1, sum), &job(true));
        assert!(err.contains(&format!("decompresses to more than {} bytes", largest - 1)), "{err}");
        let err = load_err(&limits(largest, sum - 1), &job(true));
        assert!(err.contains(&format!("more than {} bytes together", sum - 1)), "{err}");
    }

    #[test]
    fn load_latest_falls_back_past_a_damaged_checkpoint() {
        let (st, _, _) = fresh("fallback");
        let mut newest = write_checkpoint(&st, 2);
        assert_eq!(st.load_latest(0, &job(true)).unwrap().meta.checkpoint, 2);
        newest.operators.clear();
        st.write_metadata(&checkpoint_dir(2), &newest).unwrap();
        assert_eq!(st.load_latest(0, &job(true)).unwrap().meta.checkpoint, 1);
        assert!(st.load_latest(2, &job(true)).is_none());
    }

    #[test]
    fn sealed_file_names_parse() {
        assert_eq!(sealed_checkpoint("part-0-00000007"), Some(7));
        assert_eq!(sealed_checkpoint("part-12-00000007-end"), Some(7));
        for bad in ["part-0", "part--7", "part-0-7/..", "../part-0-7", "part-a-7", ""] {
            assert_eq!(sealed_checkpoint(bad), None, "{bad}");
        }
    }
}
