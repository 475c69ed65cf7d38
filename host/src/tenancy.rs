//! Tenancy policy: what each guest instance may use. (Tenants, tokens and
//! quotas arrive with the HTTP API.)

pub mod limits;

pub use limits::{InstanceLimits, LogRateLimiter, MemoryLimiter};
