//! Checkpoint storage behind a trait: the bytes of checkpoints and
//! savepoints (state files, metadata) under relative, `/`-separated paths
//! of one root. [`DirStore`] is a directory opened with cap-std, so no path
//! written or read can escape it; [`ObjectStoreStore`](super::object::ObjectStoreStore)
//! a prefix of an S3 bucket.
//!
//! What a store must guarantee: [`CheckpointStore::put_atomic`] makes a file
//! appear complete or not at all (the metadata is written last with it, so
//! a checkpoint is complete exactly when its metadata exists); a file is
//! read only when it is a regular file within a size cap.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, FileTypeExt, OpenOptions, OpenOptionsExt};

/// A file opened for reading.
pub trait StoreReader: Read + Seek + Send {}

impl<T: Read + Seek + Send> StoreReader for T {}

/// Where checkpoint files live.
pub trait CheckpointStore: Send + Sync + fmt::Debug {
    /// Where the root is, for messages.
    fn location(&self) -> &Path;
    /// Write `path` durably, replacing it (its directories are created).
    fn put(&self, path: &str, bytes: &[u8]) -> std::io::Result<()>;
    /// Write `path` so that it appears complete or not at all.
    fn put_atomic(&self, path: &str, bytes: &[u8]) -> std::io::Result<()>;
    /// Open `path` for reading if it is a regular file of at most `cap`
    /// bytes: the reader and its length.
    fn open(&self, path: &str, cap: u64) -> Result<(Box<dyn StoreReader>, u64), FileError>;
    /// True if `path` exists.
    fn exists(&self, path: &str) -> bool;
    /// The names directly under directory `dir` (`""`: the root).
    fn list(&self, dir: &str) -> Vec<String>;
    /// Remove directory `dir` and everything under it (missing is fine).
    fn remove_all(&self, dir: &str) -> std::io::Result<()>;
}

/// The store at `location`: an object store for `s3://bucket/prefix`,
/// else a directory (created when `create`, else it must exist).
pub fn open_store(location: &Path, create: bool) -> std::io::Result<std::sync::Arc<dyn CheckpointStore>> {
    if super::object::is_url(location) {
        let url = location.to_str().unwrap_or_default();
        return Ok(std::sync::Arc::new(super::object::ObjectStoreStore::open(url)?));
    }
    Ok(std::sync::Arc::new(if create {
        DirStore::open(location)?
    } else {
        DirStore::existing(location)?
    }))
}

/// Where a job's checkpoints are: `dir` of its spec, relative to `base`
/// (the spec's directory) unless absolute or an object-store location.
pub fn resolve_location(base: &Path, dir: &str) -> PathBuf {
    if dir.starts_with(super::object::SCHEME) {
        PathBuf::from(dir.trim_end_matches('/'))
    } else {
        base.join(dir)
    }
}

/// `a/b` from `a` and `b` (`b` alone when `a` is empty).
pub fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() { name.to_owned() } else { format!("{dir}/{name}") }
}

/// A directory, opened with cap-std: no path escapes it.
pub struct DirStore {
    root: Dir,
    path: PathBuf,
}

impl fmt::Debug for DirStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirStore").field("path", &self.path).finish()
    }
}

impl DirStore {
    /// Open (creating) the directory `path`.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(path)?;
        Ok(DirStore {
            root: Dir::open_ambient_dir(path, ambient_authority())?,
            path: path.to_owned(),
        })
    }

    /// Open the existing directory `path` (for reading a checkpoint given
    /// by its path).
    pub fn existing(path: &Path) -> std::io::Result<Self> {
        Ok(DirStore {
            root: Dir::open_ambient_dir(path, ambient_authority())?,
            path: path.to_owned(),
        })
    }

    fn parent_of(path: &str) -> Option<&str> {
        path.rsplit_once('/').map(|(d, _)| d)
    }
}

impl CheckpointStore for DirStore {
    fn location(&self) -> &Path {
        &self.path
    }

    fn put(&self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        if let Some(dir) = Self::parent_of(path) {
            self.root.create_dir_all(dir)?;
        }
        let mut f = self.root.create(path)?;
        f.write_all(bytes)?;
        f.sync_all()
    }

    fn put_atomic(&self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        let tmp = format!("{path}.tmp");
        self.put(&tmp, bytes)?;
        self.root.rename(&tmp, &self.root, path)?;
        // Make the rename durable (best effort: not every filesystem can sync a directory).
        let dir = Self::parent_of(path).unwrap_or(".");
        if let Ok(d) = self.root.open_dir(dir) {
            let _ = d.open(".").and_then(|f| f.sync_all());
        }
        Ok(())
    }

    fn open(&self, path: &str, cap: u64) -> Result<(Box<dyn StoreReader>, u64), FileError> {
        let (f, len) = open_regular(&self.root, path, cap)?;
        Ok((Box::new(f), len))
    }

    fn exists(&self, path: &str) -> bool {
        self.root.exists(path)
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let entries = if dir.is_empty() {
            self.root.entries()
        } else {
            self.root.read_dir(dir)
        };
        entries
            .map(|e| e.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    fn remove_all(&self, dir: &str) -> std::io::Result<()> {
        match self.root.remove_dir_all(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Why a checkpoint file cannot be opened for reading.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or inspecting it failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// It is not a regular file.
    #[error("it is {0}, not a regular file")]
    NotRegular(&'static str),
    /// It is larger than the cap.
    #[error("it has {len} bytes, more than the limit of {cap}")]
    TooLarge {
        /// Its length.
        len: u64,
        /// The cap.
        cap: u64,
    },
}

/// `O_NONBLOCK` where its value is known (Linux outside MIPS and SPARC, the
/// BSDs and macOS): opening a FIFO that replaced the file between the
/// `lstat` and the `open` then returns at once instead of waiting for a
/// writer. Elsewhere the `lstat` alone keeps FIFOs out.
pub(crate) const O_NONBLOCK: i32 = if cfg!(all(
    target_os = "linux",
    not(any(
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc",
        target_arch = "sparc64"
    ))
)) {
    0o4000
} else if cfg!(any(
    target_os = "macos",
    target_os = "freebsd",
    target_os = "openbsd",
    target_os = "netbsd"
)) {
    0x4
} else {
    0
};

fn not_regular(t: cap_std::fs::FileType) -> Option<&'static str> {
    if t.is_file() {
        None
    } else if t.is_symlink() {
        Some("a symbolic link")
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_block_device() || t.is_char_device() {
        Some("a device")
    } else {
        Some("a special file")
    }
}

/// Open `name` in `d` for reading if it is a regular file of at most `cap`
/// bytes; the file and its length. Its type and length are checked with
/// `lstat` before it is opened (so a symlink, FIFO or device is never
/// opened) and again through the handle (in case it was replaced between).
fn open_regular(d: &Dir, name: &str, cap: u64) -> Result<(cap_std::fs::File, u64), FileError> {
    let check = |m: &cap_std::fs::Metadata| match not_regular(m.file_type()) {
        Some(kind) => Err(FileError::NotRegular(kind)),
        None if m.len() > cap => Err(FileError::TooLarge { len: m.len(), cap }),
        None => Ok(m.len()),
    };
    check(&d.symlink_metadata(name)?)?;
    let mut options = OpenOptions::new();
    options.read(true);
    if O_NONBLOCK != 0 {
        options.custom_flags(O_NONBLOCK);
    }
    let f = d.open_with(name, &options)?;
    let len = check(&f.metadata()?)?;
    Ok((f, len))
}
