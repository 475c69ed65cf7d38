//! The shuffle environment of a batch job: every channel between tasks is
//! a spill file in the job's spill directory.

use std::path::{Path, PathBuf};

use super::gate::{BlockingGate, ChannelFile, SortedGate};
use super::spill::{SpillWriter, WriteErrors};
use crate::job::plan::{OperatorBody, TaskDescriptor};
use crate::operator::TaskError;
use crate::runtime::{ElementSender, InputGate, ShuffleEnvironment};

/// Channels as spill files under one directory.
pub struct BlockingShuffle {
    dir: PathBuf,
    sort_budget: usize,
    batch_size: usize,
    errors: WriteErrors,
}

impl BlockingShuffle {
    /// Spill files under `dir` (which must exist); keyed tasks sort in
    /// `sort_budget` bytes and hand out batches of `batch_size` records.
    pub fn new(dir: &Path, sort_budget: usize, batch_size: usize) -> Self {
        BlockingShuffle {
            dir: dir.to_owned(),
            sort_budget,
            batch_size,
            errors: WriteErrors::default(),
        }
    }

    /// The file of `channel`.
    pub fn channel_path(&self, channel: u32) -> PathBuf {
        self.dir.join(format!("ch-{channel}.spill"))
    }

    /// The first error task `task` met writing its spill files, if any
    /// (taken: a task run again starts clean).
    pub fn take_write_error(&self, task: usize) -> Option<String> {
        let mut errors = self.errors.lock().unwrap_or_else(|p| p.into_inner());
        let i = errors.iter().position(|(t, _)| *t == task)?;
        let (_, message) = errors.remove(i);
        errors.retain(|(t, _)| *t != task);
        Some(message)
    }
}

/// Whether a task's head keeps keyed state, so its input is sorted by key.
pub(crate) fn sorts_input(task: &TaskDescriptor) -> bool {
    matches!(task.operators.first().map(|o| &o.body), Some(OperatorBody::Operator { spec, .. }) if spec.kind.is_keyed())
}

impl ShuffleEnvironment for BlockingShuffle {
    fn output(&self, producer: usize, channel: u32, _consumer: usize) -> Result<Box<dyn ElementSender>, TaskError> {
        let path = self.channel_path(channel);
        let w = SpillWriter::create(&path, producer, self.errors.clone())
            .map_err(|e| TaskError::Exchange(format!("creating spill file {}: {e}", path.display())))?;
        Ok(Box::new(w))
    }

    fn input_gate(&self, task: &TaskDescriptor) -> Result<Box<dyn InputGate>, TaskError> {
        let channels: Vec<ChannelFile> = task
            .inputs
            .iter()
            .map(|i| ChannelFile {
                input: i.input as u8,
                path: self.channel_path(i.channel),
            })
            .collect();
        if sorts_input(task) {
            Ok(Box::new(SortedGate::new(
                channels,
                self.sort_budget,
                self.dir.join(format!("sort-{}", task.index)),
                self.batch_size,
                task.name.clone(),
            )))
        } else {
            Ok(Box::new(BlockingGate::new(channels)))
        }
    }
}
