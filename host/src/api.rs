//! The HTTP API: `sluice serve` and its client.
//!
//! ```text
//!  client ──HTTP/1.1──► routes (auth: bearer token → tenant)
//!                         ├─ components: validate (Wasm component, a Sluice world,
//!                         │   allowed imports) → content-addressed store per tenant
//!                         ├─ files: the tenant's input and output area
//!                         ├─ jobs: spec (JSON) → rewrite (digests → stored files,
//!                         │   paths confined to the tenant, limits capped by quotas)
//!                         │   → JobGraph → run_job on its own threads
//!                         └─ metrics: Prometheus text
//! ```
//!
//! Every tenant's data lives under `<data_dir>/tenants/<id>/`; a request can
//! only name things inside its own tenant's directory, and anything of
//! another tenant answers 404, exactly as if it did not exist. Errors have
//! one shape, `{"error": {"code", "message"}}` ([`ApiError`]).
//!
//! No tenant can take the server down through it: connections, their
//! header and idle time, request bodies in flight (count and bytes, per
//! tenant and in all), body deadlines, spec sizes and name lengths,
//! concurrent `/metrics` answers and each tenant's disk are bounded; each
//! bound is a server limit ([`ServerLimits`]) or a tenant quota, listed with
//! its default in `docs/api.md`.

mod body;
mod budget;
pub mod client;
pub mod config;
mod dashboard;
pub mod error;
mod files;
mod ha;
mod jobs;
mod listener;
mod metrics;
mod routes;
mod store;

pub use client::{ApiResponse, Client, ClientError};
pub use config::{ServerConfig, ServerLimits};
pub use error::ApiError;
pub use listener::serve;
pub use routes::{ROUTES, Server};

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("api/openapi.json");
