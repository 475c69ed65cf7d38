//! The shuffle environment: one factory for the output partitions and input
//! gates of tasks, so tasks never see what carries their data. In one
//! process every channel is a bounded in-process channel; on a TaskManager
//! a channel whose other end runs elsewhere goes over the network.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use super::channel::{ElementSender, InputGate, LocalInputGate, LocalReceiver, local_channel};
use crate::job::plan::TaskDescriptor;
use crate::operator::TaskError;

/// Creates the ends of a plan's channels.
pub trait ShuffleEnvironment: Sync {
    /// The sending end of `channel`, written by task `producer` and read by
    /// task `consumer`.
    fn output(&self, producer: usize, channel: u32, consumer: usize) -> Result<Box<dyn ElementSender>, TaskError>;
    /// The input gate of `task` over its input channels, in order.
    fn input_gate(&self, task: &TaskDescriptor) -> Result<Box<dyn InputGate>, TaskError>;
}

/// Both ends of an in-process channel until their tasks take them.
type Ends = (Option<Box<dyn ElementSender>>, Option<LocalReceiver>);

/// Channels between tasks of one process.
pub struct LocalShuffle {
    capacity: usize,
    bytes: usize,
    channels: Mutex<HashMap<u32, Ends>>,
    /// Feedback channels of iterations: unbounded.
    unbounded: HashSet<u32>,
}

impl LocalShuffle {
    /// Channels of `capacity` elements and `bytes` bytes beyond one batch.
    pub fn new(capacity: usize, bytes: usize) -> Self {
        LocalShuffle {
            capacity: capacity.max(1),
            bytes,
            channels: Mutex::new(HashMap::new()),
            unbounded: HashSet::new(),
        }
    }

    /// The same, with the feedback channels of `plan`'s iterations
    /// unbounded (a bounded channel in a cycle can deadlock it).
    pub fn for_plan(capacity: usize, bytes: usize, plan: &crate::job::plan::ExecutionPlan) -> Self {
        let mut s = Self::new(capacity, bytes);
        s.unbounded = plan
            .tasks
            .iter()
            .flat_map(|t| &t.inputs)
            .filter(|i| i.feedback)
            .map(|i| i.channel)
            .collect();
        s
    }

    /// Take one end of `channel`, creating the channel on first use.
    fn take<T>(&self, channel: u32, pick: impl FnOnce(&mut Ends) -> Option<T>) -> Result<T, TaskError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let capacity = if self.unbounded.contains(&channel) { 0 } else { self.capacity };
        let ends = channels.entry(channel).or_insert_with(|| {
            let (tx, rx) = local_channel(capacity, self.bytes);
            (Some(tx), Some(rx))
        });
        pick(ends).ok_or_else(|| TaskError::Internal(format!("channel {channel} is taken twice")))
    }

    /// The receiving end of `channel`.
    pub fn receiver(&self, channel: u32) -> Result<LocalReceiver, TaskError> {
        self.take(channel, |e| e.1.take())
    }

    /// The sending end of `channel`.
    pub fn sender(&self, channel: u32) -> Result<Box<dyn ElementSender>, TaskError> {
        self.take(channel, |e| e.0.take())
    }
}

impl ShuffleEnvironment for LocalShuffle {
    fn output(&self, _producer: usize, channel: u32, _consumer: usize) -> Result<Box<dyn ElementSender>, TaskError> {
        self.sender(channel)
    }

    fn input_gate(&self, task: &TaskDescriptor) -> Result<Box<dyn InputGate>, TaskError> {
        let receivers = task
            .inputs
            .iter()
            .map(|i| self.receiver(i.channel))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Box::new(LocalInputGate::new(receivers)))
    }
}
