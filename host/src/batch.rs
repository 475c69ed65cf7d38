//! The data plane of batch mode: blocking exchanges and sorted inputs.
//!
//! ```text
//!  producer task ─► SpillWriter per channel ─► spill file (complete once
//!                   the producer has finished)
//!  consumer task ◄─ BlockingGate: the files of its channels, read in order
//!                 ◄─ SortedGate (keyed head): every file through an
//!                    ExternalSorter (sorted runs spilled past a memory
//!                    budget, merged) ─► batches grouped by key, with
//!                    `KeysEnded` after each group of complete keys
//! ```
//!
//! A [`BlockingShuffle`] hands these out as the [`ShuffleEnvironment`] of a
//! batch job's tasks, so tasks are built exactly as in streaming mode; the
//! scheduler ([`crate::cluster::batch`]) starts a task only once every task
//! writing its inputs has finished, and runs a failed task again over the
//! same files.
//!
//! [`ShuffleEnvironment`]: crate::runtime::ShuffleEnvironment

mod gate;
mod shuffle;
pub mod sort;
pub mod spill;

pub use shuffle::BlockingShuffle;
pub use sort::{ExternalSorter, SortStats};
