//! Running guests: the wasmtime engine, the component cache, the host side of
//! every WIT interface, and one long-lived instance per subtask.
//!
//! ```text
//!  bytes ──sha256──► Component (compiled once; serialized on disk by digest
//!                    │           and engine configuration)
//!                    └─► InstancePre ──► GuestInstance (one per subtask:
//!                          Store + memory cap + epoch deadline per call)
//!                                            │ trap / limit
//!                                            ▼
//!                                  poisoned: dropped, never reused
//! ```

mod bindings;
pub mod compile;
mod engine;
mod host;
mod instance;
mod world;

pub use engine::{ComponentDigest, LoadedComponent, WasmEngine, WasmError};
pub use host::{KeyedScope, RunKeys};
pub use instance::{GuestEnv, GuestError, GuestFailure, GuestInstance, GuestOutput, RecordError, WindowBounds, live_instances};
pub use world::{ComponentInfo, WORLDS, World};
