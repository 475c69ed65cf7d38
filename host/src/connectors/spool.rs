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

use std::path::PathBuf;

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
