//! Sluice: a stream processing engine whose user operators are WebAssembly
//! components.
//!
//! The host owns everything that must survive a failure or be shared:
//! partitioning, time, keyed state and checkpoints; guests only compute,
//! and reach state through the WIT `state` interface. Modules, each using
//! only those above it in this list (no import cycles):
//!
//! ```text
//! blocking     synchronous calls into the async I/O clients (object store, etcd)
//! tenancy      tenants, quotas, per-instance limits, usage meters
//! state        key groups, the heap backend
//! spec         the job spec a user writes (TOML/JSON): pure data
//! time         clocks, watermarks, timers
//! types        record batches, stream elements, barriers
//! checkpoint   snapshot format, storage (a trait), the coordinator's state machine
//! connectors   sources and sinks
//! wasm         engine, component cache, host interfaces, guest instances
//! window       window assigners, triggers, slicing, built-in aggregates
//! operator     the Operator trait and operators: stateless, keyed, window, join, sink
//! job          validation, logical graph, physical plan (task descriptors)
//! runtime      tasks, channels, partitioners, the shuffle (local | network), attempts
//! batch        batch mode's data plane: spill files, external sort, sorted input gates
//! cluster      the JobMaster, restarts, the mini cluster, JobManager and TaskManagers
//! api          the HTTP server and its client (`sluice serve`, `sluice jobmanager`)
//! queries      the Nexmark queries: job specs and reference implementations
//! bench        benchmarks against native baselines
//! toolchain    C bindings and core-module-to-component, for non-Rust guests
//! ```

pub mod api;
pub mod batch;
pub mod bench;
pub mod blocking;
pub mod checkpoint;
pub mod cluster;
pub mod connectors;
pub mod job;
pub mod operator;
pub mod queries;
pub mod runtime;
pub mod spec;
pub mod state;
pub mod tenancy;
pub mod time;
pub mod toolchain;
pub mod types;
pub mod wasm;
pub mod window;
