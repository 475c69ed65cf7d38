//! The runtime: subtasks on their own threads, connected by bounded channels
//! that carry batches, so a slow consumer backpressures its producers all the
//! way to the sources.
//!
//! ```text
//!  source task ──batches──► [bounded channel] ──► task (chain of operators)
//!      │                                             │ partitioner per edge:
//!      └ reads records in batches                    │ forward | rebalance | hash
//!                                                    ▼
//!                                               sink (last in a chain)
//! ```
//!
//! Tasks are built only from the task descriptors of an
//! [`ExecutionPlan`](crate::job::plan::ExecutionPlan) ([`build`]); the
//! [`shuffle`] environment makes their channels (in-process, or over the
//! network on a TaskManager); an [`attempt`] runs the tasks of one execution
//! attempt that live in this process and carries out the checkpoint
//! coordinator's commands on them.
//!
//! A stream carries [`StreamElement`]s: record batches in-band with control
//! messages: watermarks, idleness, barriers and `EndOfData`.

pub mod attempt;
pub mod build;
mod channel;
pub(crate) mod iteration;
pub mod network;
pub(crate) mod partition;
pub mod shuffle;
mod task;

pub use crate::operator::{Emit, MetricsSample, Operator, OperatorMetrics, SubtaskSample, TaskError};
pub use attempt::{AttemptContext, EventSink, RunningAttempt, TaskEvent};
pub use build::ComponentResolver;
pub use channel::{
    ChannelClosed, ElementSender, GateEvent, InputGate, LocalInputGate, LocalReceiver, RecordBatch, StreamElement, local_channel,
};
pub use shuffle::{LocalShuffle, ShuffleEnvironment};
