//! Tenants: who they are (an id and the SHA-256 of their bearer token) and
//! what they may use (quotas).
//!
//! Tokens are never stored: the server's config holds their SHA-256, and a
//! request's token is hashed and looked up. Quotas are policy only; the
//! API enforces the counting ones (components, running jobs, parallelism,
//! upload size, request bodies in flight, disk) when a request arrives (disk
//! also while jobs run), and the engine enforces the ones
//! that bite while a job runs (memory, CPU per call, fuel, state size,
//! log rate) through each job's limits and the tenant's
//! [`TenantMeter`](super::TenantMeter).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A tenant's id: 1 to 64 of `a-z 0-9 - _`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl TenantId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok {
            Ok(TenantId(s))
        } else {
            Err(format!("tenant id {s:?} must be 1 to 64 of a-z, 0-9, '-' and '_'"))
        }
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hex SHA-256 of a bearer token, as the config stores it.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a tenant may use. Every field has a default, so `[tenants.quotas]`
/// may name only what differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Linear memory per guest instance, MiB. Default 256.
    pub memory_mb: u64,
    /// Longest one guest call may run, ms (an epoch deadline). Default 10000.
    pub call_timeout_ms: u64,
    /// Meter every guest instruction with fuel and report it per tenant
    /// (costs some speed). Default off.
    pub fuel_metering: bool,
    /// Fuel one guest call may burn, with `fuel_metering`. Default: unlimited.
    pub fuel_per_call: Option<u64>,
    /// Guest log lines per second per instance. Default 100.
    pub log_lines_per_sec: u32,
    /// Components stored. Default 100.
    pub max_components: usize,
    /// Jobs created, running or restarting at once. Default 10.
    pub max_running_jobs: usize,
    /// Sum of the parallelism of every node of those jobs. Default 32.
    pub max_total_parallelism: u32,
    /// Largest request body (component, file), bytes. Default 64 MiB.
    pub max_upload_bytes: u64,
    /// Keyed state held by all the tenant's jobs together, MiB. Default 1024.
    pub max_state_mb: u64,
    /// Ended jobs kept for inspection; older ones are deleted with their
    /// files. Default 100.
    pub max_finished_jobs: usize,
    /// Request bodies of the tenant being received at once. Default 8.
    pub max_bodies_in_flight: usize,
    /// Bytes of the tenant's request bodies held at once, MiB. Default 128.
    pub max_body_mb_in_flight: u64,
    /// Disk the tenant's file area (inputs, sink output) and job
    /// directories (checkpoints, savepoints) may take together, MiB.
    /// Default 10240.
    pub max_disk_mb: u64,
    /// Files and directories in those areas together. Default 100000.
    pub max_files: u64,
    /// Savepoints kept per job; taking one more deletes the oldest.
    /// Default 10.
    pub max_savepoints_per_job: usize,
    /// Most completed checkpoints a job may keep (its
    /// `[checkpoints] retain` is capped at it). Default 10.
    pub max_checkpoints_retained: usize,
}

impl Quotas {
    /// Quotas that would refuse every request are errors.
    pub fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_bodies_in_flight", self.max_bodies_in_flight as u64),
            ("max_body_mb_in_flight", self.max_body_mb_in_flight),
            ("max_savepoints_per_job", self.max_savepoints_per_job as u64),
            ("max_checkpoints_retained", self.max_checkpoints_retained as u64),
        ] {
            if value == 0 {
                return Err(format!("quota {key} must be at least 1"));
            }
        }
        Ok(())
    }

    /// [`max_disk_mb`](Self::max_disk_mb) in bytes.
    pub fn max_disk_bytes(&self) -> u64 {
        self.max_disk_mb.saturating_mul(1 << 20)
    }
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            memory_mb: 256,
            call_timeout_ms: 10_000,
            fuel_metering: false,
            fuel_per_call: None,
            log_lines_per_sec: 100,
            max_components: 100,
            max_running_jobs: 10,
            max_total_parallelism: 32,
            max_upload_bytes: 64 << 20,
            max_state_mb: 1024,
            max_finished_jobs: 100,
            max_bodies_in_flight: 8,
            max_body_mb_in_flight: 128,
            max_disk_mb: 10 << 10,
            max_files: 100_000,
            max_savepoints_per_job: 10,
            max_checkpoints_retained: 10,
        }
    }
}

/// One tenant of a server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its id.
    pub id: TenantId,
    /// Hex SHA-256 of its bearer token (`sluice hash-token` prints it).
    pub token_sha256: String,
    /// What it may use.
    #[serde(default)]
    pub quotas: Quotas,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_tokens_hashed() {
        assert!(TenantId::try_from("acme-1".to_owned()).is_ok());
        assert!(TenantId::try_from("../x".to_owned()).is_err());
        assert!(TenantId::try_from(String::new()).is_err());
        assert_eq!(
            token_hash("secret"),
            "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
        );
    }

    #[test]
    fn quotas_that_refuse_everything_are_errors() {
        assert_eq!(Quotas::default().check(), Ok(()));
        let q = Quotas {
            max_bodies_in_flight: 0,
            ..Quotas::default()
        };
        assert!(q.check().unwrap_err().contains("max_bodies_in_flight"));
        assert_eq!(Quotas::default().max_disk_bytes(), 10 << 30);
    }
}
