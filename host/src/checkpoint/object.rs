//! Checkpoint storage on an S3-compatible object store (the `object_store`
//! crate's S3 client), for checkpoints that outlive a machine: a location
//! `s3://bucket/prefix` instead of a directory.
//!
//! ```text
//!  state files ─put (overwrite)─► s3://bucket/prefix/chk-7/<op>-<hash>-<subtask>.state
//!  metadata, last ─put (create-only: If-None-Match *)─► …/chk-7/_metadata.json
//! ```
//!
//! An object store has no rename, but a single put is atomic (an object
//! appears whole or not at all), so the metadata is written last with a
//! create-only put: a second writer of the same checkpoint (a deposed
//! JobManager) fails instead of replacing it. Where the endpoint and the
//! credentials come from: `[object_store]` in a config file
//! ([`configure`]), else the usual `AWS_*` environment variables
//! (`AWS_ENDPOINT`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_DEFAULT_REGION`, `AWS_ALLOW_HTTP`). The secret is never printed:
//! not by `Debug`, not in an error.
//!
//! The calls are synchronous (the checkpoint writer and the coordinator
//! are threads): each runs through [`crate::blocking`] and is bounded in
//! time (request timeout × attempts), so a store that stopped answering
//! fails the checkpoint instead of hanging it.

use std::fmt;
use std::future::Future;
use std::io::{Cursor, ErrorKind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig};
use serde::{Deserialize, Serialize};
use tokio_stream::StreamExt;

use super::store::{CheckpointStore, FileError, StoreReader, join};

/// The scheme of an object-store location.
pub const SCHEME: &str = "s3://";

/// How to reach the object store (`[object_store]` of a config file). A
/// field left out falls back to its `AWS_*` environment variable.
#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObjectStoreConfig {
    /// The endpoint, e.g. `http://127.0.0.1:9000` (`AWS_ENDPOINT`); none: AWS.
    pub endpoint: Option<String>,
    /// The region (`AWS_DEFAULT_REGION`). Default `us-east-1`.
    pub region: Option<String>,
    /// The access key id (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: Option<String>,
    /// The secret access key (`AWS_SECRET_ACCESS_KEY`); never serialized or
    /// printed.
    #[serde(skip_serializing)]
    pub secret_access_key: Option<String>,
    /// Allow `http://` endpoints (`AWS_ALLOW_HTTP`). Default false.
    pub allow_http: Option<bool>,
    /// Longest one request may take, ms. Default 5000.
    pub request_timeout_ms: Option<u64>,
    /// Retries of a failed idempotent request. Default 2.
    pub retries: Option<usize>,
}

impl fmt::Debug for ObjectStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreConfig")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key.as_ref().map(|_| "<redacted>"))
            .field("allow_http", &self.allow_http)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retries", &self.retries)
            .finish()
    }
}

impl ObjectStoreConfig {
    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.unwrap_or(5000).clamp(100, 600_000))
    }

    fn retries(&self) -> usize {
        self.retries.unwrap_or(2).min(10)
    }

    /// The longest a call may take: every attempt timing out, with backoff.
    fn call_deadline(&self) -> Duration {
        self.request_timeout() * (self.retries() as u32 + 1) + Duration::from_secs(2)
    }
}

struct Registry {
    config: ObjectStoreConfig,
    /// One client per bucket (it pools its connections).
    clients: Vec<(String, Arc<dyn ObjectStore>)>,
}

fn registry() -> MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(|| {
            Mutex::new(Registry {
                config: ObjectStoreConfig::default(),
                clients: Vec::new(),
            })
        })
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Use `config` for every object-store location opened from now on.
pub fn configure(config: ObjectStoreConfig) {
    let mut r = registry();
    r.config = config;
    r.clients.clear();
}

/// True if `location` names an object-store location.
pub fn is_url(location: &Path) -> bool {
    location.to_str().is_some_and(|s| s.starts_with(SCHEME))
}

/// Split `s3://bucket/prefix` into the bucket and the prefix (no slash at
/// either end; empty: the bucket's root).
pub fn parse_url(location: &str) -> Result<(String, String), String> {
    let rest = location
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("{location:?} is not an {SCHEME}bucket/prefix location"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !bucket_ok {
        return Err(format!(
            "{location:?}: the bucket name {bucket:?} must be 3 to 63 lowercase letters, digits, `-` or `.`"
        ));
    }
    let prefix = prefix.trim_matches('/');
    if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
        return Err(format!("{location:?}: the prefix may not hold `.`, `..` or empty segments"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

fn client(bucket: &str) -> std::io::Result<(Arc<dyn ObjectStore>, ObjectStoreConfig)> {
    let mut r = registry();
    let config = r.config.clone();
    if let Some((_, c)) = r.clients.iter().find(|(b, _)| b == bucket) {
        return Ok((c.clone(), config));
    }
    let env_http = std::env::var("AWS_ALLOW_HTTP").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket).with_client_options(
        ClientOptions::new()
            .with_timeout(config.request_timeout())
            .with_connect_timeout(Duration::from_secs(2))
            .with_allow_http(config.allow_http.unwrap_or(env_http)),
    );
    b = b.with_retry(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: config.retries(),
        retry_timeout: config.call_deadline(),
    });
    if std::env::var_os("AWS_DEFAULT_REGION").is_none() && std::env::var_os("AWS_REGION").is_none() {
        b = b.with_region("us-east-1");
    }
    if let Some(e) = &config.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(v) = &config.region {
        b = b.with_region(v);
    }
    if let Some(v) = &config.access_key_id {
        b = b.with_access_key_id(v);
    }
    if let Some(v) = &config.secret_access_key {
        b = b.with_secret_access_key(v);
    }
    let store: Arc<dyn ObjectStore> = Arc::new(
        b.build()
            .map_err(|e| std::io::Error::other(format!("the object store for bucket {bucket:?}: {e}")))?,
    );
    r.clients.push((bucket.to_owned(), store.clone()));
    Ok((store, config))
}

/// A prefix of a bucket as a [`CheckpointStore`].
pub struct ObjectStoreStore {
    store: Arc<dyn ObjectStore>,
    config: ObjectStoreConfig,
    prefix: String,
    location: PathBuf,
}

impl fmt::Debug for ObjectStoreStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreStore").field("location", &self.location).finish()
    }
}

fn io_error(op: &str, url: &str, e: object_store::Error) -> std::io::Error {
    let kind = match &e {
        object_store::Error::NotFound { .. } => ErrorKind::NotFound,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => ErrorKind::AlreadyExists,
        _ => ErrorKind::Other,
    };
    std::io::Error::new(kind, format!("{op} {url}: {e}"))
}

impl ObjectStoreStore {
    /// The store at `location` (`s3://bucket/prefix`). Nothing is sent yet:
    /// an unreachable store fails the first call.
    pub fn open(location: &str) -> std::io::Result<Self> {
        let (bucket, prefix) = parse_url(location).map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
        let (store, config) = client(&bucket)?;
        Ok(ObjectStoreStore {
            store,
            config,
            prefix,
            location: PathBuf::from(location.trim_end_matches('/')),
        })
    }

    fn key(&self, path: &str) -> ObjectPath {
        ObjectPath::from(join(&self.prefix, path.trim_matches('/')))
    }

    fn url(&self, path: &str) -> String {
        if path.is_empty() {
            self.location.display().to_string()
        } else {
            format!("{}/{path}", self.location.display())
        }
    }

    fn run<T: Send + 'static>(
        &self,
        op: &str,
        path: &str,
        fut: impl Future<Output = std::io::Result<T>> + Send + 'static,
    ) -> std::io::Result<T> {
        crate::blocking::block(self.config.call_deadline(), format!("{op} {}", self.url(path)), fut)
    }

    fn put_mode(&self, path: &str, bytes: &[u8], mode: PutMode) -> std::io::Result<()> {
        let (store, key, url) = (self.store.clone(), self.key(path), self.url(path));
        let payload = PutPayload::from(bytes.to_vec());
        self.run("writing", path, async move {
            store
                .put_opts(
                    &key,
                    payload,
                    PutOptions {
                        mode,
                        ..PutOptions::default()
                    },
                )
                .await
                .map(|_| ())
                .map_err(|e| io_error("writing", &url, e))
        })
    }

    /// Every object under `dir`, recursively.
    fn list_recursive(&self, dir: &str) -> std::io::Result<Vec<ObjectPath>> {
        let (store, key, url) = (self.store.clone(), self.key(dir), self.url(dir));
        self.run("listing", dir, async move {
            let mut stream = store.list(Some(&key));
            let mut out = Vec::new();
            while let Some(meta) = stream.next().await {
                out.push(meta.map_err(|e| io_error("listing", &url, e))?.location);
                if out.len() > 1_000_000 {
                    return Err(std::io::Error::other(format!("listing {url}: more than a million objects")));
                }
            }
            Ok(out)
        })
    }
}

impl CheckpointStore for ObjectStoreStore {
    fn location(&self) -> &Path {
        &self.location
    }

    fn put(&self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.put_mode(path, bytes, PutMode::Overwrite)
    }

    /// Create-only: the object must not exist yet.
    fn put_atomic(&self, path: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.put_mode(path, bytes, PutMode::Create)
    }

    fn open(&self, path: &str, cap: u64) -> Result<(Box<dyn StoreReader>, u64), FileError> {
        let (store, key, url) = (self.store.clone(), self.key(path), self.url(path));
        let got = self.run("reading", path, async move {
            let r = store.get(&key).await.map_err(|e| io_error("reading", &url, e))?;
            let len = r.meta.size;
            if len > cap {
                return Ok(Err(len));
            }
            let bytes = r.bytes().await.map_err(|e| io_error("reading", &url, e))?;
            Ok(Ok(bytes))
        })?;
        match got {
            Err(len) => Err(FileError::TooLarge { len, cap }),
            Ok(bytes) => {
                let len = bytes.len() as u64;
                if len > cap {
                    return Err(FileError::TooLarge { len, cap });
                }
                Ok((Box::new(Cursor::new(bytes.to_vec())), len))
            }
        }
    }

    fn exists(&self, path: &str) -> bool {
        let (store, key) = (self.store.clone(), self.key(path));
        self.run("inspecting", path, async move { Ok(store.head(&key).await.is_ok()) })
            .unwrap_or(false)
    }

    fn list(&self, dir: &str) -> Vec<String> {
        let (store, url) = (self.store.clone(), self.url(dir));
        let key = if self.prefix.is_empty() && dir.trim_matches('/').is_empty() {
            None
        } else {
            Some(self.key(dir))
        };
        let listed = self.run("listing", dir, async move {
            store
                .list_with_delimiter(key.as_ref())
                .await
                .map_err(|e| io_error("listing", &url, e))
        });
        match listed {
            Ok(l) => l
                .common_prefixes
                .iter()
                .chain(l.objects.iter().map(|o| &o.location))
                .filter_map(|p| p.filename().map(str::to_owned))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "could not list a checkpoint location");
                Vec::new()
            }
        }
    }

    fn remove_all(&self, dir: &str) -> std::io::Result<()> {
        for key in self.list_recursive(dir)? {
            let (store, url) = (self.store.clone(), format!("{SCHEME}…/{key}"));
            self.run("removing", dir, async move {
                match store.delete(&key).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(io_error("removing", &url, e)),
                }
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_url("s3://ckpt/jobs/a/").unwrap(), ("ckpt".into(), "jobs/a".into()));
        assert_eq!(parse_url("s3://ckpt").unwrap(), ("ckpt".into(), String::new()));
        assert!(parse_url("s3://Bad_Bucket/x").unwrap_err().contains("bucket name"));
        assert!(parse_url("s3://ok-bucket/a/../b").unwrap_err().contains("`..`"));
        assert!(parse_url("s3://ok-bucket/a//b").unwrap_err().contains("empty"));
        assert!(parse_url("file:///x").unwrap_err().contains("not an s3://"));
        assert!(is_url(Path::new("s3://b/p")));
        assert!(!is_url(Path::new("/tmp/s3://b")));
    }

    #[test]
    fn the_secret_is_never_printed_or_serialized() {
        let c = ObjectStoreConfig {
            access_key_id: Some("AKIA".into()),
            secret_access_key: Some("very-secret".into()),
            ..ObjectStoreConfig::default()
        };
        assert!(!format!("{c:?}").contains("very-secret"));
        assert!(!serde_json::to_string(&c).unwrap().contains("very-secret"));
    }

    #[test]
    fn an_unreachable_store_fails_a_write_in_bounded_time() {
        // A port nothing listens on: every attempt is refused at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        configure(ObjectStoreConfig {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            access_key_id: Some("k".into()),
            secret_access_key: Some("s".into()),
            allow_http: Some(true),
            request_timeout_ms: Some(500),
            retries: Some(1),
            ..ObjectStoreConfig::default()
        });
        let store = ObjectStoreStore::open("s3://unit-test/x").unwrap();
        let started = std::time::Instant::now();
        let err = store.put_atomic("chk-1/_metadata.json", b"{}").unwrap_err();
        assert!(err.to_string().contains("s3://unit-test/x/chk-1/_metadata.json"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!store.exists("chk-1/_metadata.json"));
        assert!(store.list("").is_empty());
        configure(ObjectStoreConfig::default());
    }
}
