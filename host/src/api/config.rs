//! The server's config file (`sluice serve --config sluice.toml`).
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! data_dir = "data"              # relative to this file
//! # admin_token_sha256 = "…"    # may read /metrics of every tenant
//!
//! [[tenants]]
//! id = "acme"
//! token_sha256 = "…"             # `sluice hash-token <token>` prints it
//! [tenants.quotas]
//! memory_mb = 128
//! max_running_jobs = 4
//!
//! [limits]                        # server-wide bounds; every one has a default
//! max_connections = 512
//!
//! [object_store]                  # for s3:// checkpoint locations (else AWS_* variables)
//! endpoint = "http://127.0.0.1:9000"
//! allow_http = true
//!
//! [ha]                            # `sluice jobmanager` only: see docs/ha.md
//! etcd = ["http://127.0.0.1:2379"]
//! storage = "s3://bucket/prefix"
//! ```
//!
//! Bounds come in two kinds: what one tenant may claim is a quota
//! (`[tenants.quotas]`, [`Quotas`](crate::tenancy::Quotas)), so an operator
//! can give one tenant more; what protects the process as a whole
//! (connections, timeouts, bodies in flight over every tenant, the size of
//! anything that ends up in every `/metrics` scrape) is a server limit
//! ([`ServerLimits`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tenancy::TenantConfig;

/// The whole config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address to listen on. Default `127.0.0.1:8080`; port 0 picks a free
    /// one (the server prints the address it got).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where components, files, checkpoints and the component cache live.
    pub data_dir: PathBuf,
    /// SHA-256 of a token that may read every tenant's metrics.
    pub admin_token_sha256: Option<String>,
    /// Finished jobs' logs keep this many lines each. Default 1000.
    #[serde(default = "default_log_lines")]
    pub job_log_lines: usize,
    /// The tenants.
    pub tenants: Vec<TenantConfig>,
    /// Server-wide bounds (`[limits]`).
    #[serde(default)]
    pub limits: ServerLimits,
    /// `sluice jobmanager`: the control RPC and how TaskManagers are
    /// watched (`[cluster]`); ignored by `sluice serve`.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// `sluice jobmanager`: high availability through etcd and an object
    /// store (`[ha]`); none: a single JobManager.
    #[serde(default)]
    pub ha: Option<crate::cluster::ha::HaConfig>,
    /// How to reach the object store of `s3://` checkpoint locations
    /// (`[object_store]`); a field left out falls back to its `AWS_*`
    /// environment variable.
    #[serde(default)]
    pub object_store: Option<crate::checkpoint::object::ObjectStoreConfig>,
}

/// The JobManager's side of a standalone cluster.
///
/// ```toml
/// [cluster]
/// rpc = "127.0.0.1:6123"          # port 0: any free port (printed as `rpc HOST:PORT`)
/// heartbeat_interval_ms = 2000
/// heartbeat_timeout_ms = 10000
/// slot_timeout_ms = 300000        # a job waits this long for enough free slots
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// Where the control RPC listens. Default `127.0.0.1:6123`.
    pub rpc: String,
    /// How often TaskManagers heartbeat, ms. Default 2000.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a TaskManager is lost, ms. Default 10000.
    pub heartbeat_timeout_ms: u64,
    /// How long a job waits for enough free task slots before it fails, ms.
    /// Default 300000.
    pub slot_timeout_ms: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            rpc: "127.0.0.1:6123".into(),
            heartbeat_interval_ms: 2000,
            heartbeat_timeout_ms: 10_000,
            slot_timeout_ms: 300_000,
        }
    }
}

/// Bounds that protect the server process as a whole, whoever asks. Every
/// field has a default, so `[limits]` may name only what differs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Connections open at once; one more is answered 503 and closed at
    /// once. Default 512 (keep it below the process's file limit).
    pub max_connections: usize,
    /// Longest a client may take to send a request's headers, ms; a kept-alive
    /// connection waits this long for its next request. Default 15000.
    pub header_read_timeout_ms: u64,
    /// A connection on which no request is being handled and no byte moved
    /// either way for this long is closed, ms (a client that stops reading
    /// its answer, too). Default 60000.
    pub idle_timeout_ms: u64,
    /// Longest one request body may take to arrive, ms; a slower one is
    /// answered 408 and its connection closed. Default 60000.
    pub body_read_timeout_ms: u64,
    /// Request bodies being received at once, every tenant together.
    /// Default 64.
    pub max_bodies_in_flight: usize,
    /// Bytes of request bodies held at once, every tenant together, MiB.
    /// Default 512.
    pub max_body_mb_in_flight: u64,
    /// `/metrics` answers being rendered at once; more get 503. Default 4.
    pub max_concurrent_scrapes: usize,
    /// Largest `POST /v1/jobs` body, bytes. Default 1 MiB.
    pub max_spec_bytes: u64,
    /// Nodes (sources, operators and sinks) of one job. Default 256.
    pub max_spec_nodes: usize,
    /// Edges of one job. Default 1024.
    pub max_spec_edges: usize,
    /// Longest name of a job, source, operator or sink, bytes (names are in
    /// every `/metrics` answer). Default 128.
    pub max_name_bytes: usize,
    /// How often the disk use of tenants with running jobs is measured, ms.
    /// Default 5000.
    pub disk_check_interval_ms: u64,
    /// Longest the compile of one uploaded component may take, ms; the
    /// compiler process is killed after it and the upload refused. Default
    /// 60000.
    pub compile_timeout_ms: u64,
    /// Data-size limit of the compiler process, MiB. Default 2048.
    pub compile_memory_mb: u64,
    /// Components compiled at once; more wait. Default 2.
    pub max_concurrent_compiles: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 512,
            header_read_timeout_ms: 15_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 60_000,
            max_bodies_in_flight: 64,
            max_body_mb_in_flight: 512,
            max_concurrent_scrapes: 4,
            max_spec_bytes: 1 << 20,
            max_spec_nodes: 256,
            max_spec_edges: 1024,
            max_name_bytes: 128,
            disk_check_interval_ms: 5_000,
            compile_timeout_ms: 60_000,
            compile_memory_mb: 2048,
            max_concurrent_compiles: 2,
        }
    }
}

impl ServerLimits {
    /// Every count and duration must be positive: a zero would refuse
    /// everything or spin.
    fn check(&self) -> Result<(), String> {
        for (key, value) in [
            ("max_connections", self.max_connections as u64),
            ("header_read_timeout_ms", self.header_read_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("body_read_timeout_ms", self.body_read_timeout_ms),
            ("max_bodies_in_flight", self.max_bodies_in_flight as u64),
            ("max_body_mb_in_flight", self.max_body_mb_in_flight),
            ("max_concurrent_scrapes", self.max_concurrent_scrapes as u64),
            ("max_spec_bytes", self.max_spec_bytes),
            ("max_spec_nodes", self.max_spec_nodes as u64),
            ("max_spec_edges", self.max_spec_edges as u64),
            ("max_name_bytes", self.max_name_bytes as u64),
            ("disk_check_interval_ms", self.disk_check_interval_ms),
            ("compile_timeout_ms", self.compile_timeout_ms),
            ("compile_memory_mb", self.compile_memory_mb),
            ("max_concurrent_compiles", self.max_concurrent_compiles as u64),
        ] {
            if value == 0 {
                return Err(format!("[limits] {key} must be at least 1"));
            }
        }
        Ok(())
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_log_lines() -> usize {
    1000
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl ServerConfig {
    /// Read and check a config file; `data_dir` is made absolute relative
    /// to the file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        };
        let mut c: ServerConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        c.data_dir = base.join(&c.data_dir);
        if let Some(f) = c.ha.as_mut().and_then(|h| h.files_dir.as_mut()) {
            *f = base.join(&*f);
        }
        c.check().map_err(invalid)?;
        Ok(c)
    }

    /// Tenant ids and token hashes must be unique and well formed, and every
    /// limit usable.
    pub fn check(&self) -> Result<(), String> {
        self.limits.check()?;
        let c = &self.cluster;
        if c.rpc.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("[cluster] rpc must be HOST:PORT with an IP address, not {:?}", c.rpc));
        }
        for (key, value) in [
            ("heartbeat_interval_ms", c.heartbeat_interval_ms),
            ("heartbeat_timeout_ms", c.heartbeat_timeout_ms),
            ("slot_timeout_ms", c.slot_timeout_ms),
        ] {
            if value == 0 {
                return Err(format!("[cluster] {key} must be at least 1"));
            }
        }
        if c.heartbeat_timeout_ms <= c.heartbeat_interval_ms {
            return Err("[cluster] heartbeat_timeout_ms must be longer than heartbeat_interval_ms".into());
        }
        if let Some(h) = &self.ha {
            h.check()?;
        }
        let mut ids = HashSet::new();
        let mut tokens = HashSet::new();
        let hash_ok = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
        for t in &self.tenants {
            if !ids.insert(&t.id) {
                return Err(format!("tenant `{}` is listed twice", t.id));
            }
            if !hash_ok(&t.token_sha256) {
                return Err(format!(
                    "tenant `{}`: token_sha256 must be 64 hex digits (`sluice hash-token` prints it)",
                    t.id
                ));
            }
            if !tokens.insert(t.token_sha256.to_ascii_lowercase()) {
                return Err(format!("tenant `{}` shares its token with another tenant", t.id));
            }
            t.quotas.check().map_err(|e| format!("tenant `{}`: {e}", t.id))?;
        }
        if let Some(h) = &self.admin_token_sha256
            && (!hash_ok(h) || tokens.contains(&h.to_ascii_lowercase()))
        {
            return Err("admin_token_sha256 must be 64 hex digits and differ from every tenant's".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<ServerConfig, String> {
        let text = format!("data_dir = \"d\"\ntenants = []\n{extra}");
        let c: ServerConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        c.check().map(|()| c)
    }

    #[test]
    fn limits_have_defaults_and_zeros_are_refused() {
        let c = config("").unwrap();
        assert_eq!(c.limits, ServerLimits::default());
        assert_eq!(c.limits.max_name_bytes, 128);
        let c = config("[limits]\nmax_connections = 8").unwrap();
        assert_eq!((c.limits.max_connections, c.limits.max_spec_nodes), (8, 256));
        let e = config("[limits]\nbody_read_timeout_ms = 0").unwrap_err();
        assert!(e.contains("body_read_timeout_ms must be at least 1"), "{e}");
        let e = config("[limits]\nmax_conections = 8").unwrap_err();
        assert!(e.contains("max_conections"), "{e}");
    }
}
