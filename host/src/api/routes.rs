//! The server: authentication, routing and the handlers (listening and
//! connections are in `listener`).
//!
//! Handlers that touch the disk, compile a component or wait for a
//! savepoint run on tokio's blocking pool, so a slow request never stalls
//! another. Every answer is JSON except file downloads (streamed) and
//! `/metrics`. A request body is read only once its tenant's and the
//! server's body budgets admit it, and only until its deadline.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
    X_CONTENT_TYPE_OPTIONS,
};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::Semaphore;

use super::body::{FileBody, ReplyBody};
use super::budget::{BodyBudget, BodyPermit, BudgetExceeded};
use super::files::{Entry, FileError};
use super::jobs::{self, Tenant};
use super::store::{canonical_digest, safe_relative, validate_component};
use super::{ApiError, ServerConfig, dashboard, metrics};
use crate::cluster::jobmanager::ClusterCore;
use crate::tenancy::{TenantId, token_hash};
use crate::time::{Clock, SystemClock};
use crate::wasm::{ComponentDigest, WasmEngine};

/// Every route: method and path pattern (`{x}` is one segment, `{path}`
/// the rest). The OpenAPI document lists exactly these (a test checks).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/v1/openapi.json"),
    ("GET", "/v1/whoami"),
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
    ("GET", "/v1/jobs/{id}/spec"),
    ("GET", "/v1/jobs/{id}/plan"),
    ("GET", "/v1/taskmanagers"),
];

/// Who is asking.
enum Caller {
    Tenant(Arc<Tenant>),
    Admin,
}

/// The server's shared state.
pub struct Server {
    pub(super) config: ServerConfig,
    engine: Arc<WasmEngine>,
    fuel_engine: OnceLock<Arc<WasmEngine>>,
    /// Each tenant's own component cache over the shared engines (fuel or
    /// not), so upload and load times never reveal another tenant's uploads.
    scoped: Mutex<HashMap<(TenantId, bool), Arc<WasmEngine>>>,
    tenants: HashMap<TenantId, Arc<Tenant>>,
    tokens: HashMap<String, TenantId>,
    /// Request bodies in flight over every tenant.
    bodies: Arc<BodyBudget>,
    /// `/metrics` answers being rendered.
    scrapes: Arc<Semaphore>,
    /// A JobManager's TaskManagers; none: jobs run in this process.
    cluster: Option<Arc<ClusterCore>>,
    /// A highly available JobManager's etcd and object store.
    ha: Option<Arc<crate::cluster::ha::Ha>>,
}

pub(super) type Reply = Response<ReplyBody>;

fn json_reply(status: u16, value: &serde_json::Value) -> Reply {
    reply(status, "application/json", serde_json::to_vec(value).unwrap_or_default())
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
    let mut r = Response::new(ReplyBody::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

fn error_reply(e: &ApiError, allow: Option<String>) -> Reply {
    let mut r = reply(e.status, "application/json", e.body());
    let h = r.headers_mut();
    match e.status {
        401 => {
            if let Ok(v) = "Bearer".parse() {
                h.insert(WWW_AUTHENTICATE, v);
            }
        }
        405 => {
            if let Some(v) = allow.and_then(|a| a.parse().ok()) {
                h.insert(ALLOW, v);
            }
        }
        429 | 503 => {
            if let Ok(v) = "1".parse() {
                h.insert(RETRY_AFTER, v);
            }
        }
        _ => {}
    }
    r
}

/// The methods `ROUTES` serve at `path`, for a 405's `Allow`.
fn allowed_methods(path: &str) -> String {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let mut methods: Vec<&str> = ROUTES.iter().filter(|(_, p)| pattern_matches(p, &segs)).map(|(m, _)| *m).collect();
    methods.sort_unstable();
    methods.dedup();
    methods.join(", ")
}

/// Run blocking work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(format!("a request handler failed: {e}"))))
}

impl Server {
    /// Open every tenant's directory and the engine.
    pub fn new(config: ServerConfig) -> anyhow::Result<Arc<Self>> {
        Self::open(config, None, None)
    }

    /// A JobManager's server: jobs run in the slots of `cluster`'s
    /// TaskManagers.
    /// With `ha`, it stands by until [`take_over`](Self::take_over).
    pub fn with_cluster(
        config: ServerConfig,
        cluster: Arc<ClusterCore>,
        ha: Option<Arc<crate::cluster::ha::Ha>>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::open(config, Some(cluster), ha)
    }

    fn open(
        mut config: ServerConfig,
        cluster: Option<Arc<ClusterCore>>,
        ha: Option<Arc<crate::cluster::ha::Ha>>,
    ) -> anyhow::Result<Arc<Self>> {
        config.check().map_err(|e| anyhow::anyhow!(e))?;
        std::fs::create_dir_all(&config.data_dir)?;
        // Jobs resolve paths against it from other directories: make it absolute.
        config.data_dir = std::fs::canonicalize(&config.data_dir)?;
        let engine = WasmEngine::new(Some(config.data_dir.join("cache")))?;
        let mut tenants = HashMap::new();
        let mut tokens = HashMap::new();
        for t in &config.tenants {
            let root = config.data_dir.join("tenants").join(t.id.as_str());
            let tenant = Tenant::open(t.clone(), root, ha.clone())?;
            tokens.insert(t.token_sha256.to_ascii_lowercase(), t.id.clone());
            tenants.insert(t.id.clone(), Arc::new(tenant));
        }
        let l = &config.limits;
        let bodies = BodyBudget::new(
            "the server",
            ("max_bodies_in_flight", "max_body_mb_in_flight"),
            l.max_bodies_in_flight,
            l.max_body_mb_in_flight.saturating_mul(1 << 20),
        );
        let scrapes = Arc::new(Semaphore::new(l.max_concurrent_scrapes));
        Ok(Arc::new(Server {
            config,
            engine,
            fuel_engine: OnceLock::new(),
            scoped: Mutex::default(),
            tenants,
            tokens,
            bodies,
            scrapes,
            cluster,
            ha,
        }))
    }

    /// Lead (HA): take over every job recorded in etcd. Returns how many
    /// were restarted.
    pub fn take_over(self: &Arc<Self>) -> std::io::Result<usize> {
        let Some(ha) = &self.ha else { return Ok(0) };
        let t = super::ha::Takeover {
            ha,
            log_lines: self.config.job_log_lines,
            limits: &self.config.limits,
            cluster: self.cluster.clone(),
        };
        t.run(|tenant| {
            let tenant = self.tenants.values().find(|t| t.config.id.as_str() == tenant)?.clone();
            let engine = self.engine_for(&tenant).ok()?;
            Some((tenant, engine))
        })
    }

    /// On a standby (HA): where the leader's API is, if known.
    fn standby(&self) -> Option<Option<String>> {
        let ha = self.ha.as_ref()?;
        if ha.epoch().is_some() {
            return None;
        }
        Some(ha.leader().ok().flatten().map(|l| l.api))
    }

    /// The engine a tenant's jobs run on (fuel-metered when its quotas
    /// say so).
    fn engine_for(&self, tenant: &Tenant) -> Result<Arc<WasmEngine>, ApiError> {
        self.tenant_engine(tenant, tenant.config.quotas.fuel_metering)
    }

    /// The tenant's own engine: the shared one (fuel-metered or not) with a
    /// component cache of the tenant's alone.
    fn tenant_engine(&self, tenant: &Tenant, fuel: bool) -> Result<Arc<WasmEngine>, ApiError> {
        let key = (tenant.config.id.clone(), fuel);
        if let Some(e) = self.scoped.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Ok(e.clone());
        }
        let base = if !fuel {
            self.engine.clone()
        } else if let Some(e) = self.fuel_engine.get() {
            e.clone()
        } else {
            let e = WasmEngine::with_fuel(Some(self.config.data_dir.join("cache")), true)
                .map_err(|e| ApiError::internal(format!("creating the fuel-metered engine: {e}")))?;
            self.fuel_engine.get_or_init(|| e).clone()
        };
        let scoped = base.scoped(tenant.config.id.as_str());
        Ok(self
            .scoped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(scoped)
            .clone())
    }

    /// Drop a component's compiled forms from the tenant's caches.
    fn forget_for(&self, tenant: &Tenant, digest: &ComponentDigest) {
        let scoped = self.scoped.lock().unwrap_or_else(|p| p.into_inner());
        for fuel in [false, true] {
            if let Some(e) = scoped.get(&(tenant.config.id.clone(), fuel)) {
                e.forget(digest);
            }
        }
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
        Err(ApiError::unknown_token())
    }

    /// Cancel every job (at shutdown). On a highly available JobManager
    /// the jobs are not recorded as cancelled: the next leader takes them
    /// over, and the lead is given up at once.
    pub fn cancel_all(&self) {
        for t in self.tenants.values() {
            for j in t.jobs() {
                if let Some(h) = &j.ha {
                    h.detach();
                }
                j.cancel();
            }
        }
        if let Some(ha) = &self.ha {
            ha.resign();
        }
    }

    /// True when no job of any tenant is still active.
    pub fn all_jobs_ended(&self) -> bool {
        self.tenants.values().all(|t| t.jobs().iter().all(|j| j.state().is_terminal()))
    }

    /// Fail the writing jobs of every tenant over its disk quota (blocking:
    /// it walks directories).
    pub(super) fn enforce_disk_quotas(&self) {
        for t in self.tenants.values() {
            t.enforce_disk_quota();
        }
    }

    /// Read the body of `req` for `tenant`, at most `limit` bytes, within
    /// the tenant's and the server's body budgets and the body deadline.
    async fn body(&self, tenant: &Tenant, req: Request<Incoming>, limit: u64) -> Result<(Vec<u8>, BodyPermit), ApiError> {
        let deadline = Duration::from_millis(self.config.limits.body_read_timeout_ms);
        read_body(req, limit, &[&tenant.bodies, &self.bodies], deadline).await
    }

    /// `/metrics` for `tenants`, at most `max_concurrent_scrapes` at once.
    /// With `cluster`, the TaskManagers' figures follow (for the admin).
    async fn metrics(&self, tenants: Vec<Arc<Tenant>>, cluster: bool) -> Result<Reply, ApiError> {
        let Ok(_permit) = self.scrapes.clone().try_acquire_owned() else {
            return Err(ApiError::unavailable(format!(
                "{} /metrics answers are being rendered, the limit (`max_concurrent_scrapes`); retry later",
                self.config.limits.max_concurrent_scrapes
            )));
        };
        let extra = match (&self.cluster, cluster) {
            (Some(c), true) => c.metrics_text(),
            _ => String::new(),
        };
        blocking(move || Ok(metrics_reply(&tenants, &extra))).await
    }

    /// Answer one request.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Reply {
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let result = self.route(req).await;
        let mut reply = match result {
            Ok(r) => r,
            Err(e) => {
                if e.status >= 500 && e.status != 503 && e.status != 507 {
                    tracing::error!(%method, %path, error = %e, "request failed");
                } else {
                    tracing::debug!(%method, %path, error = %e, "request refused");
                }
                let allow = (e.status == 405).then(|| allowed_methods(&path));
                error_reply(&e, allow)
            }
        };
        // Answers hold one tenant's data: no cache keeps them past a sign-out.
        reply
            .headers_mut()
            .entry(CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
        reply
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> Result<Reply, ApiError> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let method = req.method().clone();
        let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match (method.as_str(), segs.as_slice()) {
            ("GET", ["healthz"]) if self.ha.is_none() => {
                return Ok(json_reply(200, &serde_json::json!({"status": "ok", "role": "single"})));
            }
            ("GET", ["healthz"]) => {
                let me = self.clone();
                return blocking(move || {
                    Ok(json_reply(
                        200,
                        &match me.standby() {
                            None => serde_json::json!({"status": "ok", "role": "leader"}),
                            Some(leader) => serde_json::json!({"status": "ok", "role": "standby", "leader": leader}),
                        },
                    ))
                })
                .await;
            }
            ("GET", ["v1", "openapi.json"]) => return Ok(reply(200, "application/json", super::OPENAPI.as_bytes().to_vec())),
            ("GET", _) => {
                if let Some((content_type, bytes)) = dashboard::asset(&path) {
                    return Ok(page_reply(content_type, bytes));
                }
            }
            _ => {}
        }
        if !ROUTES.iter().any(|(_, p)| pattern_matches(p, &segs)) {
            return Err(ApiError::not_found(format!("route {path}")));
        }
        if !ROUTES.iter().any(|(m, p)| *m == method.as_str() && pattern_matches(p, &segs)) {
            return Err(ApiError::method_not_allowed(method.as_str(), &path));
        }
        if self.ha.is_some() {
            let me = self.clone();
            if let Some(leader) = blocking(move || Ok(me.standby())).await? {
                let leader = leader.unwrap_or_else(|| "not elected yet".into());
                return Err(ApiError::standby(&leader));
            }
        }
        let caller = self.authenticate(&req)?;
        let tenant = match caller {
            Caller::Admin if segs == ["metrics"] => {
                let all: Vec<Arc<Tenant>> = self.tenants.values().cloned().collect();
                return self.metrics(all, true).await;
            }
            Caller::Admin => return self.admin_route(&method, &segs, &query).await,
            Caller::Tenant(t) => t,
        };
        let engine = self.tenant_engine(&tenant, false)?;
        let now = SystemClock.now_ms();
        match (method, segs.as_slice()) {
            (Method::GET, ["metrics"]) => self.metrics(vec![tenant], false).await,
            (Method::GET, ["v1", "whoami"]) => Ok(json_reply(200, &serde_json::json!({ "tenant": tenant.config.id }))),
            (Method::POST, ["v1", "components"]) => {
                let limit = tenant.config.quotas.max_upload_bytes;
                let (body, _held) = self.body(&tenant, req, limit).await?;
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
                let hex = canonical_digest(&digest).and_then(|d| d.strip_prefix("sha256:").map(str::to_owned));
                let t = tenant.clone();
                let reply = blocking(move || delete_component(&t, &digest)).await?;
                if let Some(hex) = hex {
                    self.forget_for(&tenant, &ComponentDigest(hex));
                }
                Ok(reply)
            }
            (Method::GET, ["v1", "files"]) => blocking(move || get_file(&tenant, None)).await,
            (Method::GET, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                blocking(move || get_file(&tenant, Some(&p))).await
            }
            (Method::PUT, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                file_path(&p)?;
                let (body, _held) = self.body(&tenant, req, tenant.config.quotas.max_upload_bytes).await?;
                blocking(move || put_file(&tenant, &p, &body)).await
            }
            (Method::DELETE, ["v1", "files", rest @ ..]) => {
                let p = rest.join("/");
                blocking(move || delete_file(&tenant, &p)).await
            }
            (Method::POST, ["v1", "jobs"]) => {
                // Cheapest first: the job quota before the body is even read.
                jobs::precheck(&tenant)?;
                // A TOML spec as the body, the rest of the request in the query.
                let toml = content_type_is(req.headers(), "application/toml")
                    .then(|| (query_param(&query, "savepoint"), query_param(&query, "allow_non_restored_state")));
                let (body, _held) = self.body(&tenant, req, self.config.limits.max_spec_bytes).await?;
                let engine = self.engine_for(&tenant)?;
                let (lines, limits) = (self.config.job_log_lines, self.config.limits.clone());
                let cluster = self.cluster.clone();
                blocking(move || {
                    let request = match toml {
                        Some((savepoint, allow)) => jobs::parse_submit_toml(&body, savepoint, allow.as_deref())?,
                        None => jobs::parse_submit(&body)?,
                    };
                    drop(body);
                    let job = jobs::submit(&tenant, &engine, request, lines, &limits, cluster, None)?;
                    Ok(json_reply(201, &job.details()))
                })
                .await
            }
            (Method::GET, ["v1", "jobs"]) => {
                let list: Vec<serde_json::Value> = tenant.jobs().iter().map(|j| j.summary()).collect();
                Ok(json_reply(200, &serde_json::json!({ "jobs": list })))
            }
            (Method::GET, ["v1", "jobs", id, rest @ ..]) if rest.len() <= 1 => read_job(job(&tenant, id)?, rest, &query).await,
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
                if !blocking({
                    let j = j.clone();
                    move || j.cancel_by_tenant()
                })
                .await?
                {
                    return Err(ApiError::conflict(format!("job {id} has already ended ({})", j.state().as_str())));
                }
                Ok(json_reply(202, &j.summary()))
            }
            (Method::POST, ["v1", "jobs", id, action @ ("savepoints" | "stop")]) => {
                let j = job(&tenant, id)?;
                let stop = *action == "stop";
                blocking(move || {
                    let taken = j.savepoint(stop)?;
                    tenant.prune_savepoints(&j);
                    Ok(json_reply(201, &taken))
                })
                .await
            }
            (Method::GET, ["v1", "taskmanagers"]) => Ok(self.taskmanagers()),
            _ => Err(ApiError::not_found(format!("route {path}"))),
        }
    }

    fn taskmanagers(&self) -> Reply {
        let list = self.cluster.as_ref().map_or(serde_json::json!([]), |c| c.taskmanagers());
        json_reply(200, &serde_json::json!({ "taskmanagers": list }))
    }

    /// What the admin token may do: read every tenant's jobs, components
    /// and the TaskManagers (and `/metrics`, above); nothing else.
    async fn admin_route(&self, method: &Method, segs: &[&str], query: &str) -> Result<Reply, ApiError> {
        if method != Method::GET {
            return Err(ApiError::forbidden(
                "forbidden",
                format!("the admin token only reads; {method} needs a tenant's token"),
            ));
        }
        let find = |id: &str| {
            self.tenants
                .values()
                .find_map(|t| t.job(id))
                .ok_or_else(|| ApiError::not_found(format!("job {id}")))
        };
        match segs {
            ["v1", "whoami"] => Ok(json_reply(200, &serde_json::json!({ "admin": true }))),
            ["v1", "jobs"] => {
                let mut list = Vec::new();
                for t in self.sorted_tenants() {
                    for j in t.jobs() {
                        let mut v = j.summary();
                        v["tenant"] = t.config.id.as_str().into();
                        list.push(v);
                    }
                }
                Ok(json_reply(200, &serde_json::json!({ "jobs": list })))
            }
            ["v1", "jobs", id, rest @ ..] if rest.len() <= 1 => read_job(find(id)?, rest, query).await,
            ["v1", "components"] => {
                let tenants = self.sorted_tenants();
                blocking(move || {
                    let mut list = Vec::new();
                    for t in tenants {
                        for c in t.store.list_components()? {
                            let mut v = serde_json::to_value(c).unwrap_or_default();
                            v["tenant"] = t.config.id.as_str().into();
                            list.push(v);
                        }
                    }
                    Ok(json_reply(200, &serde_json::json!({ "components": list })))
                })
                .await
            }
            ["v1", "taskmanagers"] => Ok(self.taskmanagers()),
            _ => Err(ApiError::forbidden(
                "forbidden",
                format!(
                    "the admin token reads jobs, components, TaskManagers and /metrics; /{} needs a tenant's token",
                    segs.join("/")
                ),
            )),
        }
    }

    fn sorted_tenants(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<Arc<Tenant>> = self.tenants.values().cloned().collect();
        all.sort_by(|a, b| a.config.id.as_str().cmp(b.config.id.as_str()));
        all
    }
}

/// `GET /v1/jobs/{id}` and its reads (`checkpoints`, `savepoints`, `logs`,
/// `spec`), for its tenant or the admin.
async fn read_job(j: Arc<jobs::ManagedJob>, rest: &[&str], query: &str) -> Result<Reply, ApiError> {
    match rest {
        [] => Ok(json_reply(200, &j.details())),
        [kind @ ("savepoints" | "checkpoints")] => {
            let (savepoints, key) = (*kind == "savepoints", (*kind).to_owned());
            blocking(move || Ok(json_reply(200, &serde_json::json!({ key: j.stored_checkpoints(savepoints) })))).await
        }
        ["logs"] => {
            let tail = query_param(query, "tail").and_then(|v| v.parse().ok()).unwrap_or(100);
            Ok(json_reply(200, &serde_json::to_value(j.logs.snapshot(tail)).unwrap_or_default()))
        }
        ["spec"] => Ok(json_reply(200, &serde_json::json!({ "spec": j.spec }))),
        ["plan"] => Ok(json_reply(200, &j.graph)),
        _ => Err(ApiError::not_found(format!("route /v1/jobs/{}/{}", j.id, rest.join("/")))),
    }
}

/// True when the request's `Content-Type` is `mime` (parameters aside).
fn content_type_is(headers: &hyper::HeaderMap, mime: &str) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(mime))
}

/// A file of the dashboard, which may load only the server's own files.
fn page_reply(content_type: &str, bytes: Vec<u8>) -> Reply {
    let mut r = reply(200, content_type, bytes);
    let h = r.headers_mut();
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(dashboard::CONTENT_SECURITY_POLICY),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn job(tenant: &Tenant, id: &str) -> Result<Arc<jobs::ManagedJob>, ApiError> {
    tenant.job(id).ok_or_else(|| ApiError::not_found(format!("job {id}")))
}

fn metrics_reply(tenants: &[Arc<Tenant>], extra: &str) -> Reply {
    let refs: Vec<&Tenant> = tenants.iter().map(|t| &**t).collect();
    let mut text = metrics::render(&refs);
    text.push_str(extra);
    reply(200, "text/plain; version=0.0.4", text.into_bytes())
}

fn pattern_matches(pattern: &str, segs: &[&str]) -> bool {
    let parts: Vec<&str> = pattern.trim_start_matches('/').split('/').collect();
    if parts.last() == Some(&"{path}") {
        return segs.len() >= parts.len() && parts[..parts.len() - 1].iter().zip(segs).all(|(p, s)| p.starts_with('{') || p == s);
    }
    parts.len() == segs.len() && parts.iter().zip(segs).all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}

/// The first value of query parameter `name`, percent-decoded.
fn query_param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Bytes of an oversized body read and discarded before answering 413, so
/// a client still sending it gets the answer instead of a broken pipe.
const DRAIN_CAP: u64 = 64 << 20;

/// Read a body of at most `limit` bytes (413 beyond it) within
/// `deadline` (408 after it), admitted by `budgets` (429 when the tenant's
/// is full, 503 when the server's is). The permit holds the body's bytes
/// in the budgets until it is dropped.
async fn read_body(
    req: Request<Incoming>,
    limit: u64,
    budgets: &[&Arc<BodyBudget>],
    deadline: Duration,
) -> Result<(Vec<u8>, BodyPermit), ApiError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body();
    if declared.is_some_and(|len| len > limit.max(DRAIN_CAP)) {
        return Err(ApiError::too_large(limit));
    }
    let mut permit = BodyPermit::acquire(budgets).map_err(budget_error)?;
    // Claim the declared length at once: a body that cannot fit now is
    // refused before a byte of it is read. One declared over the limit is
    // only drained, never kept.
    let oversized = declared.is_some_and(|len| len > limit);
    let upfront = if oversized { 0 } else { declared.unwrap_or(0) };
    permit.grow(upfront).map_err(budget_error)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(usize::try_from(upfront).unwrap_or(usize::MAX))
        .map_err(|_| ApiError::unavailable(format!("cannot allocate {upfront} bytes for the request body")))?;
    let keep = if oversized { 0 } else { limit };
    let received = tokio::time::timeout(deadline, collect(body, keep, limit, &mut bytes, &mut permit)).await;
    let seen = match received {
        Ok(r) => r?,
        Err(_) => return Err(ApiError::body_timeout(u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX))),
    };
    if seen > limit {
        return Err(ApiError::too_large(limit));
    }
    Ok((bytes, permit))
}

/// Append the frames of `body` to `bytes` while at most `keep` bytes came
/// (claiming bytes beyond what `permit` holds), reading and discarding the
/// rest up to [`DRAIN_CAP`] past `limit`; how many bytes were seen.
async fn collect(mut body: Incoming, keep: u64, limit: u64, bytes: &mut Vec<u8>, permit: &mut BodyPermit) -> Result<u64, ApiError> {
    let mut seen: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad_request("bad_body", format!("reading the request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        seen = seen.saturating_add(data.len() as u64);
        if seen <= keep {
            permit.grow(seen.saturating_sub(permit.bytes())).map_err(budget_error)?;
            bytes
                .try_reserve(data.len())
                .map_err(|_| ApiError::unavailable("cannot allocate memory for the request body"))?;
            bytes.extend_from_slice(&data);
        } else if seen > limit.max(DRAIN_CAP) {
            break;
        }
    }
    Ok(seen)
}

fn budget_error(e: BudgetExceeded) -> ApiError {
    match e {
        BudgetExceeded::Never { .. } => ApiError::too_large_because(e.to_string()),
        e if e.is_tenant() => ApiError::too_many_requests(e.to_string()),
        e => ApiError::unavailable(e.to_string()),
    }
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
        // Not stored: keep no compiled copy either.
        engine.forget(&ComponentDigest::of(body));
        return Err(ApiError::quota(format!(
            "tenant `{}` already stores {max} components, its limit; delete one first",
            tenant.config.id
        )));
    }
    if let Some(ha) = &tenant.ha {
        super::ha::store_component(ha, &meta.digest, body)?;
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

/// `path` as a relative path of the file area: plain parts, no hidden name.
fn file_path(path: &str) -> Result<std::path::PathBuf, ApiError> {
    let rel = safe_relative(path, "file").map_err(|e| ApiError::bad_request("invalid_path", e.message))?;
    if rel.components().any(|c| c.as_os_str().to_string_lossy().starts_with('.')) {
        return Err(ApiError::bad_request(
            "invalid_path",
            format!("file {path:?}: names starting with '.' are reserved"),
        ));
    }
    Ok(rel)
}

fn file_error(e: FileError) -> ApiError {
    match e {
        FileError::NotFound(p) => ApiError::not_found(format!("file {p:?}")),
        FileError::Symlink(_) | FileError::Special(_) => ApiError::forbidden("not_a_regular_file", e.to_string()),
        FileError::NotADirectory(_) | FileError::IsADirectory(_) => ApiError::conflict(e.to_string()),
        FileError::DiskQuota { .. } | FileError::FileQuota { .. } => ApiError::insufficient_storage(e.to_string()),
        FileError::Io { .. } => ApiError::internal(e.to_string()),
    }
}

fn get_file(tenant: &Tenant, path: Option<&str>) -> Result<Reply, ApiError> {
    let rel = path.map(file_path).transpose()?;
    match tenant.store.files().get(rel.as_deref()).map_err(file_error)? {
        Entry::Dir(listed) => {
            let entries: Vec<serde_json::Value> = listed
                .into_iter()
                .map(|e| serde_json::json!({"name": e.name, "dir": e.dir, "size": e.size}))
                .collect();
            Ok(json_reply(200, &serde_json::json!({ "entries": entries })))
        }
        Entry::File(file, len) => {
            let mut r = Response::new(ReplyBody::File(FileBody::new(file, len)));
            if let Ok(v) = "application/octet-stream".parse() {
                r.headers_mut().insert(CONTENT_TYPE, v);
            }
            Ok(r)
        }
    }
}

fn put_file(tenant: &Tenant, path: &str, body: &[u8]) -> Result<Reply, ApiError> {
    let rel = file_path(path)?;
    // One put at a time per tenant: its disk use is checked and changed as one step.
    let _one_at_a_time = tenant.disk.lock().unwrap_or_else(|p| p.into_inner());
    let used = tenant.disk_usage();
    tenant
        .store
        .files()
        .put(&rel, body, |cost| tenant.admit_put(used, cost))
        .map_err(file_error)?;
    Ok(json_reply(201, &serde_json::json!({ "path": path, "size": body.len() })))
}

fn delete_file(tenant: &Tenant, path: &str) -> Result<Reply, ApiError> {
    let rel = file_path(path)?;
    tenant.store.files().delete(&rel).map_err(file_error)?;
    Ok(reply(204, "application/json", Vec::new()))
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
        assert_eq!(query_param("tail=5&x=1", "tail").as_deref(), Some("5"));
        assert_eq!(
            query_param("savepoint=ab%2Fsavepoint-3&x", "savepoint").as_deref(),
            Some("ab/savepoint-3")
        );
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
