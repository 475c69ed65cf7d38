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

pub mod client;
pub mod config;
pub mod error;
mod jobs;
mod metrics;
mod routes;
mod store;

pub use client::{ApiResponse, Client, ClientError};
pub use config::ServerConfig;
pub use error::ApiError;
pub use routes::{ROUTES, Server, serve};

/// The OpenAPI document served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("api/openapi.json");
