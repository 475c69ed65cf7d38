//! Tenancy policy: who may use the server ([`TenantConfig`]), how much
//! ([`Quotas`]), what each guest instance may use ([`InstanceLimits`]), and
//! what a tenant is using now ([`TenantMeter`]). The mechanism (wasmtime's
//! `ResourceLimiter`, epoch deadlines, fuel) is wired in `wasm/`.

pub mod limits;
pub mod logs;
pub mod meter;
pub mod tenant;

pub use limits::{InstanceLimits, LogRateLimiter, MemoryLimiter};
pub use logs::{GuestLogBuffer, LogLine, LogSnapshot};
pub use meter::{JobStateMeter, StateAccount, StateBudget, StateLimitExceeded, TenantMeter, process_status_kb};
pub use tenant::{Quotas, TenantConfig, TenantId, token_hash};
