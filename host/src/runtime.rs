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
//! A stream carries [`StreamElement`]s: record batches in-band with control
//! messages: watermarks, idleness and `EndOfData` (barriers will join them).
//! Channels sit behind [`ElementSender`] and [`InputGate`] so a network
//! transport can implement them for cluster mode.

mod channel;
mod executor;
pub mod join;
pub(crate) mod operator;
pub(crate) mod partition;

pub use channel::{
    ChannelClosed, ElementSender, GateEvent, InputGate, LocalInputGate, LocalReceiver, RecordBatch, StreamElement, local_channel,
};
pub use executor::{JobHandle, JobSummary, OperatorMetrics, Restore, RunOptions, TaskError, run_job};
pub use operator::{Emit, Operator};
pub(crate) use operator::{KeyedOperator, StatelessOperator};
