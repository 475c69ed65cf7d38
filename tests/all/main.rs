//! Sluice's integration tests: one binary (linking wasmtime once), one module
//! per area. They run real jobs with the real components built from `udfs/`
//! by `scripts/build-udfs` (which `scripts/test` runs first).

mod batch;
mod checkpoints;
mod cluster;
mod dashboard;
mod first_hour;
mod ha;
mod harness;
mod hostile;
mod iterations;
mod job_spec;
mod kafka;
mod keyed_state;
mod languages;
mod nats;
mod nexmark;
mod postgres;
mod server;
mod traps;
mod windows;
mod wordcount;
