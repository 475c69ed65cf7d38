//! The host side of the WIT interfaces: what a guest's imports do.
//!
//! Every store carries a [`HostState`]. WASI is linked (a `wasm32-wasip2`
//! guest imports it even when it does no I/O) but grants nothing: no
//! preopened directories, no environment, no network, stdin empty, stdout
//! discarded and stderr kept in a small bounded buffer for error reports;
//! its clocks are the job's processing-time clock.
//! State calls are scoped to the key of the run the guest entered; a guest
//! cannot name a key itself.

use std::collections::VecDeque;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{self, context, keyed_context, log, state, timers};
use crate::state::{HeapKeyedState, KeyGroup, StateError as BackendError};
use crate::tenancy::{GuestLogBuffer, LogLine, LogRateLimiter, MemoryLimiter, StateLimitExceeded, TenantMeter};
use crate::time::Clock;
use crate::time::{TimeDomain, Timer, TimerService};

/// Largest page of a state scan, in entries and bytes.
const MAX_PAGE_ENTRIES: u32 = 1024;
const MAX_PAGE_BYTES: usize = 1 << 20;
/// Bytes of guest stderr kept for error reports.
const STDERR_CAPACITY: usize = 16 << 10;
/// Longest guest log line kept (longer lines are cut).
const MAX_LOG_LINE: usize = 4096;
/// Error-level guest log lines kept to explain a trap.
const RECENT_ERRORS: usize = 4;

/// The keys of the runs of the batch being processed, in run order.
#[derive(Debug, Default)]
pub struct RunKeys {
    bytes: Vec<u8>,
    runs: Vec<(KeyGroup, usize, usize)>,
}

impl RunKeys {
    /// Forget all runs, keeping capacity.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.runs.clear();
    }

    /// Add the next run's key.
    pub fn push(&mut self, key: &[u8], group: KeyGroup) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        self.runs.push((group, start, self.bytes.len()));
    }

    /// Number of runs.
    pub fn len(&self) -> usize {
        self.runs.len()
    }

    /// True when there are no runs.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Key and group of run `i`.
    pub fn get(&self, i: usize) -> Option<(&[u8], KeyGroup)> {
        self.runs.get(i).map(|&(g, s, e)| (&self.bytes[s..e], g))
    }
}

/// Keyed state, timers and the key in scope, for keyed operators.
#[derive(Debug)]
pub struct KeyedScope {
    /// The subtask's keyed state.
    pub backend: HeapKeyedState,
    /// The subtask's timers.
    pub timers: TimerService,
    /// Keys of the runs of the current call.
    pub runs: RunKeys,
    /// The run in scope.
    pub current: Option<usize>,
    /// A state or timer write the budget refused during the current call:
    /// the call fails with it after it returns, whatever the guest did with
    /// the `quota-exceeded` error.
    pub quota_hit: Option<StateLimitExceeded>,
}

/// Where guest log lines go: tagged tracing events, rate-limited.
#[derive(Debug)]
pub(crate) struct GuestLogger {
    pub operator: Arc<str>,
    pub subtask: u32,
    pub rate: LogRateLimiter,
    pub recent_errors: VecDeque<String>,
    /// The job's log, when it keeps one.
    pub buffer: Option<Arc<GuestLogBuffer>>,
    /// The tenant's meter, counting dropped lines.
    pub meter: Option<Arc<TenantMeter>>,
}

/// The data of every guest store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) stderr: MemoryOutputPipe,
    pub(crate) limiter: MemoryLimiter,
    pub(crate) keyed: Option<KeyedScope>,
    pub(crate) log: GuestLogger,
    clock: Arc<dyn Clock>,
    pub(crate) watermark: Option<i64>,
    pub(crate) attempt: u32,
}

impl HostState {
    pub(crate) fn new(log: GuestLogger, limiter: MemoryLimiter, clock: Arc<dyn Clock>, keyed: Option<KeyedScope>) -> Self {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .wall_clock(HostClock(clock.clone()))
            .monotonic_clock(HostClock(clock.clone()))
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            limiter,
            keyed,
            log,
            clock,
            watermark: None,
            attempt: 0,
        }
    }

    fn scope(&mut self) -> Result<(&mut HeapKeyedState, &[u8], KeyGroup), state::StateError> {
        let scope = self.keyed.as_mut().ok_or(state::StateError::NoCurrentKey)?;
        let run = scope.current.ok_or(state::StateError::NoCurrentKey)?;
        let (key, group) = scope.runs.get(run).ok_or(state::StateError::NoCurrentKey)?;
        Ok((&mut scope.backend, key, group))
    }
}

/// The job's processing-time clock, as WASI's wall and monotonic clocks:
/// a guest sees no time but the host's.
struct HostClock(Arc<dyn Clock>);

impl wasmtime_wasi::HostWallClock for HostClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_millis(1)
    }

    fn now(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::try_from(self.0.now_ms()).unwrap_or(0))
    }
}

impl wasmtime_wasi::HostMonotonicClock for HostClock {
    fn resolution(&self) -> u64 {
        1_000_000
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.now_ms()).unwrap_or(0).saturating_mul(1_000_000)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Link WASI (granting nothing) and the `sluice:udf` interfaces.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    bindings::Host_::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

fn backend_error(e: BackendError) -> state::StateError {
    match e {
        BackendError::UnknownState(id) => state::StateError::UnknownState(id),
        BackendError::QuotaExceeded(q) => state::StateError::QuotaExceeded(q.to_string()),
        other => state::StateError::Invalid(other.to_string()),
    }
}

impl bindings::types::Host for HostState {}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, mut message: String) {
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        // After the cut, so escaping costs at most a few times the cut length.
        if let std::borrow::Cow::Owned(escaped) = crate::tenancy::logs::escape_control(&message) {
            message = escaped;
        }
        let l = &mut self.log;
        if matches!(level, log::Level::Error) {
            if l.recent_errors.len() == RECENT_ERRORS {
                l.recent_errors.pop_front();
            }
            l.recent_errors.push_back(message.clone());
        }
        if !l.rate.allow() {
            if let Some(m) = &l.meter {
                m.log_lines_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if let Some(b) = &l.buffer {
                b.rate_limited(1);
            }
            return;
        }
        let dropped = std::mem::take(&mut l.rate.dropped);
        let (op, st) = (&*l.operator, l.subtask);
        if let Some(b) = &l.buffer {
            b.push(LogLine {
                time_ms: self.clock.now_ms(),
                level: match level {
                    log::Level::Trace => "trace",
                    log::Level::Debug => "debug",
                    log::Level::Info => "info",
                    log::Level::Warn => "warn",
                    log::Level::Error => "error",
                },
                operator: op.to_owned(),
                subtask: st,
                message: message.clone(),
            });
        }
        match level {
            log::Level::Trace => tracing::trace!(target: "guest", operator = op, subtask = st, dropped, "{message}"),
            log::Level::Debug => tracing::debug!(target: "guest", operator = op, subtask = st, dropped, "{message}"),
            log::Level::Info => tracing::info!(target: "guest", operator = op, subtask = st, dropped, "{message}"),
            log::Level::Warn => tracing::warn!(target: "guest", operator = op, subtask = st, dropped, "{message}"),
            log::Level::Error => tracing::error!(target: "guest", operator = op, subtask = st, dropped, "{message}"),
        }
    }
}

impl context::Host for HostState {
    fn processing_time(&mut self) -> i64 {
        self.clock.now_ms()
    }

    fn watermark(&mut self) -> Option<i64> {
        self.watermark
    }

    fn attempt(&mut self) -> u32 {
        self.attempt
    }
}

impl keyed_context::Host for HostState {
    fn enter_run(&mut self, run: u32) -> Result<Vec<u8>, String> {
        let Some(scope) = self.keyed.as_mut() else {
            return Err("not a keyed operator".into());
        };
        match scope.runs.get(run as usize) {
            Some((key, _)) => {
                scope.current = Some(run as usize);
                Ok(key.to_vec())
            }
            None => Err(format!("run {run} does not exist: this batch has {} runs", scope.runs.len())),
        }
    }

    fn current_key(&mut self) -> Option<Vec<u8>> {
        let scope = self.keyed.as_ref()?;
        scope.current.and_then(|r| scope.runs.get(r)).map(|(k, _)| k.to_vec())
    }
}

impl timers::Host for HostState {
    fn register(&mut self, domain: timers::TimeDomain, timestamp: i64) -> Result<(), String> {
        let (timers, timer, domain) = self.timer(domain, timestamp)?;
        timers.try_register(domain, timer).map_err(|e| self.refused(e))
    }

    fn delete(&mut self, domain: timers::TimeDomain, timestamp: i64) -> Result<(), String> {
        let (timers, timer, domain) = self.timer(domain, timestamp)?;
        timers.delete(domain, &timer);
        Ok(())
    }
}

impl HostState {
    /// Remember a write the state budget refused (the call fails with it
    /// once it returns); its message, for the guest.
    fn refused(&mut self, e: StateLimitExceeded) -> String {
        let message = e.to_string();
        if let Some(scope) = self.keyed.as_mut() {
            scope.quota_hit.get_or_insert(e);
        }
        message
    }

    fn timer(&mut self, domain: timers::TimeDomain, timestamp: i64) -> Result<(&mut TimerService, Timer, TimeDomain), String> {
        let scope = self.keyed.as_mut().ok_or("timers need a keyed operator")?;
        let run = scope.current.ok_or("no key in scope: call enter-run first")?;
        let (key, _) = scope.runs.get(run).ok_or("no key in scope: call enter-run first")?;
        let timer = Timer {
            timestamp,
            key: key.to_vec(),
            namespace: Vec::new(),
        };
        let domain = match domain {
            timers::TimeDomain::EventTime => TimeDomain::EventTime,
            timers::TimeDomain::ProcessingTime => TimeDomain::ProcessingTime,
        };
        Ok((&mut scope.timers, timer, domain))
    }
}

impl state::Host for HostState {
    fn declare(&mut self, name: String) -> Result<state::StateId, state::StateError> {
        let scope = self.keyed.as_mut().ok_or(state::StateError::NoCurrentKey)?;
        scope.backend.declare(&name).map_err(backend_error)
    }

    fn get(&mut self, id: state::StateId, user_key: Vec<u8>) -> Result<Option<Vec<u8>>, state::StateError> {
        let (b, key, g) = self.scope()?;
        Ok(b.get(g, key, id, &user_key).map_err(backend_error)?.map(<[u8]>::to_vec))
    }

    fn put(&mut self, id: state::StateId, user_key: Vec<u8>, value: Vec<u8>) -> Result<(), state::StateError> {
        let (b, key, g) = self.scope()?;
        match b.put(g, key, id, &user_key, &value) {
            Err(BackendError::QuotaExceeded(q)) => Err(state::StateError::QuotaExceeded(self.refused(q))),
            r => r.map_err(backend_error),
        }
    }

    fn delete(&mut self, id: state::StateId, user_key: Vec<u8>) -> Result<(), state::StateError> {
        let (b, key, g) = self.scope()?;
        b.delete(g, key, id, &user_key).map_err(backend_error)
    }

    fn clear(&mut self, id: state::StateId) -> Result<(), state::StateError> {
        let (b, key, g) = self.scope()?;
        b.clear(g, key, id).map_err(backend_error)
    }

    fn list(
        &mut self,
        id: state::StateId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: u32,
    ) -> Result<state::Page, state::StateError> {
        let (b, key, g) = self.scope()?;
        let limit = limit.clamp(1, MAX_PAGE_ENTRIES) as usize;
        let page = b
            .scan(g, key, id, &prefix, start_after.as_deref(), limit, MAX_PAGE_BYTES)
            .map_err(backend_error)?;
        Ok(state::Page {
            entries: page
                .entries
                .into_iter()
                .map(|(user_key, value)| state::Entry { user_key, value })
                .collect(),
            next: page.next,
        })
    }

    fn get_runs(&mut self, id: state::StateId, first: u32) -> Result<Vec<Option<Vec<u8>>>, state::StateError> {
        let scope = self.keyed.as_mut().ok_or(state::StateError::NoCurrentKey)?;
        let first = first as usize;
        if first >= scope.runs.len() {
            return Err(state::StateError::Invalid(format!(
                "run {first} does not exist: this batch has {} runs",
                scope.runs.len()
            )));
        }
        let mut values = Vec::with_capacity(scope.runs.len() - first);
        let mut bytes = 0usize;
        for run in first..scope.runs.len() {
            if bytes >= MAX_PAGE_BYTES {
                break;
            }
            let Some((key, group)) = scope.runs.get(run) else { break };
            let value = scope.backend.get(group, key, id, b"").map_err(backend_error)?;
            bytes += value.map_or(0, <[u8]>::len) + key.len().min(64);
            values.push(value.map(<[u8]>::to_vec));
        }
        Ok(values)
    }

    fn put_runs(&mut self, id: state::StateId, writes: Vec<(u32, Option<Vec<u8>>)>) -> Result<(), (u32, state::StateError)> {
        for (i, (run, value)) in writes.into_iter().enumerate() {
            let at = |e| (i as u32, e);
            let scope = self.keyed.as_mut().ok_or(at(state::StateError::NoCurrentKey))?;
            let Some((key, group)) = scope.runs.get(run as usize) else {
                return Err(at(state::StateError::Invalid(format!(
                    "run {run} does not exist: this batch has {} runs",
                    scope.runs.len()
                ))));
            };
            let result = match &value {
                Some(v) => scope.backend.put(group, key, id, b"", v),
                None => scope.backend.delete(group, key, id, b""),
            };
            match result {
                Ok(()) => {}
                Err(BackendError::QuotaExceeded(q)) => return Err(at(state::StateError::QuotaExceeded(self.refused(q)))),
                Err(e) => return Err(at(backend_error(e))),
            }
        }
        Ok(())
    }
}
