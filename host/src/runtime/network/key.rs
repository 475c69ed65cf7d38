//! The identity of a logical channel across the cluster, which a consumer
//! subscribes by.

use std::fmt;

/// Identity of one logical channel across the cluster: (job id, execution
/// attempt, channel number in the job's plan).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChannelKey {
    /// The job (on a TaskManager, `job-id/fencing-token`).
    pub job: String,
    /// The execution attempt.
    pub attempt: u32,
    /// The channel's number in the attempt's plan.
    pub channel: u32,
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} attempt {} channel {}", self.job, self.attempt, self.channel)
    }
}
