//! One guest instance: the long-lived instance of one subtask.
//!
//! ```text
//!   new ──► open(config) ──► process / process_runs (once per batch) ─┐
//!                                 ▲                                    │
//!                                 └────────────────────────────────────┘
//!   any trap, deadline or memory-limit failure ──► poisoned: every later
//!   call fails at once; the instance (its Store) is dropped, never reused
//! ```
//!
//! Each call gets a fresh epoch deadline, so a guest that loops forever is
//! interrupted after `call_timeout`; linear memory is capped by a
//! [`MemoryLimiter`]. The keyed state of a keyed operator is host data that
//! lives in the store's [`HostState`] but belongs to the subtask: it can be
//! taken out with [`GuestInstance::into_state`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sluice_guest::batch::{Batch, BatchError};
use wasmtime::Store;

use super::bindings::{
    aggregate_operator, keyed_operator, stateless_operator, timers, types, watermark_generator, window_process_operator,
};
use super::engine::{EPOCH_TICK, LoadedComponent};
use super::host::{GuestLogger, HostState, KeyedScope, RunKeys};
use super::world::World;
use crate::state::HeapKeyedState;
use crate::tenancy::{GuestLogBuffer, InstanceLimits, LogRateLimiter, MemoryLimiter, StateLimitExceeded, TenantMeter};
use crate::time::{Clock, TimeDomain, TimerService};

/// What went wrong inside a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestFailure {
    /// Instantiation failed.
    Instantiate(String),
    /// The component does not export the world its operator needs.
    WrongWorld {
        /// The world the operator kind needs.
        expected: World,
        /// What the component exports instead.
        found: String,
    },
    /// `open` returned an error.
    Open(String),
    /// A call ran past its deadline.
    CpuLimit(Duration),
    /// The guest asked for more memory than allowed.
    MemoryLimit {
        /// The cap in bytes.
        limit: usize,
        /// What it asked for.
        asked: usize,
    },
    /// A call burned more fuel than its budget.
    FuelLimit(u64),
    /// The tenant's keyed state would exceed its quota.
    StateLimit(StateLimitExceeded),
    /// The guest's stack overflowed (for example unbounded recursion).
    StackOverflow,
    /// Any other trap: a panic, `unreachable`, an out-of-bounds access…
    Trap(String),
    /// The guest returned a batch that does not parse.
    BadOutput(BatchError),
    /// The guest reported an error for a record index it was never given.
    BadErrorIndex(u32),
    /// A call emitted more than a job limit allows (records, bytes, or one
    /// record's size); the message names the limit.
    OutputLimit(String),
    /// The instance failed earlier and is not used again.
    Poisoned,
}

impl fmt::Display for GuestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFailure::Instantiate(e) => write!(f, "instantiation failed: {e}"),
            GuestFailure::WrongWorld { expected, found } => {
                write!(f, "the component does not export the world `{expected}` (it exports {found})")
            }
            GuestFailure::Open(e) => write!(f, "open failed: {e}"),
            GuestFailure::CpuLimit(d) => write!(f, "CPU time limit exceeded: a call ran longer than {} ms", d.as_millis()),
            GuestFailure::MemoryLimit { limit, asked } => {
                write!(
                    f,
                    "memory limit exceeded: the guest asked for {asked} bytes, the limit is {limit} bytes"
                )
            }
            GuestFailure::FuelLimit(budget) => {
                write!(f, "CPU time limit exceeded: a call burned more than {budget} fuel")
            }
            GuestFailure::StateLimit(e) => write!(f, "{e}"),
            GuestFailure::StackOverflow => write!(f, "trap: stack overflow (unbounded recursion?)"),
            GuestFailure::Trap(t) => write!(f, "trap: {t}"),
            GuestFailure::BadOutput(e) => write!(f, "the guest returned a {e}"),
            GuestFailure::BadErrorIndex(i) => write!(f, "the guest reported an error for record {i}, which its batch does not have"),
            GuestFailure::OutputLimit(m) => write!(f, "output limit exceeded: {m}"),
            GuestFailure::Poisoned => write!(f, "the instance failed earlier and was discarded"),
        }
    }
}

/// A guest failure, naming the operator and subtask.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("operator `{operator}` subtask {subtask}: {failure}")]
pub struct GuestError {
    /// The operator.
    pub operator: String,
    /// Its subtask.
    pub subtask: u32,
    /// What happened.
    pub failure: GuestFailure,
}

/// An expected failure of one record, reported by the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Index of the record in the batch given to the guest.
    pub index: u32,
    /// The guest's message.
    pub message: String,
}

/// What one call produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GuestOutput {
    /// Packed output records.
    pub records: Vec<u8>,
    /// How many records `records` holds.
    pub count: usize,
    /// Failed input records.
    pub errors: Vec<RecordError>,
}

enum Exports {
    Stateless(stateless_operator::Guest),
    Keyed(keyed_operator::Guest),
    Aggregate(aggregate_operator::Guest),
    WindowProcess(window_process_operator::Guest),
    Punctuated(watermark_generator::Guest),
}

/// A window's bounds, `[start, end)` in ms.
pub type WindowBounds = (i64, i64);

/// The long-lived guest instance of one subtask.
pub struct GuestInstance {
    store: Store<HostState>,
    exports: Exports,
    operator: Arc<str>,
    subtask: u32,
    limits: InstanceLimits,
    poisoned: bool,
    fuel: bool,
    call_started: Option<Instant>,
    meter: Option<Arc<TenantMeter>>,
    _live: LiveInstance,
}

/// Fuel given to a call when fuel is metered but not capped.
const UNMETERED_FUEL: u64 = 1 << 62;

/// Guest instances alive in this process.
static LIVE_INSTANCES: AtomicI64 = AtomicI64::new(0);

/// Guest instances alive in this process now (the `/metrics` gauge, and
/// what leak checks look at).
pub fn live_instances() -> i64 {
    LIVE_INSTANCES.load(Ordering::Relaxed)
}

/// Counts one live instance, process-wide and in its tenant's meter.
struct LiveInstance(Option<Arc<TenantMeter>>);

impl LiveInstance {
    fn new(meter: Option<Arc<TenantMeter>>) -> Self {
        LIVE_INSTANCES.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &meter {
            m.instances.fetch_add(1, Ordering::Relaxed);
        }
        LiveInstance(meter)
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        LIVE_INSTANCES.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = &self.0 {
            m.instances.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// What a guest instance runs with besides its component: its limits, the
/// processing-time clock, and where its usage and log lines are counted.
#[derive(Clone)]
pub struct GuestEnv {
    /// Memory, deadline, fuel and log limits.
    pub limits: InstanceLimits,
    /// Processing time for `context.processing-time` and WASI clocks.
    pub clock: Arc<dyn Clock>,
    /// The tenant's meter; none outside a server.
    pub meter: Option<Arc<TenantMeter>>,
    /// The job's guest log; none: lines go to `tracing` only.
    pub logs: Option<Arc<GuestLogBuffer>>,
}

impl fmt::Debug for GuestEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestEnv").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl fmt::Debug for GuestInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestInstance")
            .field("operator", &self.operator)
            .field("subtask", &self.subtask)
            .finish()
    }
}

impl GuestInstance {
    /// Instantiate `component` for subtask `subtask` of `operator`, checking it
    /// exports `world`, and call its `open` with `config`. A keyed world
    /// needs `state`, the subtask's keyed state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        component: &LoadedComponent,
        world: World,
        operator: &str,
        subtask: u32,
        env: &GuestEnv,
        state: Option<HeapKeyedState>,
        config: &str,
    ) -> Result<Self, GuestError> {
        let limits = env.limits;
        let fail = |failure| GuestError {
            operator: operator.to_owned(),
            subtask,
            failure,
        };
        if component.info.world != Some(world) {
            return Err(fail(GuestFailure::WrongWorld {
                expected: world,
                found: component.info.exports_description(),
            }));
        }
        let operator: Arc<str> = operator.into();
        let logger = GuestLogger {
            operator: operator.clone(),
            subtask,
            rate: LogRateLimiter::new(limits.log_lines_per_sec),
            recent_errors: Default::default(),
            buffer: env.logs.clone(),
            meter: env.meter.clone(),
        };
        let keyed = match world {
            World::KeyedProcess => {
                let backend = state.unwrap_or_else(|| HeapKeyedState::new(crate::state::KeyGroupRange::for_subtask(1, 1, 0)));
                Some(KeyedScope {
                    timers: TimerService::with_budget(backend.budget()),
                    backend,
                    runs: RunKeys::default(),
                    current: None,
                    quota_hit: None,
                })
            }
            _ => None,
        };
        let live = LiveInstance::new(env.meter.clone());
        let data = HostState::new(
            logger,
            MemoryLimiter::new(limits.memory_bytes, env.meter.clone()),
            env.clock.clone(),
            keyed,
        );
        let mut store = Store::new(component.pre.engine(), data);
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(deadline_ticks(limits.call_timeout));
        if component.fuel {
            // Instantiation runs guest code too; it gets one call's budget.
            let _ = store.set_fuel(limits.fuel_per_call.unwrap_or(UNMETERED_FUEL));
        }
        let instance = component
            .pre
            .instantiate(&mut store)
            .map_err(|e| fail(GuestFailure::Instantiate(format!("{e:#}"))))?;
        let load = |e: wasmtime::Error| fail(GuestFailure::Instantiate(format!("{e:#}")));
        macro_rules! exports {
            ($variant:ident, $interface:ident) => {
                Exports::$variant(
                    $interface::GuestIndices::new(&component.pre)
                        .map_err(load)?
                        .load(&mut store, &instance)
                        .map_err(load)?,
                )
            };
        }
        let exports = match world {
            World::Stateless => exports!(Stateless, stateless_operator),
            World::KeyedProcess => exports!(Keyed, keyed_operator),
            World::WindowAggregate => exports!(Aggregate, aggregate_operator),
            World::WindowProcess => exports!(WindowProcess, window_process_operator),
            World::Punctuated => exports!(Punctuated, watermark_generator),
        };
        let mut me = GuestInstance {
            store,
            exports,
            operator,
            subtask,
            limits,
            poisoned: false,
            fuel: component.fuel,
            call_started: None,
            meter: env.meter.clone(),
            _live: live,
        };
        me.open(config)?;
        Ok(me)
    }

    fn error(&self, failure: GuestFailure) -> GuestError {
        GuestError {
            operator: self.operator.to_string(),
            subtask: self.subtask,
            failure,
        }
    }

    fn open(&mut self, config: &str) -> Result<(), GuestError> {
        self.begin()?;
        let r = match &self.exports {
            Exports::Stateless(g) => g.call_open(&mut self.store, config),
            Exports::Keyed(g) => g.call_open(&mut self.store, config),
            Exports::Aggregate(g) => g.call_open(&mut self.store, config),
            Exports::WindowProcess(g) => g.call_open(&mut self.store, config),
            Exports::Punctuated(g) => g.call_open(&mut self.store, config),
        };
        self.charge();
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(self.error(GuestFailure::Open(msg))),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Run a stateless operator over one packed batch.
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<u8>`
    pub fn process(&mut self, batch: &Vec<u8>) -> Result<GuestOutput, GuestError> {
        self.begin()?;
        let Exports::Stateless(g) = &self.exports else {
            return Err(self.wrong_call("process"));
        };
        let r = g.call_process(&mut self.store, batch);
        self.charge();
        match r {
            Ok(out) => self.output(out, &|| count(batch)),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// The run keys of the next keyed batch, to be filled before
    /// [`process_runs`](Self::process_runs).
    pub fn runs_mut(&mut self) -> Option<&mut RunKeys> {
        self.store.data_mut().keyed.as_mut().map(|k| &mut k.runs)
    }

    /// State, timers and run keys of a keyed operator.
    pub fn keyed_scope_mut(&mut self) -> Option<&mut KeyedScope> {
        self.store.data_mut().keyed.as_mut()
    }

    /// Arm the call's deadline and fuel budget.
    fn begin(&mut self) -> Result<(), GuestError> {
        if self.poisoned {
            return Err(self.error(GuestFailure::Poisoned));
        }
        self.store.set_epoch_deadline(deadline_ticks(self.limits.call_timeout));
        if self.fuel {
            // Cannot fail: fuel is enabled on this store's engine.
            let _ = self.store.set_fuel(self.fuel_budget());
        }
        self.call_started = Some(Instant::now());
        Ok(())
    }

    fn fuel_budget(&self) -> u64 {
        self.limits.fuel_per_call.unwrap_or(UNMETERED_FUEL)
    }

    /// Charge the call that just returned to the tenant: its time, and its
    /// fuel when metered.
    fn charge(&mut self) {
        let started = self.call_started.take();
        let Some(meter) = &self.meter else { return };
        if let Some(t) = started {
            meter
                .guest_cpu_ns
                .fetch_add(t.elapsed().as_nanos().min(u128::from(u64::MAX)) as u64, Ordering::Relaxed);
        }
        if self.fuel
            && let Ok(left) = self.store.get_fuel()
        {
            meter.fuel.fetch_add(self.fuel_budget().saturating_sub(left), Ordering::Relaxed);
        }
    }

    fn wrong_call(&self, call: &str) -> GuestError {
        self.error(GuestFailure::Trap(format!(
            "the host called `{call}` on a component of another world"
        )))
    }

    fn end_keyed_call(&mut self) {
        if let Some(k) = self.store.data_mut().keyed.as_mut() {
            k.current = None;
        }
    }

    /// Call a keyed operator's `on-timers` with `(run, domain, timestamp)`
    /// per fired timer; the run keys were set with
    /// [`keyed_scope_mut`](Self::keyed_scope_mut).
    pub fn on_timers(&mut self, fired: &[(u32, TimeDomain, i64)]) -> Result<GuestOutput, GuestError> {
        self.begin()?;
        let Exports::Keyed(g) = &self.exports else {
            return Err(self.wrong_call("on-timers"));
        };
        let list: Vec<keyed_operator::FiredTimer> = fired
            .iter()
            .map(|&(run, domain, timestamp)| keyed_operator::FiredTimer {
                run,
                domain: match domain {
                    TimeDomain::EventTime => timers::TimeDomain::EventTime,
                    TimeDomain::ProcessingTime => timers::TimeDomain::ProcessingTime,
                },
                timestamp,
            })
            .collect();
        let r = g.call_on_timers(&mut self.store, &list);
        self.charge();
        self.end_keyed_call();
        match r {
            Ok(out) => self.output(out, &|| fired.len()),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Fold runs of records into packed accumulators (`aggregate-operator.add`).
    /// Returns the packed accumulators and the records that failed.
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<_>`
    pub fn aggregate_add(
        &mut self,
        records: &Vec<u8>,
        runs: &Vec<u32>,
        accumulators: &Vec<u8>,
    ) -> Result<(Vec<u8>, Vec<RecordError>), GuestError> {
        self.begin()?;
        let Exports::Aggregate(g) = &self.exports else {
            return Err(self.wrong_call("add"));
        };
        let r = g.call_add(&mut self.store, records, runs, accumulators);
        self.charge();
        match r {
            Ok(out) => {
                let errors = self.record_errors(out.errors, &|| count(records))?;
                Ok((out.accumulators, errors))
            }
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Merge packed accumulators into one (`aggregate-operator.merge`).
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<_>`
    pub fn aggregate_merge(&mut self, accumulators: &Vec<u8>) -> Result<Vec<u8>, GuestError> {
        self.begin()?;
        let Exports::Aggregate(g) = &self.exports else {
            return Err(self.wrong_call("merge"));
        };
        let r = g.call_merge(&mut self.store, accumulators);
        self.charge();
        match r {
            Ok(Ok(acc)) => Ok(acc),
            Ok(Err(message)) => {
                self.poisoned = true;
                Err(self.error(GuestFailure::Trap(format!("merge failed: {message}"))))
            }
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Results of fired windows (`aggregate-operator.fire`): record i of
    /// `accumulators` is the accumulator of `windows[i]`.
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<_>`
    pub fn aggregate_fire(&mut self, accumulators: &Vec<u8>, windows: &[WindowBounds]) -> Result<GuestOutput, GuestError> {
        self.begin()?;
        let Exports::Aggregate(g) = &self.exports else {
            return Err(self.wrong_call("fire"));
        };
        let list: Vec<types::Window> = windows.iter().map(|&(start, end)| types::Window { start, end }).collect();
        let r = g.call_fire(&mut self.store, accumulators, &list);
        self.charge();
        match r {
            Ok(out) => self.output(out, &|| windows.len()),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// A full-window function over fired windows: `windows[i]` is a window
    /// and how many of `elements` (in order) are its.
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<_>`
    pub fn window_process(&mut self, elements: &Vec<u8>, windows: &[(WindowBounds, u32)]) -> Result<GuestOutput, GuestError> {
        self.begin()?;
        let Exports::WindowProcess(g) = &self.exports else {
            return Err(self.wrong_call("process"));
        };
        let list: Vec<window_process_operator::FiredWindow> = windows
            .iter()
            .map(|&((start, end), count)| window_process_operator::FiredWindow {
                window: types::Window { start, end },
                count,
            })
            .collect();
        let r = g.call_process(&mut self.store, elements, &list);
        self.charge();
        match r {
            Ok(out) => self.output(out, &|| count(elements)),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Ask a punctuated watermark generator about a batch: the watermarks
    /// to emit, each after the record at its index.
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<_>`
    pub fn punctuate(&mut self, records: &Vec<u8>) -> Result<Vec<(u32, i64)>, GuestError> {
        self.begin()?;
        let Exports::Punctuated(g) = &self.exports else {
            return Err(self.wrong_call("on-batch"));
        };
        let r = g.call_on_batch(&mut self.store, records);
        self.charge();
        match r {
            Ok(list) => {
                let n = count(records);
                let mut last = None;
                for p in &list {
                    if p.after as usize >= n || last.is_some_and(|l| p.after < l) {
                        self.poisoned = true;
                        return Err(self.error(GuestFailure::Trap(format!(
                            "on-batch returned a watermark after record {}, out of order or past the {n} records of the batch",
                            p.after
                        ))));
                    }
                    last = Some(p.after);
                }
                Ok(list.into_iter().map(|p| (p.after, p.watermark)).collect())
            }
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Run a keyed operator over a batch grouped into runs whose keys were
    /// set with [`runs_mut`](Self::runs_mut).
    #[allow(clippy::ptr_arg)] // the generated binding takes `&Vec<u8>`
    pub fn process_runs(&mut self, input: u32, batch: &Vec<u8>) -> Result<GuestOutput, GuestError> {
        self.begin()?;
        let Exports::Keyed(g) = &self.exports else {
            return Err(self.wrong_call("process-runs"));
        };
        let r = g.call_process_runs(&mut self.store, input, batch);
        self.charge();
        self.end_keyed_call();
        match r {
            Ok(out) => self.output(out, &|| count(batch)),
            Err(e) => Err(self.trapped(e)),
        }
    }

    /// Set the attempt number guests see through `context.attempt`.
    pub fn set_attempt(&mut self, attempt: u32) {
        self.store.data_mut().attempt = attempt;
    }

    /// Tell the guest the current watermark (`context.watermark`).
    pub fn set_watermark(&mut self, watermark: Option<i64>) {
        self.store.data_mut().watermark = watermark;
    }

    /// The subtask's keyed state, if keyed.
    pub fn state(&self) -> Option<&HeapKeyedState> {
        self.store.data().keyed.as_ref().map(|k| &k.backend)
    }

    /// Drop the instance, keeping the subtask's keyed state.
    pub fn into_state(self) -> Option<HeapKeyedState> {
        self.store.into_data().keyed.map(|k| k.backend)
    }

    /// A state or timer write the budget refused during the call fails the
    /// instance with the limit it crossed (nothing of that write was stored).
    fn check_state_quota(&mut self) -> Result<(), GuestError> {
        if let Some(e) = self.store.data_mut().keyed.as_mut().and_then(|k| k.quota_hit.take()) {
            self.poisoned = true;
            return Err(self.error(GuestFailure::StateLimit(e)));
        }
        Ok(())
    }

    /// What a call's output breaks of the job's output limits, if anything.
    fn output_over_limits(&self, records: &[u8], count: usize) -> Option<String> {
        let l = &self.limits;
        if records.len() > l.max_output_bytes {
            return Some(format!(
                "one call emitted {} bytes of records; the limit is {} (limits.max_output_bytes_per_call)",
                records.len(),
                l.max_output_bytes
            ));
        }
        if count > l.max_output_records {
            return Some(format!(
                "one call emitted {count} records; the limit is {} (limits.max_output_records_per_call)",
                l.max_output_records
            ));
        }
        // No record can be bigger than the whole batch.
        if records.len() > l.max_record_bytes {
            let big = Batch::new(records)
                .iter()
                .map_while(Result::ok)
                .map(|r| r.key.map_or(0, <[u8]>::len) + r.value.len())
                .find(|&n| n > l.max_record_bytes);
            if let Some(n) = big {
                return Some(format!(
                    "a record of {n} bytes; the limit is {} (limits.max_record_bytes)",
                    l.max_record_bytes
                ));
            }
        }
        None
    }

    /// Validate a call's output; `inputs` is how many items the call had
    /// (what record-error indexes may point at).
    fn output(&mut self, out: types::Output, inputs: &dyn Fn() -> usize) -> Result<GuestOutput, GuestError> {
        let count = match Batch::new(&out.records).validate() {
            Ok(n) => n,
            Err(e) => {
                self.poisoned = true;
                return Err(self.error(GuestFailure::BadOutput(e)));
            }
        };
        self.check_state_quota()?;
        if let Some(m) = self.output_over_limits(&out.records, count) {
            self.poisoned = true;
            return Err(self.error(GuestFailure::OutputLimit(m)));
        }
        let errors = self.record_errors(out.errors, inputs)?;
        Ok(GuestOutput {
            records: out.records,
            count,
            errors,
        })
    }

    fn record_errors(&mut self, errors: Vec<types::RecordError>, inputs: &dyn Fn() -> usize) -> Result<Vec<RecordError>, GuestError> {
        if let Some(max) = errors.iter().map(|e| e.index).max()
            && max as usize >= inputs()
        {
            self.poisoned = true;
            return Err(self.error(GuestFailure::BadErrorIndex(max)));
        }
        Ok(errors
            .into_iter()
            .map(|e| RecordError {
                index: e.index,
                message: e.message,
            })
            .collect())
    }

    /// Classify a trap, poison the instance, and say what the guest said last.
    fn trapped(&mut self, e: wasmtime::Error) -> GuestError {
        self.poisoned = true;
        if let Some(q) = self.store.data_mut().keyed.as_mut().and_then(|k| k.quota_hit.take()) {
            // The guest gave up after a refused write: the limit is the cause.
            return self.error(GuestFailure::StateLimit(q));
        }
        let data = self.store.data();
        if let Some(asked) = data.limiter.exceeded {
            return self.error(GuestFailure::MemoryLimit {
                limit: self.limits.memory_bytes,
                asked,
            });
        }
        let failure = match e.downcast_ref::<wasmtime::Trap>() {
            Some(wasmtime::Trap::Interrupt) => GuestFailure::CpuLimit(self.limits.call_timeout),
            Some(wasmtime::Trap::OutOfFuel) => GuestFailure::FuelLimit(self.fuel_budget()),
            Some(wasmtime::Trap::StackOverflow) => GuestFailure::StackOverflow,
            _ => {
                let mut msg = format!("{e:#}");
                if let Some(said) = data.log.recent_errors.back() {
                    msg.push_str(&format!("; the guest logged: {said}"));
                }
                let stderr = data.stderr.contents();
                if !stderr.is_empty() {
                    let text = String::from_utf8_lossy(&stderr);
                    let tail: String = text.trim_end().lines().rev().take(3).collect::<Vec<_>>().join(" | ");
                    msg.push_str(&format!("; guest stderr: {tail}"));
                }
                GuestFailure::Trap(msg)
            }
        };
        self.error(failure)
    }
}

/// Records in a batch the host built (and so knows to be well-formed).
fn count(batch: &[u8]) -> usize {
    Batch::new(batch).iter().count()
}

fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64 + 1
}
