//! A tenant's file area (`<tenant>/files/`): job inputs and sink output,
//! and how much disk the tenant uses.
//!
//! The area is a cap-std [`Dir`], so no name can reach outside it, and the
//! server follows no symbolic link and opens no special file inside it:
//! a path is walked one directory at a time, each checked to be a real
//! directory before it is entered; the last part must be a regular file
//! (or a directory, where one is asked for). A file is opened non-blocking
//! (a FIFO swapped in cannot hang a thread) and kept only if it is the
//! regular file that was checked (same device and inode), so a link swapped
//! in between the check and the open is refused too. Links and special files
//! are left out of listings, and refused by get, put and delete and in the
//! paths of submitted jobs.
//!
//! Disk use is measured by walking the tenant's areas, links not followed,
//! stopping one entry past the file-count quota, so a walk is bounded too.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, MetadataExt, OpenOptions};

/// Something the file area refuses, or could not do.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Nothing by that name.
    #[error("file {0:?} not found")]
    NotFound(String),
    /// A symbolic link on the path.
    #[error("{0:?} is a symbolic link; the server follows no link in a file area")]
    Symlink(String),
    /// A FIFO, socket or device on the path.
    #[error("{0:?} is not a regular file or directory; the server opens only those in a file area")]
    Special(String),
    /// A file where a directory is needed.
    #[error("{0:?} is a file, not a directory")]
    NotADirectory(String),
    /// A directory where a file is needed.
    #[error("{0:?} is a directory")]
    IsADirectory(String),
    /// The write would take the tenant over its disk quota.
    #[error(
        "disk quota exceeded: the tenant uses {used} bytes in its files and job directories, and this write adds {adding}; its limit is {limit} bytes (`max_disk_mb`)"
    )]
    DiskQuota {
        /// Bytes in use.
        used: u64,
        /// Bytes the write adds.
        adding: u64,
        /// The quota, bytes.
        limit: u64,
    },
    /// The write would take the tenant over its file-count quota.
    #[error(
        "file quota exceeded: the tenant has {used} files and directories, and this write adds {adding}; its limit is {limit} (`max_files`)"
    )]
    FileQuota {
        /// Entries in use (at least).
        used: u64,
        /// Entries the write adds.
        adding: u64,
        /// The quota.
        limit: u64,
    },
    /// An I/O failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn io_error(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FileError {
    let context = context.into();
    move |source| FileError::Io { context, source }
}

/// What a path names.
#[derive(Debug)]
pub enum Entry {
    /// A directory: its visible entries (no hidden names, links or special
    /// files), by name.
    Dir(Vec<ListedEntry>),
    /// A regular file, open for reading, and its length.
    File(std::fs::File, u64),
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedEntry {
    /// Its name.
    pub name: String,
    /// True for a directory.
    pub dir: bool,
    /// Bytes (a file's length).
    pub size: u64,
}

/// What a put changes, for the quota check before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PutCost {
    /// Bytes of the file being replaced (0 for a new file).
    pub replaced: u64,
    /// Bytes of the new content.
    pub bytes: u64,
    /// Files and directories the put creates.
    pub new_entries: u64,
}

/// How a job uses a path of the file area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobPath {
    /// A file source reads it.
    Source,
    /// A sink writes it (a file, or a directory of part files).
    Sink,
}

/// Where a walk ended.
enum Walk {
    /// Every directory on the path exists: the last one.
    Found(Dir),
    /// Part `at` of the directories is missing; `dir` is the one before it.
    Missing { dir: Dir, at: usize },
}

/// The file area of one tenant.
#[derive(Debug)]
pub struct FileArea {
    root: PathBuf,
    dir: Dir,
}

/// The plain parts of a path already checked by `safe_relative`.
fn parts(rel: &Path) -> Vec<&OsStr> {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect()
}

fn shown(parts: &[&OsStr]) -> String {
    parts.iter().map(|p| p.to_string_lossy()).collect::<Vec<_>>().join("/")
}

impl FileArea {
    /// Open (creating) the area at `root`.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let dir = Dir::open_ambient_dir(&root, ambient_authority())?;
        Ok(FileArea { root, dir })
    }

    /// Where it is (jobs resolve their paths against it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Enter the directories `dirs` one at a time, refusing links, special
    /// files and files on the way.
    fn walk(&self, dirs: &[&OsStr]) -> Result<Walk, FileError> {
        let mut dir = self.dir.try_clone().map_err(io_error("opening the file area"))?;
        for (i, part) in dirs.iter().enumerate() {
            let name = || shown(&dirs[..=i]);
            let meta = match dir.symlink_metadata(part) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Walk::Missing { dir, at: i }),
                Err(e) => return Err(io_error(format!("reading {:?}", name()))(e)),
            };
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(FileError::Symlink(name()));
            }
            if ft.is_file() {
                return Err(FileError::NotADirectory(name()));
            }
            if !ft.is_dir() {
                return Err(FileError::Special(name()));
            }
            let next = dir.open_dir(part).map_err(io_error(format!("opening {:?}", name())))?;
            let opened = next.dir_metadata().map_err(io_error(format!("reading {:?}", name())))?;
            if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
                // Replaced by a link between the check and the open.
                return Err(FileError::Symlink(name()));
            }
            dir = next;
        }
        Ok(Walk::Found(dir))
    }

    /// The directory holding `last` (under `dirs`) and `last`'s own
    /// metadata: it must exist and not be a link (`name` is how errors
    /// show it).
    fn existing(&self, dirs: &[&OsStr], last: &OsStr, name: &str) -> Result<(Dir, cap_std::fs::Metadata), FileError> {
        let Walk::Found(dir) = self.walk(dirs)? else {
            return Err(FileError::NotFound(name.to_owned()));
        };
        let meta = match dir.symlink_metadata(last) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound(name.to_owned())),
            Err(e) => return Err(io_error(format!("reading {name:?}"))(e)),
        };
        if meta.file_type().is_symlink() {
            return Err(FileError::Symlink(name.to_owned()));
        }
        Ok((dir, meta))
    }

    /// What `rel` names (`None`: the area itself).
    pub fn get(&self, rel: Option<&Path>) -> Result<Entry, FileError> {
        let all = rel.map(parts).unwrap_or_default();
        let Some((last, dirs)) = all.split_last() else {
            let dir = self.dir.try_clone().map_err(io_error("opening the file area"))?;
            return list(&dir, "").map(Entry::Dir);
        };
        let name = shown(&all);
        let (dir, meta) = self.existing(dirs, last, &name)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let sub = match self.walk(&all)? {
                Walk::Found(d) => d,
                Walk::Missing { .. } => return Err(FileError::NotFound(name)),
            };
            return list(&sub, &name).map(Entry::Dir);
        }
        if !ft.is_file() {
            return Err(FileError::Special(name));
        }
        let mut options = OpenOptions::new();
        options.read(true);
        // No O_NOFOLLOW in cap-std's public API; non-blocking keeps a FIFO
        // swapped in from hanging the open, and the inode check below
        // refuses anything but the file that was checked.
        options._cap_fs_ext_nonblock(true);
        let file = dir.open_with(last, &options).map_err(io_error(format!("opening {name:?}")))?;
        let opened = file.metadata().map_err(io_error(format!("reading {name:?}")))?;
        if !opened.is_file() || (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(FileError::Symlink(name));
        }
        Ok(Entry::File(file.into_std(), opened.len()))
    }

    /// Write `bytes` to `rel` (creating its directories), after `admit`
    /// accepted what it costs. The bytes go to a hidden temporary name and
    /// are renamed into place, so a failed put leaves the old file.
    pub fn put(&self, rel: &Path, bytes: &[u8], admit: impl FnOnce(PutCost) -> Result<(), FileError>) -> Result<(), FileError> {
        let all = parts(rel);
        let Some((last, dirs)) = all.split_last() else {
            return Err(FileError::IsADirectory(String::new()));
        };
        let name = shown(&all);
        let (mut dir, missing) = match self.walk(dirs)? {
            Walk::Found(d) => (d, dirs.len()),
            Walk::Missing { dir, at } => (dir, at),
        };
        let replaced = if missing == dirs.len() {
            match dir.symlink_metadata(last) {
                Ok(m) if m.file_type().is_symlink() => return Err(FileError::Symlink(name)),
                Ok(m) if m.is_dir() => return Err(FileError::IsADirectory(name)),
                Ok(m) if !m.is_file() => return Err(FileError::Special(name)),
                Ok(m) => Some(m.len()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(io_error(format!("reading {name:?}"))(e)),
            }
        } else {
            None
        };
        admit(PutCost {
            replaced: replaced.unwrap_or(0),
            bytes: bytes.len() as u64,
            new_entries: (dirs.len() - missing) as u64 + u64::from(replaced.is_none()),
        })?;
        for (i, part) in dirs.iter().enumerate().skip(missing) {
            let shown_dir = shown(&dirs[..=i]);
            match dir.create_dir(part) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(format!("creating the directory {shown_dir:?}"))(e)),
            }
            // Enter it as the walk does (a link raced in is refused).
            dir = match self.walk(&dirs[..=i])? {
                Walk::Found(d) => d,
                Walk::Missing { .. } => return Err(FileError::NotFound(shown_dir)),
            };
        }
        let tmp = format!(".upload-{}.tmp", last.to_string_lossy());
        let _ = dir.remove_file(&tmp);
        let written = (|| {
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            let mut f = dir.open_with(&tmp, &options)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            dir.rename(&tmp, &dir, last)
        })();
        if let Err(e) = written {
            let _ = dir.remove_file(&tmp);
            return Err(io_error(format!("writing {name:?}"))(e));
        }
        Ok(())
    }

    /// Delete the file or directory `rel` (a directory with everything in
    /// it; links inside are removed, not followed).
    pub fn delete(&self, rel: &Path) -> Result<(), FileError> {
        let all = parts(rel);
        let Some((last, dirs)) = all.split_last() else {
            return Err(FileError::NotFound(String::new()));
        };
        let name = shown(&all);
        let (dir, meta) = self.existing(dirs, last, &name)?;
        let ft = meta.file_type();
        let r = if ft.is_dir() {
            dir.remove_dir_all(last)
        } else if ft.is_file() {
            dir.remove_file(last)
        } else {
            return Err(FileError::Special(name));
        };
        r.map_err(io_error(format!("deleting {name:?}")))
    }

    /// Check a path a job will read (`Source`) or write (`Sink`): no link
    /// or special file on it, and no file where a directory must be. A
    /// missing path is fine here (the job reports a missing input itself).
    pub fn check_job_path(&self, rel: &Path, how: JobPath) -> Result<(), FileError> {
        let all = parts(rel);
        let Some((last, dirs)) = all.split_last() else {
            return Err(FileError::NotFound(String::new()));
        };
        let name = shown(&all);
        let Walk::Found(dir) = self.walk(dirs)? else { return Ok(()) };
        match dir.symlink_metadata(last) {
            Ok(m) if m.file_type().is_symlink() => Err(FileError::Symlink(name)),
            Ok(m) if m.is_dir() && how == JobPath::Source => Err(FileError::IsADirectory(name)),
            Ok(m) if !m.is_file() && !m.is_dir() => Err(FileError::Special(name)),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(format!("reading {name:?}"))(e)),
        }
    }
}

/// The visible entries of `dir`, by name.
fn list(dir: &Dir, name: &str) -> Result<Vec<ListedEntry>, FileError> {
    let mut out = Vec::new();
    for e in dir.entries().map_err(io_error(format!("listing {name:?}")))? {
        let Ok(e) = e else { continue };
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Ok(ft) = e.file_type() else { continue };
        if file_name.starts_with('.') || !(ft.is_dir() || ft.is_file()) {
            continue;
        }
        let size = if ft.is_file() {
            e.metadata().map(|m| m.len()).unwrap_or(0)
        } else {
            0
        };
        out.push(ListedEntry {
            name: file_name,
            dir: ft.is_dir(),
            size,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Disk use of some directories: bytes of regular files, and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes of regular files (their lengths).
    pub bytes: u64,
    /// Files, directories and anything else, every one.
    pub entries: u64,
    /// True when the walk stopped at its entry bound (the figures are then
    /// lower bounds).
    pub truncated: bool,
}

/// Walk `roots` (links are counted, not followed), stopping after
/// `max_entries` entries.
pub fn usage(roots: &[&Path], max_entries: u64) -> Usage {
    let mut u = Usage::default();
    let mut stack: Vec<PathBuf> = roots.iter().map(|r| r.to_path_buf()).collect();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for e in entries.flatten() {
            if u.entries >= max_entries {
                u.truncated = true;
                return u;
            }
            u.entries += 1;
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                // `DirEntry::metadata` does not follow links.
                u.bytes = u.bytes.saturating_add(e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    u
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(name: &str) -> (PathBuf, FileArea) {
        let base = std::env::temp_dir().join(format!("sluice-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let a = FileArea::open(base.join("files")).unwrap();
        (base, a)
    }

    fn ok(_: PutCost) -> Result<(), FileError> {
        Ok(())
    }

    fn read(a: &FileArea, p: &str) -> Result<Vec<u8>, FileError> {
        use std::io::Read;
        match a.get(Some(Path::new(p)))? {
            Entry::File(mut f, _) => {
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).unwrap();
                Ok(bytes)
            }
            Entry::Dir(_) => panic!("{p} is a directory"),
        }
    }

    #[test]
    fn put_get_list_delete() {
        let (base, a) = area("basic");
        a.put(Path::new("in/a/words.txt"), b"hello", ok).unwrap();
        assert_eq!(read(&a, "in/a/words.txt").unwrap(), b"hello");
        let Entry::Dir(listed) = a.get(Some(Path::new("in"))).unwrap() else {
            panic!()
        };
        assert_eq!(
            listed,
            [ListedEntry {
                name: "a".into(),
                dir: true,
                size: 0
            }]
        );
        assert!(matches!(a.put(Path::new("in/a"), b"x", ok), Err(FileError::IsADirectory(_))));
        assert!(matches!(
            a.put(Path::new("in/a/words.txt/x"), b"x", ok),
            Err(FileError::NotADirectory(_))
        ));
        a.delete(Path::new("in")).unwrap();
        assert!(matches!(a.get(Some(Path::new("in/a/words.txt"))), Err(FileError::NotFound(_))));
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn links_and_special_files_lead_nowhere() {
        let (base, a) = area("links");
        let secret = base.join("secret.txt");
        std::fs::write(&secret, b"another tenant's").unwrap();
        std::fs::create_dir_all(base.join("elsewhere")).unwrap();
        let files = a.root().to_owned();
        std::os::unix::fs::symlink(&secret, files.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), files.join("linkdir")).unwrap();
        std::fs::create_dir_all(files.join("real")).unwrap();
        std::os::unix::fs::symlink("../real", files.join("real/up")).unwrap();
        let fifo = files.join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());

        for p in ["link.txt", "linkdir/x", "real/up/x"] {
            assert!(matches!(read(&a, p), Err(FileError::Symlink(_))), "get {p}");
            assert!(matches!(a.put(Path::new(p), b"x", ok), Err(FileError::Symlink(_))), "put {p}");
            assert!(matches!(a.delete(Path::new(p)), Err(FileError::Symlink(_))), "delete {p}");
            for how in [JobPath::Source, JobPath::Sink] {
                assert!(matches!(a.check_job_path(Path::new(p), how), Err(FileError::Symlink(_))), "job {p}");
            }
        }
        assert!(matches!(read(&a, "fifo"), Err(FileError::Special(_))));
        assert!(matches!(a.put(Path::new("fifo"), b"x", ok), Err(FileError::Special(_))));
        assert!(matches!(
            a.check_job_path(Path::new("fifo"), JobPath::Source),
            Err(FileError::Special(_))
        ));
        // Nothing was written through the links, and listings leave them out.
        assert_eq!(std::fs::read(&secret).unwrap(), b"another tenant's");
        assert!(std::fs::read_dir(base.join("elsewhere")).unwrap().next().is_none());
        let Entry::Dir(listed) = a.get(None).unwrap() else { panic!() };
        assert_eq!(listed.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["real"]);
        // Deleting a directory with a link inside removes the link only.
        a.delete(Path::new("real")).unwrap();
        assert!(base.join("elsewhere").is_dir());
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn a_put_is_admitted_with_its_cost_before_anything_is_written() {
        let (base, a) = area("cost");
        let mut seen = None;
        a.put(Path::new("a/b/c.txt"), b"12345", |c| {
            seen = Some(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            seen,
            Some(PutCost {
                replaced: 0,
                bytes: 5,
                new_entries: 3
            })
        );
        a.put(Path::new("a/b/c.txt"), b"12", |c| {
            assert_eq!(
                c,
                PutCost {
                    replaced: 5,
                    bytes: 2,
                    new_entries: 0
                }
            );
            Ok(())
        })
        .unwrap();
        let refuse = |_| {
            Err(FileError::DiskQuota {
                used: 1,
                adding: 1,
                limit: 1,
            })
        };
        assert!(matches!(
            a.put(Path::new("x/y.txt"), b"1", refuse),
            Err(FileError::DiskQuota { .. })
        ));
        assert!(!a.root().join("x").exists(), "a refused put creates nothing");
        let u = usage(&[a.root()], 100);
        assert_eq!((u.bytes, u.entries, u.truncated), (2, 3, false));
        let u = usage(&[a.root()], 2);
        assert_eq!((u.entries, u.truncated), (2, true));
        let _ = std::fs::remove_dir_all(base);
    }
}
