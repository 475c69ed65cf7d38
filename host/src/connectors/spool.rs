//! A write-ahead spool for sinks that publish to a system without
//! two-phase commit of their own (NATS JetStream, Kafka through
//! librdkafka): records go to a transactional file sink's files in the
//! job's checkpoint directory, and once their checkpoint completes the
//! files are published (by a [`Publish`] function) and deleted.
//!
//! ```text
//! write              ─► the spool: a transactional file sink's hidden file
//! barrier n          ─► sealed as part-<subtask>-<n> (the checkpoint lists it)
//! checkpoint n done  ─► committed, published, then deleted
//! restore            ─► the files the checkpoint lists are committed; every
//!                       committed file not yet deleted is published again
//! ```
//!
//! A record is published only once its checkpoint is complete, so nothing a
//! restore takes back was published; a file published again after a crash
//! is the publisher's to deduplicate.

use std::path::{Path, PathBuf};

use super::{ConnectorError, file_sink, off_runtime};
use crate::spec::SinkSpec;

/// Publishes committed spool files `(name, path)`, in order, deleting
/// each once it is published.
pub type Publish = fn(&SinkSpec, &[(String, PathBuf)]) -> Result<(), ConnectorError>;

/// The spool directory of a sink (the graph fills it in).
pub fn spool(spec: &SinkSpec) -> PathBuf {
    PathBuf::from(spec.path.as_deref().unwrap_or_default())
}

/// Before sink subtask `subtask` runs: settle the spool as the file sink
/// does, then publish the committed files of this subtask (and of earlier
/// subtasks `i` with `i % parallelism == subtask`) not yet published.
/// Returns the names published again.
pub fn recover(
    spec: &SinkSpec,
    subtask: u32,
    restored: Option<(u64, &[String])>,
    publish_now: Publish,
) -> Result<Vec<String>, ConnectorError> {
    let dir = spool(spec);
    // A listed file already published was deleted: nothing to commit.
    let keep = restored.map(|(id, names)| (id, unpublished(&dir, names)));
    file_sink::prepare(&dir, subtask, spec.parallelism, keep.as_ref().map(|(id, k)| (*id, &k[..])))?;
    if restored.is_none() {
        // A fresh run: its checkpoint ids may start again from 1 (in a new
        // checkpoint directory), so its files must not be taken for an
        // earlier run's.
        forget_runs(&dir, subtask, spec.parallelism)?;
    }
    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".jsonl")).map(str::to_owned))
                .filter(|n| n.starts_with("part-"))
                .filter(|n| file_sink::writer_of(n).is_some_and(|w| w % spec.parallelism.max(1) == subtask))
                .collect()
        })
        .unwrap_or_default();
    left.sort();
    publish(spec, &left, publish_now)?;
    Ok(left)
}

/// Checkpoint done: commit the spool files `names` and publish them.
pub fn commit(spec: &SinkSpec, names: &[String], publish_now: Publish) -> Result<(), ConnectorError> {
    let names = unpublished(&spool(spec), names);
    file_sink::commit(&spool(spec), &names)?;
    publish(spec, &names, publish_now)
}

/// The spool files of `names` still on disk, sealed or committed: the
/// others were published and deleted.
fn unpublished(dir: &std::path::Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| dir.join(format!(".{n}.pending")).exists() || dir.join(format!("{n}.jsonl")).exists())
        .cloned()
        .collect()
}

/// Publish the committed spool files `names` (those already published and
/// deleted are skipped), each line acknowledged, then delete them.
fn publish(spec: &SinkSpec, names: &[String], publish_now: Publish) -> Result<(), ConnectorError> {
    let dir = spool(spec);
    let files: Vec<(String, PathBuf)> = names
        .iter()
        .map(|n| (n.clone(), dir.join(format!("{n}.jsonl"))))
        .filter(|(_, p)| p.exists())
        .collect();
    if files.is_empty() {
        return Ok(());
    }
    off_runtime(|| publish_now(spec, &files)).unwrap_or_else(|| {
        Err(ConnectorError::Sink {
            sink: spec.name.clone(),
            message: "publishing panicked".into(),
        })
    })
}

/// The run of writer `writer`'s spool files: a random id, made when the
/// writer first spools after a fresh start and kept (in the spool
/// directory) across restores. Publishers put it into what identifies a
/// file downstream (Kafka's commit marker and `sluice-txn` header, NATS's
/// message ids), because a file's name alone — writer and checkpoint — is
/// used again by a later fresh run of the same job whose checkpoint ids
/// start from 1 again.
pub fn run_of(dir: &Path, writer: u32) -> Result<String, ConnectorError> {
    let path = dir.join(format!("run-{writer}"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConnectorError::Io { path, source }
    };
    match std::fs::read_to_string(&path) {
        Ok(id) if is_run_id(id.trim()) => return Ok(id.trim().to_owned()),
        Ok(_) => {
            return Err(ConnectorError::Io {
                path: path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not a run id (16 hex digits)"),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&path)(e)),
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let id = new_run_id();
    let tmp = dir.join(format!(".run-{writer}.tmp"));
    std::fs::write(&tmp, &id).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    Ok(id)
}

fn is_run_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// 64 random bits, in hex (the standard library's per-process random hash
/// keys, mixed with the time and the process id).
fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// A fresh start of subtask `subtask`: forget the runs of the writers it
/// settles (a new one is made when each spools again).
fn forget_runs(dir: &Path, subtask: u32, parallelism: u32) -> Result<(), ConnectorError> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let writer = name.strip_prefix("run-").and_then(|w| w.parse::<u32>().ok());
        if writer.is_some_and(|w| w % parallelism.max(1) == subtask) {
            std::fs::remove_file(e.path()).map_err(|source| ConnectorError::Io { path: e.path(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_id_is_kept_until_a_fresh_start_forgets_it() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = run_of(&dir, 3).unwrap();
        assert!(is_run_id(&a));
        assert_eq!(run_of(&dir, 3).unwrap(), a);
        // Subtask 0 of 2 settles writers 0, 2, 4…: writer 3 stays.
        forget_runs(&dir, 0, 2).unwrap();
        assert_eq!(run_of(&dir, 3).unwrap(), a);
        forget_runs(&dir, 1, 2).unwrap();
        assert_ne!(run_of(&dir, 3).unwrap(), a);
        std::fs::write(dir.join("run-5"), "junk").unwrap();
        assert!(run_of(&dir, 5).unwrap_err().to_string().contains("not a run id"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
