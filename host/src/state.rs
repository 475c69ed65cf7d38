//! Keyed state owned by the host: key groups and the heap backend.
//!
//! Guests reach state only through the WIT `state` interface; the host scopes
//! every call to the current key, so state can be partitioned by key group,
//! snapshotted and redistributed without the guest's involvement.

pub mod heap;
pub mod key_group;
pub mod panes;

pub use heap::{HeapKeyedState, Page, StateEntry, StateError, StateId};
pub use key_group::{DEFAULT_MAX_PARALLELISM, KeyGroup, KeyGroupRange};
pub use panes::PaneTable;

/// The hasher of the host's in-memory maps keyed by record keys (state,
/// timers, runs of a batch): fast on short keys and seeded per process, so
/// keys chosen to collide cannot be prepared in advance. Key groups use
/// xxh3 instead, which is stable across processes.
pub type KeyHasher = foldhash::fast::RandomState;
