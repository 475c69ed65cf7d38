//! The server: listening, authentication, routing and the handlers.
//!
//! Handlers that touch the disk, compile a component or wait for a
//! savepoint run on tokio's blocking pool, so a slow request never stalls
//! another. Every answer is JSON except file downloads and `/metrics`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::jobs::{self, Tenant};
use super::store::{canonical_digest, safe_relative, validate_component};
use super::{ApiError, ServerConfig, metrics};
use crate::tenancy::{TenantId, token_hash};
use crate::time::{Clock, SystemClock};
use crate::wasm::WasmEngine;

/// Every route: method and path pattern (`{x}` is one segment, `{path}`
/// the rest). The OpenAPI document lists exactly these (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("POST", "/v1/components"),
    ("GET", "/v1/components"),
    ("GET", "/v1/components/{digest}"),
    ("DELETE", "/v1/components/{digest}"),
    ("GET", "/v1/files"),
    ("GET", "/v1/files/{path}"),
    ("PUT", "/v1/files/{path}"),
    ("DELETE", "/v1/files/{path}"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{id}"),
    ("DELETE", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("POST", "/v1/jobs/{id}/stop"),
    ("POST", "/v1/jobs/{id}/savepoints"),
    ("GET", "/v1/jobs/{id}/savepoints"),
    ("GET", "/v1/jobs/{id}/checkpoints"),
    ("GET", "/v1/jobs/{id}/logs"),
];

/// Largest JSON body of requests that are not uploads.
const MAX_JSON_BODY: u64 = 4 << 20;

/// Who is asking.
enum Caller {
    Tenant(Arc<Tenant>),
    Admin,
}

/// The server's shared state.
pub struct Server {
    config: ServerConfig,
    engine: Arc<WasmEngine>,
    fuel_engine: OnceLock<Arc<WasmEngine>>,
    tenants: HashMap<TenantId, Arc<Tenant>>,
    tokens: HashMap<String, TenantId>,
}

type Reply = Response<Full<Bytes>>;

fn json_reply(status: u16, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn error_reply(e: &ApiError) -> Reply {
    let mut r = reply(e.status, "application/json", e.body());
    if e.status == 401
        && let Ok(v) = "Bearer".parse()
    {
        r.headers_mut().insert(WWW_AUTHENTICATE, v);
    }
    r
}

/// Run blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("a request handler failed: {e}"))))
}

impl Server {
    /// Open every tenant's directory and the engine.
    pub fn new(mut config: ServerConfig) -> anyhow::Result<Arc<Self>> {
        config.check().map_err(|e| anyhow::anyhow!(e))?;
        std::fs::create_dir_all(&config.data_dir)?;
        // Jobs resolve paths against it from other directories: make it absolute.
        config.data_dir = std::fs::canonicalize(&config.data_dir)?;
        let engine = WasmEngine::new(Some(config.data_dir.join("cache")))?;
        let mut tenants = HashMap::new();
        let mut tokens = HashMap::new();
        for t in &config.tenants {
            let root = config.data_dir.join("tenants").join(t.id.as_str());
            let tenant = Tenant::open(t.clone(), root)?;
            tokens.insert(t.token_sha256.to_ascii_lowercase(), t.id.clone());
            tenants.insert(t.id.clone(), Arc::new(tenant));
        }
        Ok(Arc::new(Server {
            config,
            engine,
            fuel_engine: OnceLock::new(),
            tenants,
            tokens,
        }))
    }

    /// The engine a tenant's jobs run on (fuel-metered when its quotas
    /// say so).
    fn engine_for(&self, tenant: &Tenant) -> Result<Arc<WasmEngine>, ApiError> {
        if !tenant.config.quotas.fuel_metering {
            return Ok(self.engine.clone());
        }
        if let Some(e) = self.fuel_engine.get() {
            return Ok(e.clone());
        }
        let e = WasmEngine::with_fuel(Some(self.config.data_dir.join("cache")), true)
            .map_err(|e| ApiError::internal(format!("creating the fuel-metered engine: {e}")))?;
        Ok(self.fuel_engine.get_or_init(|| e).clone())
    }

    fn authenticate(&self, req: &Request<Incoming>) -> Result<Caller, ApiError> {
        let token = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(ApiError::unauthorized)?;
        let hash = token_hash(token);
        if let Some(t) = self.tokens.get(&hash).and_then(|id| self.tenants.get(id)) {
            return Ok(Caller::Tenant(t.clone()));
        }
        if self
            .config
            .admin_token_sha256
            .as_deref()
            .is_some_and(|h| h.eq_ignore_ascii_case(&hash))
        {
            return Ok(Caller::Admin);
        }
        Err(ApiError::unauthorized())
    }

    /// Cancel every job (at shutdown).
    pub fn cancel_all(&self) {
        for t in self.tenants.values() {
            for j in t.jobs() {
                j.cancel();
            }
        }
    }

    /// True when no job of any tenant is still active.
    pub fn all_jobs_ended(&self) -> bool {
        self.tenants.values().all(|t| t.jobs().iter().all(|j| j.state().is_terminal()))
    }

    /// Answer one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let result = self.route(req).await;
        match result {
            Ok(r) => r,
            Err(e) => {
                if e.status >= 500 {
                    tracing::error!(%method, %path, error = %e, "request failed");
                } else {
                    tracing::debug!(%method, %path, error = %e, "request refused");
                }
                error_reply(&e)
            }
        }
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> Result<Reply, ApiError> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["healthz"]) => return Ok(json_reply(200, &serde_json::json!({"status": "ok"}))),
            ("GET", ["v1", "openapi.json"]) => return Ok(reply(200, "application/json", super::OPENAPI.as_bytes().to_vec())),
            _ => {}
        }
        if !ROUTES.iter().any(|(_, p)| pattern_matches(p, &segs)) {
            return Err(ApiError::not_found(format!("route {path}")));
        }
        if !ROUTES.iter().any(|(m, p)| *m == method.as_str() && pattern_matches(p, &segs)) {
            return Err(ApiError::method_not_allowed(method.as_str(), &path));
        }
        let caller = self.authenticate(&req)?;
        let tenant = match caller {
            Caller::Admin if segs == ["metrics"] => {
                let all: Vec<Arc<Tenant>> = self.tenants.values().cloned().collect();
                return Ok(metrics_reply(&all));
            }
            Caller::Admin => {
                return Err(ApiError::not_found(format!(
                    "route {path} for the admin token (it may read /metrics only)"
                )));
            }
            Caller::Tenant(t) => t,
        };
        let engine = self.engine.clone();
        let now = SystemClock.now_ms();
        match (method, segs.as_slice()) {
            (Method::GET, ["metrics"]) => Ok(metrics_reply(&[tenant])),
            (Method::POST, ["v1", "components"]) => {
                let limit = tenant.config.quotas.max_upload_bytes;
                let body = read_body(req, limit).await?;
                blocking(move || upload_component(&tenant, &engine, &body, now)).await
            }
            (Method::GET, ["v1", "components"]) => {
                blocking(move || {
                    let list = tenant.store.list_components()?;
                    Ok(json_reply(200, &serde_json::json!({ "components": list })))
                })
                .await
            }
            (Method::GET, ["v1", "components", digest]) => {
                let digest = (*digest).to_owned();
                blocking(move || match tenant.store.component(&digest)? {
                    Some(m) => Ok(json_reply(200, &serde_json::to_value(m).unwrap_or_default())),
                    None => Err(ApiError::not_found(format!("component {digest}"))),
                })
                .await
            }
            (Method::DELETE, ["v1", "components", digest]) => {
                let digest = (*digest).to_owned();
                blocking(move || delete_component(&tenant, &digest)).await
            }
            (Method::GET, ["v1", "files"]) => blocking(move || get_file(&tenant, None)).await,
            (Method::GET, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                blocking(move || get_file(&tenant, Some(&p))).await
            }
            (Method::PUT, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                let body = read_body(req, tenant.config.quotas.max_upload_bytes).await?;
                blocking(move || put_file(&tenant, &p, &body)).await
            }
            (Method::DELETE, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                blocking(move || delete_file(&tenant, &p)).await
            }
            (Method::POST, ["v1", "jobs"]) => {
                let body = read_body(req, MAX_JSON_BODY.min(tenant.config.quotas.max_upload_bytes.max(64 << 10))).await?;
                let engine = self.engine_for(&tenant)?;
                let lines = self.config.job_log_lines;
                blocking(move || {
                    let request = jobs::parse_submit(&body)?;
                    let job = jobs::submit(&tenant, &engine, request, lines)?;
                    Ok(json_reply(201, &job.details()))
                })
                .await
            }
            (Method::GET, ["v1", "jobs"]) => {
                let list: Vec<serde_json::Value> = tenant.jobs().iter().map(|j| j.summary()).collect();
                Ok(json_reply(200, &serde_json::json!({ "jobs": list })))
            }
            (Method::GET, ["v1", "jobs", id]) => Ok(json_reply(200, &job(&tenant, id)?.details())),
            (Method::DELETE, ["v1", "jobs", id]) => {
                let id = (*id).to_owned();
                blocking(move || {
                    tenant.delete_job(&id)?;
                    Ok(reply(204, "application/json", Vec::new()))
                })
                .await
            }
            (Method::POST, ["v1", "jobs", id, "cancel"]) => {
                let j = job(&tenant, id)?;
                if !j.cancel() {
                    return Err(ApiError::conflict(format!("job {id} has already ended ({})", j.state().as_str())));
                }
                Ok(json_reply(202, &j.summary()))
            }
            (Method::POST, ["v1", "jobs", id, action @ ("savepoints" | "stop")]) => {
                let j = job(&tenant, id)?;
                let stop = *action == "stop";
                blocking(move || Ok(json_reply(201, &j.savepoint(stop)?))).await
            }
            (Method::GET, ["v1", "jobs", id, kind @ ("savepoints" | "checkpoints")]) => {
                let j = job(&tenant, id)?;
                let (savepoints, key) = (*kind == "savepoints", (*kind).to_owned());
                blocking(move || Ok(json_reply(200, &serde_json::json!({ key: j.stored_checkpoints(savepoints) })))).await
            }
            (Method::GET, ["v1", "jobs", id, "logs"]) => {
                let j = job(&tenant, id)?;
                let tail = query_param(&query, "tail").and_then(|v| v.parse().ok()).unwrap_or(100);
                Ok(json_reply(200, &serde_json::to_value(j.logs.snapshot(tail)).unwrap_or_default()))
            }
            _ => Err(ApiError::not_found(format!("route {path}"))),
        }
    }
}

fn job(tenant: &Tenant, id: &str) -> Result<Arc<jobs::ManagedJob>, ApiError> {
    tenant.job(id).ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

fn metrics_reply(tenants: &[Arc<Tenant>]) -> Reply {
    let refs: Vec<&Tenant> = tenants.iter().map(|t| &**t).collect();
    reply(200, "text/plain; version=0.0.4", metrics::render(&refs).into_bytes())
}

fn pattern_matches(pattern: &str, segs: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    if parts.last() == Some(&"{path}") {
        return segs.len() >= parts.len() && parts[..parts.len() - 1].iter().zip(segs).all(|(p, s)| p.starts_with('{') || p == s);
    }
    parts.len() == segs.len() && parts.iter().zip(segs).all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Bytes of an oversized body read and discarded before answering 413, so
/// a client still sending it gets the answer instead of a broken pipe.
const DRAIN_CAP: u64 = 64 << 20;

/// Read a body of at most `limit` bytes; 413 beyond it.
async fn read_body(req: Request<Incoming>, limit: u64) -> Result<Vec<u8>, ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = req.into_body();
    if declared.is_some_and(|len| len > limit.max(DRAIN_CAP)) {
        return Err(ApiError::too_large(limit));
    }
    let mut bytes = Vec::new();
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request("bad_body", format!("reading the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len() as u64;
            if seen <= limit {
                bytes.extend_from_slice(&data);
            } else if seen > limit.max(DRAIN_CAP) {
                break;
            }
        }
    }
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok(bytes)
}

fn upload_component(tenant: &Tenant, engine: &WasmEngine, body: &[u8], now: i64) -> Result<Reply, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_component",
            "the body is empty: send the component's bytes",
        ));
    }
    let _one_at_a_time = tenant.uploads.lock().unwrap_or_else(|p| p.into_inner());
    let meta = validate_component(engine, body, now)?;
    if let Some(existing) = tenant.store.component(&meta.digest)? {
        return Ok(json_reply(200, &serde_json::to_value(existing).unwrap_or_default()));
    }
    let max = tenant.config.quotas.max_components;
    if tenant.store.component_count() >= max {
        return Err(ApiError::quota(format!(
            "tenant `{}` already stores {max} components, its limit; delete one first",
            tenant.config.id
        )));
    }
    tenant.store.put_component(&meta, body)?;
    tracing::info!(tenant = %tenant.config.id, digest = %meta.digest, world = %meta.world, "component stored");
    Ok(json_reply(201, &serde_json::to_value(meta).unwrap_or_default()))
}

fn delete_component(tenant: &Tenant, digest: &str) -> Result<Reply, ApiError> {
    if let Some(job) = canonical_digest(digest).and_then(|d| tenant.component_in_use(&d)) {
        return Err(ApiError::conflict(format!("component {digest} is used by running job {job}")));
    }
    if !tenant.store.delete_component(digest)? {
        return Err(ApiError::not_found(format!("component {digest}")));
    }
    Ok(reply(204, "application/json", Vec::new()))
}

fn file_path(tenant: &Tenant, path: &str) -> Result<std::path::PathBuf, ApiError> {
    let rel = safe_relative(path, "file").map_err(|e| ApiError::bad_request("invalid_path", e.message))?;
    if rel.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.')) {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!("file {path:?}: names starting with '.' are reserved"),
        ));
    }
    Ok(tenant.store.files_dir().join(rel))
}

fn get_file(tenant: &Tenant, path: Option<&str>) -> Result<Reply, ApiError> {
    let full = match path {
        Some(p) => file_path(tenant, p)?,
        None => tenant.store.files_dir(),
    };
    let name = path.unwrap_or("");
    let meta = std::fs::symlink_metadata(&full).map_err(|_| ApiError::not_found(format!("file {name:?}")))?;
    if meta.is_dir() {
        let mut entries: Vec<serde_json::Value> = std::fs::read_dir(&full)
            .map_err(|e| ApiError::internal(format!("listing {name:?}: {e}")))?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some(serde_json::json!({
                    "name": e.file_name().to_string_lossy(),
                    "dir": m.is_dir(),
                    "size": m.len(),
                }))
            })
            .collect();
        entries.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        return Ok(json_reply(200, &serde_json::json!({ "entries": entries })));
    }
    if !meta.is_file() {
        return Err(ApiError::not_found(format!("file {name:?}")));
    }
    let bytes = std::fs::read(&full).map_err(|e| ApiError::internal(format!("reading {name:?}: {e}")))?;
    Ok(reply(200, "application/octet-stream", bytes))
}

fn put_file(tenant: &Tenant, path: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let full = file_path(tenant, path)?;
    if full.is_dir() {
        return Err(ApiError::conflict(format!("{path:?} is a directory")));
    }
    let parent = full.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| ApiError::conflict(format!("creating the directory of {path:?}: {e}")))?;
    let tmp = parent.join(format!(
        ".upload-{}.tmp",
        full.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &full)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(ApiError::internal(format!("writing {path:?}: {e}")));
    }
    Ok(json_reply(201, &serde_json::json!({ "path": path, "size": body.len() })))
}

fn delete_file(tenant: &Tenant, path: &str) -> Result<Reply, ApiError> {
    let full = file_path(tenant, path)?;
    let meta = std::fs::symlink_metadata(&full).map_err(|_| ApiError::not_found(format!("file {path:?}")))?;
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(&full)
    } else {
        std::fs::remove_file(&full)
    };
    r.map_err(|e| ApiError::internal(format!("deleting {path:?}: {e}")))?;
    Ok(reply(204, "application/json", Vec::new()))
}

/// Run the server until Ctrl-C or SIGTERM; `on_ready` gets the address it
/// listens on. At shutdown every job is cancelled.
pub async fn serve(server: Arc<Server>, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&server.config.listen).await?;
    on_ready(listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = server.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    tracing::info!("shutting down: cancelling every job");
    server.cancel_all();
    for _ in 0..100 {
        if server.all_jobs_ended() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        assert!(pattern_matches("/v1/jobs/{id}", &["v1", "jobs", "abc"]));
        assert!(!pattern_matches("/v1/jobs/{id}", &["v1", "jobs", ""]));
        assert!(!pattern_matches("/v1/jobs/{id}", &["v1", "jobs", "a", "b"]));
        assert!(pattern_matches("/v1/files/{path}", &["v1", "files", "a", "b"]));
        assert_eq!(query_param("tail=5&x=1", "tail"), Some("5"));
    }

    #[test]
    fn the_openapi_document_lists_every_route_and_only_those() {
        let doc: serde_json::Value = serde_json::from_str(crate::api::OPENAPI).expect("openapi.json is JSON");
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        documented.sort();
        let mut served: Vec<(String, String)> = ROUTES.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
        served.sort();
        assert_eq!(documented, served);
    }
}
