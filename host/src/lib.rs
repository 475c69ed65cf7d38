//! Sluice: a stream processing engine whose user operators are WebAssembly
//! components.
//!
//! The host owns everything that must survive a failure or be shared:
//! partitioning, time, keyed state and (soon) checkpoints; guests only
//! compute, and reach state through the WIT `state` interface. Modules, with
//! dependencies pointing down:
//!
//! ```text
//! api          the HTTP server and its client (`sluice serve`)
//! cluster      the JobMaster, restarts, the mini cluster (and TaskManagers)
//! job          spec (TOML/JSON), validation, logical graph, physical plan
//! queries      the Nexmark queries: job specs and reference implementations
//! runtime      tasks, channels, partitioners, operators, the executor
//! connectors   sources and sinks
//! wasm         engine, component cache, host interfaces, guest instances
//! state        key groups, the heap backend
//! tenancy      tenants, quotas, per-instance limits, usage meters
//! time         clocks, watermarks, timers
//! toolchain    C bindings and core-module-to-component, for non-Rust guests
//! window       window assigners, triggers and the window operator
//! ```

pub mod api;
pub mod bench;
pub mod checkpoint;
pub mod cluster;
pub mod connectors;
pub mod job;
pub mod queries;
pub mod runtime;
pub mod state;
pub mod tenancy;
pub mod time;
pub mod toolchain;
pub mod wasm;
pub mod window;
