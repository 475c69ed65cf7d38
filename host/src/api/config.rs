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
//! ```

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
        c.check().map_err(invalid)?;
        Ok(c)
    }

    /// Tenant ids and token hashes must be unique and well formed.
    pub fn check(&self) -> Result<(), String> {
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
        }
        if let Some(h) = &self.admin_token_sha256
            && (!hash_ok(h) || tokens.contains(&h.to_ascii_lowercase()))
        {
            return Err("admin_token_sha256 must be 64 hex digits and differ from every tenant's".into());
        }
        Ok(())
    }
}
