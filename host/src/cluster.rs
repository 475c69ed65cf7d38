//! The cluster: who runs a job's tasks, and how a job survives failures.
//!
//! ```text
//!  JobMaster (per job): plan ─► deployer ─► attempt; coordinator; restarts
//!  deployers: minicluster (every task in this process: `sluice run`,
//!             `sluice serve`) | jobmanager::RemoteDeployer (the slots of
//!             TaskManagers: `sluice jobmanager`)
//!  taskmanager: the `sluice taskmanager` process; rpc: the control RPC;
//!  shuffle: channels local or over the data plane
//! ```

pub mod batch;
pub mod ha;
pub mod jobmanager;
pub mod jobmaster;
pub mod minicluster;
pub mod restart;
pub mod rpc;
pub mod shuffle;
pub mod taskmanager;

pub use jobmaster::{Deployer, JobMaster, JobMessage, MAX_EXCEPTIONS};
pub use minicluster::{JobHandle, JobSummary, Restore, RunOptions, SavepointRequester, run_job};
