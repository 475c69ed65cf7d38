//! The shuffle environment of a TaskManager: a channel whose two tasks run
//! here is an in-process channel; one whose other end runs on another
//! TaskManager goes over the data plane (credit-based, multiplexed on one
//! connection per pair of TaskManagers).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::job::plan::TaskDescriptor;
use crate::runtime::network::{ChannelKey, DataPlane};
use crate::runtime::{ElementSender, InputGate, LocalInputGate, LocalShuffle, ShuffleEnvironment, TaskError};

/// Channels of one attempt's tasks on one TaskManager.
pub struct NetworkShuffle {
    /// `job-id/fencing-token`: channels of another JobMaster never mix.
    pub job: String,
    /// The attempt.
    pub attempt: u32,
    /// This TaskManager's id.
    pub me: String,
    /// TaskManager id and data address of every task of the attempt.
    pub locations: Vec<(String, SocketAddr)>,
    /// The data plane.
    pub data: Arc<DataPlane>,
    /// Channels between local tasks.
    pub local: LocalShuffle,
}

impl NetworkShuffle {
    fn key(&self, channel: u32) -> ChannelKey {
        ChannelKey {
            job: self.job.clone(),
            attempt: self.attempt,
            channel,
        }
    }

    fn is_local(&self, task: usize) -> bool {
        self.locations.get(task).is_some_and(|(tm, _)| *tm == self.me)
    }
}

impl ShuffleEnvironment for NetworkShuffle {
    fn output(&self, _producer: usize, channel: u32, consumer: usize) -> Result<Box<dyn ElementSender>, TaskError> {
        if self.is_local(consumer) {
            self.local.sender(channel)
        } else {
            Ok(self.data.sender(self.key(channel)))
        }
    }

    fn input_gate(&self, task: &TaskDescriptor) -> Result<Box<dyn InputGate>, TaskError> {
        let remote: Vec<(ChannelKey, SocketAddr)> = task
            .inputs
            .iter()
            .filter(|i| !self.is_local(i.producer))
            .map(|i| {
                let addr = self.locations.get(i.producer).map(|l| l.1).ok_or_else(|| {
                    TaskError::Internal(format!(
                        "the plan has no location for task {} (producer of channel {})",
                        i.producer, i.channel
                    ))
                })?;
                Ok((self.key(i.channel), addr))
            })
            .collect::<Result<_, TaskError>>()?;
        let mut remote = self
            .data
            .receivers(remote)
            .map_err(|e| TaskError::Remote(format!("connecting the inputs of {}: {e}", task.name)))?
            .into_iter();
        let mut receivers = Vec::with_capacity(task.inputs.len());
        for i in &task.inputs {
            if self.is_local(i.producer) {
                receivers.push(self.local.receiver(i.channel)?);
            } else {
                receivers.push(
                    remote
                        .next()
                        .ok_or_else(|| TaskError::Internal("the data plane returned too few receivers".into()))?,
                );
            }
        }
        Ok(Box::new(LocalInputGate::new(receivers)))
    }
}
