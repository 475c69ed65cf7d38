//! The window operator: a keyed operator computed by the host, calling a
//! guest only to aggregate or to process a fired window.
//!
//! State, per key (in the subtask's [`HeapKeyedState`], so it is
//! partitioned by key group like any keyed state):
//!
//! | state | user key | value |
//! |---|---|---|
//! | `window-contents` | window | accumulator bytes (built-in or the UDF's) |
//! | `window-elements` | window + sequence number | one element (full-window functions) |
//! | `window-count` | window | elements in the window (full-window functions number them with it) |
//! | `window-trigger-count` | window | elements since the last firing (count triggers) |
//! | `window-sessions` | (none) | the key's open sessions (merging windows) |
//!
//! Timers (in a [`TimerService`]) have the window as namespace: one at the
//! window's last millisecond to fire it, one at its cleanup time (end +
//! allowed lateness) to purge it; with no lateness they are the same timer.
//!
//! Sliding windows of a built-in aggregate are computed by slices instead
//! (see [`super::sliced`]): one accumulator per key and slide.
//!
//! Aggregates (built-in or a guest's) over windows that neither merge nor
//! are sliced keep `window-contents` in a typed table instead
//! ([`PaneTable`]: each key interned once, its open windows beside it);
//! snapshots write the same entries, so nothing outside the operator sees
//! the difference.

use std::collections::HashMap;
use std::sync::Arc;

use sluice_guest::batch::{BatchWriter, RecordRef};

use super::{Emit, GuestOutputs, Operator, TaskError, keyed_restore, keyed_snapshot, preview};
use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot, SnapshotWriter};
use crate::state::panes::Slot;
use crate::state::{HeapKeyedState, KeyGroup, KeyHasher, PaneTable, StateError, StateId};
use crate::time::{Clock, TimeDomain, Timer, TimerService};
use crate::types::RecordBatch;
use crate::wasm::{GuestError, GuestFailure, GuestInstance, RecordError, WindowBounds};
use crate::window::{Assigner, Builtin, Slices, Slicing, TriggerKind, Window, WindowConfig};

/// Largest page read from state at once when collecting a window's elements.
const SCAN_PAGE: usize = 4096;
/// Most timers fired per guest call.
const FIRE_BATCH: usize = 1024;

/// A state entry: (user key, value).
type Entry = (Vec<u8>, Vec<u8>);

/// What computes a window's result.
pub(crate) enum WindowFunction {
    /// count / sum / min / max, natively.
    Builtin(Builtin),
    /// A `window-aggregate` guest.
    Aggregate(GuestInstance),
    /// A `window-process` guest.
    Process(GuestInstance),
}

struct Ids {
    contents: StateId,
    elements: StateId,
    count: StateId,
    trigger_count: StateId,
    sessions: StateId,
}

/// A key and window of a batch, with the key's hash computed once.
#[derive(PartialEq, Eq)]
struct PaneKey<'a> {
    hash: u64,
    key: &'a [u8],
    window: Window,
}

impl std::hash::Hash for PaneKey<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash ^ (self.window.start as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    }
}

/// Hashes a [`PaneKey`] by its precomputed hash.
#[derive(Clone, Copy, Default)]
struct PaneHasher;

impl std::hash::BuildHasher for PaneHasher {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

struct PrehashedHasher(u64);

impl std::hash::Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// A pane (key and window) of a batch while its records are numbered.
struct Head<'a> {
    key: &'a [u8],
    group: KeyGroup,
    window: Window,
    /// The key's slot in the typed table, when there is one.
    slot: Option<Slot>,
    /// How many records of the batch it has.
    records: u32,
}

impl<'a> Head<'a> {
    fn new(key: &'a [u8], group: KeyGroup, window: Window, slot: Option<Slot>) -> Self {
        Head {
            key,
            group,
            window,
            slot,
            records: 0,
        }
    }
}

/// The records of one key and window within a batch.
struct Pane<'a> {
    key: &'a [u8],
    group: KeyGroup,
    window: Window,
    slot: Option<Slot>,
    /// Its records' indexes in the batch, in arrival order.
    records: &'a [u32],
    /// Elements in the window since the last count firing.
    count: u64,
}

/// One subtask of a window operator.
pub(crate) struct WindowOperator {
    cfg: WindowConfig,
    function: WindowFunction,
    state: HeapKeyedState,
    ids: Ids,
    timers: TimerService,
    watermark: i64,
    clock: Arc<dyn Clock>,
    max_parallelism: u32,
    outputs: GuestOutputs,
    scratch: Vec<Window>,
    /// Set when the windows are computed by slices.
    slicing: Option<Slicing>,
    /// The accumulators (`window-contents`) in a typed table, for
    /// aggregates over windows that neither merge nor are sliced; `None`:
    /// they are in `state`.
    table: Option<PaneTable>,
}

/// The accumulator of a pane: from its slot in the typed table, or from the
/// generic state.
fn read_acc<'s>(
    table: Option<&'s PaneTable>,
    state: &'s HeapKeyedState,
    id: StateId,
    pane: &Pane<'_>,
) -> Result<Option<&'s [u8]>, StateError> {
    match (table, pane.slot) {
        (Some(t), Some(s)) => Ok(t.get(s, &pane.window)),
        _ => state.get(pane.group, pane.key, id, &pane.window.encode()),
    }
}

/// Store the accumulator of a pane where [`read_acc`] found it.
fn write_acc(
    table: Option<&mut PaneTable>,
    state: &mut HeapKeyedState,
    id: StateId,
    pane: &Pane<'_>,
    acc: &[u8],
) -> Result<(), StateError> {
    match (table, pane.slot) {
        (Some(t), Some(s)) => Ok(t.put(s, &pane.window, acc)?),
        _ => state.put(pane.group, pane.key, id, &pane.window.encode(), acc),
    }
}

/// Give back the slots of a batch's panes whose keys got no accumulator
/// (every record failed, or the guest call did, or the batch was refused).
fn release_unused(table: &mut PaneTable, heads: &[Head<'_>]) {
    for s in heads.iter().filter_map(|h| h.slot) {
        table.release_if_empty(s);
    }
}

impl WindowOperator {
    pub fn new(
        cfg: WindowConfig,
        function: WindowFunction,
        mut state: HeapKeyedState,
        clock: Arc<dyn Clock>,
        max_parallelism: u32,
        outputs: GuestOutputs,
    ) -> Result<Self, TaskError> {
        let mut id = |name: &str| state.declare(name).map_err(|e| TaskError::Internal(e.to_string()));
        let ids = Ids {
            contents: id("window-contents")?,
            elements: id("window-elements")?,
            count: id("window-count")?,
            trigger_count: id("window-trigger-count")?,
            sessions: id("window-sessions")?,
        };
        let slicing = match (&function, cfg.assigner, cfg.trigger.kind) {
            (WindowFunction::Builtin(_), Assigner::Sliding { size, slide, offset }, TriggerKind::Time(TimeDomain::EventTime))
                if cfg.time == TimeDomain::EventTime && cfg.allowed_lateness == 0 && size % slide == 0 =>
            {
                Some(Slicing { size, slide, offset })
            }
            _ => None,
        };
        let table = (matches!(function, WindowFunction::Builtin(_) | WindowFunction::Aggregate(_))
            && !cfg.assigner.is_merging()
            && slicing.is_none())
        .then(|| PaneTable::with_budget(state.budget()));
        Ok(WindowOperator {
            table,
            slicing,
            cfg,
            function,
            timers: TimerService::with_budget(state.budget()),
            state,
            ids,
            watermark: i64::MIN,
            clock,
            max_parallelism,
            outputs,
            scratch: Vec::new(),
        })
    }

    fn state_error(&self, e: crate::state::StateError) -> TaskError {
        self.outputs.internal(e)
    }

    fn guest_error(&self, message: String) -> TaskError {
        TaskError::Guest(GuestError {
            operator: self.outputs.name.clone(),
            subtask: self.outputs.subtask,
            failure: GuestFailure::Trap(message),
        })
    }

    // ---- state helpers -------------------------------------------------

    fn get_u64(&self, g: KeyGroup, key: &[u8], id: StateId, uk: &[u8]) -> Result<u64, TaskError> {
        let v = self.state.get(g, key, id, uk).map_err(|e| self.state_error(e))?;
        Ok(v.and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes))
    }

    fn put_u64(&mut self, g: KeyGroup, key: &[u8], id: StateId, uk: &[u8], v: u64) -> Result<(), TaskError> {
        let r = if v == 0 {
            self.state.delete(g, key, id, uk)
        } else {
            self.state.put(g, key, id, uk, &v.to_le_bytes())
        };
        r.map_err(|e| self.state_error(e))
    }

    /// Elements of a window, in order, as (user key, value) pairs.
    fn elements(&self, g: KeyGroup, key: &[u8], w: &Window) -> Result<Vec<Entry>, TaskError> {
        let prefix = w.encode();
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .state
                .scan(g, key, self.ids.elements, &prefix, after.as_deref(), SCAN_PAGE, usize::MAX)
                .map_err(|e| self.state_error(e))?;
            all.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    fn has_contents(&self, g: KeyGroup, key: &[u8], w: &Window) -> Result<bool, TaskError> {
        if let Some(t) = &self.table {
            return Ok(t.get_by_key(key, w).is_some());
        }
        let id = match self.function {
            WindowFunction::Process(_) => self.ids.count,
            _ => self.ids.contents,
        };
        Ok(self.state.get(g, key, id, &w.encode()).map_err(|e| self.state_error(e))?.is_some())
    }

    /// Drop a window's contents: the accumulator (built-in and aggregate
    /// functions) or the elements and their count (process functions), and
    /// the count of a count trigger.
    fn clear_contents(&mut self, g: KeyGroup, key: &[u8], w: &Window) -> Result<(), TaskError> {
        let uk = w.encode();
        match self.function {
            WindowFunction::Builtin(_) | WindowFunction::Aggregate(_) => match &mut self.table {
                Some(t) => t.remove(key, w),
                None => self.state.delete(g, key, self.ids.contents, &uk).map_err(|e| self.state_error(e))?,
            },
            WindowFunction::Process(_) => {
                for (ek, _) in self.elements(g, key, w)? {
                    self.state.delete(g, key, self.ids.elements, &ek).map_err(|e| self.state_error(e))?;
                }
                self.state.delete(g, key, self.ids.count, &uk).map_err(|e| self.state_error(e))?;
            }
        }
        if let TriggerKind::Count(_) = self.cfg.trigger.kind {
            self.state
                .delete(g, key, self.ids.trigger_count, &uk)
                .map_err(|e| self.state_error(e))?;
        }
        Ok(())
    }

    fn window_timers(&self, key: &[u8], w: &Window) -> Vec<(TimeDomain, Timer)> {
        let timer = |ts| Timer {
            timestamp: ts,
            key: key.to_vec(),
            namespace: w.encode().to_vec(),
        };
        let mut t = Vec::with_capacity(2);
        let fire = match self.cfg.trigger.kind {
            TriggerKind::Time(d) if !w.is_global() => Some((d, w.max_timestamp())),
            _ => None,
        };
        let cleanup = self.cfg.cleanup_time(w).map(|c| (self.cfg.time, c));
        if let Some((d, ts)) = fire {
            t.push((d, timer(ts)));
        }
        // Without allowed lateness one timer both fires and cleans up.
        if let Some((d, ts)) = cleanup
            && cleanup != fire
        {
            t.push((d, timer(ts)));
        }
        t
    }

    /// True when a time trigger's firing time for `w` has already passed
    /// (`now` for processing time, the watermark for event time) and is not
    /// also the window's cleanup: such a window fires at once when a record
    /// reaches it, and gets no firing timer, as Flink's triggers do
    /// (`onElement` fires, `onMerge` registers only a time still ahead).
    /// So a late window created within the allowed lateness fires once, not
    /// again at the next watermark. A window whose one timer also purges it
    /// (processing-time windows) keeps that timer and fires by it.
    fn fires_on_element(&self, w: &Window, now: i64) -> bool {
        let TriggerKind::Time(d) = self.cfg.trigger.kind else {
            return false;
        };
        if w.is_global() || (self.cfg.time == d && self.cfg.cleanup_time(w) == Some(w.max_timestamp())) {
            return false;
        }
        let passed = match d {
            TimeDomain::EventTime => self.watermark,
            TimeDomain::ProcessingTime => now,
        };
        w.max_timestamp() <= passed
    }

    /// Register a window's timers, but no firing timer whose time has
    /// passed (see [`Self::fires_on_element`]).
    fn register_timers(&mut self, key: &[u8], w: &Window, now: i64) -> Result<(), TaskError> {
        let skip_fire = self.fires_on_element(w, now);
        for (d, t) in self.window_timers(key, w) {
            let cleanup = self.cfg.time == d && self.cfg.cleanup_time(w) == Some(t.timestamp);
            if skip_fire && !cleanup {
                continue;
            }
            self.timers.try_register(d, t).map_err(|e| self.outputs.internal(e))?;
        }
        Ok(())
    }

    /// Purge a window: contents, timers, and its place among the key's
    /// sessions. `fired`: the window's one timer (firing and cleanup at
    /// once) is the one being handled, so no other timer is left, and the
    /// firing cleared the contents if its trigger purges.
    fn purge(&mut self, g: KeyGroup, key: &[u8], w: &Window, fired: bool) -> Result<(), TaskError> {
        if !(fired && self.cfg.trigger.purging) {
            self.clear_contents(g, key, w)?;
        }
        if !fired {
            for (d, t) in self.window_timers(key, w) {
                self.timers.delete(d, &t);
            }
        }
        if self.cfg.assigner.is_merging() {
            let mut list = self.load_sessions(g, key)?;
            list.retain(|s| s != w);
            self.store_sessions(g, key, &list)?;
        }
        Ok(())
    }

    fn load_sessions(&self, g: KeyGroup, key: &[u8]) -> Result<Vec<Window>, TaskError> {
        let v = self.state.get(g, key, self.ids.sessions, b"").map_err(|e| self.state_error(e))?;
        Ok(v.map(|b| b.chunks_exact(16).filter_map(Window::decode).collect())
            .unwrap_or_default())
    }

    fn store_sessions(&mut self, g: KeyGroup, key: &[u8], list: &[Window]) -> Result<(), TaskError> {
        let r = if list.is_empty() {
            self.state.delete(g, key, self.ids.sessions, b"")
        } else {
            let bytes: Vec<u8> = list.iter().flat_map(|w| w.encode()).collect();
            self.state.put(g, key, self.ids.sessions, b"", &bytes)
        };
        r.map_err(|e| self.state_error(e))
    }

    // ---- assigning -----------------------------------------------------

    /// The time a record is windowed by; `None` when it has no timestamp and
    /// the error policy skips it.
    fn time_of(&self, r: &RecordRef<'_>, index: usize, now: i64, input: &[u8]) -> Result<Option<i64>, TaskError> {
        if self.cfg.time == TimeDomain::ProcessingTime {
            return Ok(Some(now));
        }
        if let Some(t) = r.timestamp {
            return Ok(Some(t));
        }
        let e = RecordError {
            index: index as u32,
            message: "the record has no event timestamp: event-time windows need one (set `timestamp_field` on the source, \
                      or assign timestamps in a map before the window)"
                .into(),
        };
        self.outputs.handle_errors(&[e], input)?;
        Ok(None)
    }

    /// Session windows: merge each record's window with the key's sessions
    /// it touches, in record order; returns (record, final session).
    fn assign_sessions<'a>(
        &mut self,
        records: &[RecordRef<'a>],
        times: &[Option<i64>],
        now: i64,
        late: &mut Vec<u32>,
    ) -> Result<Vec<(u32, Window)>, TaskError> {
        let mut sessions: HashMap<&'a [u8], (KeyGroup, Vec<Window>), KeyHasher> = HashMap::default();
        let mut merges: Vec<(&'a [u8], KeyGroup, Vec<Window>, Window)> = Vec::new();
        let mut own = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let (Some(key), Some(t)) = (r.key, times[i]) else { continue };
            self.scratch.clear();
            self.cfg.assigner.assign(t, &mut self.scratch);
            let w = self.scratch[0];
            if !sessions.contains_key(key) {
                let g = KeyGroup::of(key, self.max_parallelism);
                sessions.insert(key, (g, self.load_sessions(g, key)?));
            }
            let Some((g, list)) = sessions.get_mut(key) else { continue };
            let (hit, mut keep): (Vec<Window>, Vec<Window>) = list.iter().partition(|s| s.intersects(&w));
            let cover = hit.iter().fold(w, |c, s| c.cover(s));
            // As Flink: merge first, then test the merged window for
            // lateness, so a record whose own window is behind the watermark
            // still joins a live session it touches.
            if self.cfg.is_late(&cover, self.watermark) {
                late.push(i as u32);
                continue;
            }
            if !(hit.is_empty() || hit.len() == 1 && hit[0] == cover) {
                merges.push((key, *g, hit, cover));
            }
            keep.push(cover);
            *list = keep;
            own.push((i as u32, key, w));
        }
        for (key, g, olds, into) in merges {
            self.merge_windows(g, key, &olds, into, now)?;
        }
        let mut assigned = Vec::with_capacity(own.len());
        for (i, key, w) in own {
            if let Some(s) = sessions.get(key).and_then(|(_, l)| l.iter().find(|s| s.contains(&w))) {
                assigned.push((i, *s));
            }
        }
        for (key, (g, list)) in sessions {
            self.store_sessions(g, key, &list)?;
        }
        Ok(assigned)
    }

    /// Move the contents of `olds` into `into` (sessions that merged).
    fn merge_windows(&mut self, g: KeyGroup, key: &[u8], olds: &[Window], into: Window, now: i64) -> Result<(), TaskError> {
        for w in olds {
            for (d, t) in self.window_timers(key, w) {
                self.timers.delete(d, &t);
            }
        }
        let into_uk = into.encode();
        let mut count = self.get_u64(g, key, self.ids.count, &into_uk)?;
        let mut fires = self.get_u64(g, key, self.ids.trigger_count, &into_uk)?;
        for w in olds {
            count += self.get_u64(g, key, self.ids.count, &w.encode())?;
            fires += self.get_u64(g, key, self.ids.trigger_count, &w.encode())?;
        }
        let mut accs: Vec<Vec<u8>> = Vec::new();
        for w in olds.iter().chain(std::iter::once(&into)) {
            if let Some(a) = self
                .state
                .get(g, key, self.ids.contents, &w.encode())
                .map_err(|e| self.state_error(e))?
            {
                accs.push(a.to_vec());
            }
        }
        let merged = match (&mut self.function, accs.len()) {
            (_, 0) => None,
            (_, 1) => accs.pop(),
            (WindowFunction::Builtin(b), _) => Some(accs.iter().skip(1).fold(accs[0].clone(), |a, x| b.merge(&a, x).to_vec())),
            (WindowFunction::Aggregate(guest), _) => {
                let mut packed = Vec::new();
                for a in &accs {
                    packed.extend_from_slice(&(a.len() as u32).to_le_bytes());
                    packed.extend_from_slice(a);
                }
                Some(guest.aggregate_merge(&packed)?)
            }
            (WindowFunction::Process(_), _) => None,
        };
        // Elements keep their order: `into`'s first, then each old window's.
        let mut seq = self.get_u64(g, key, self.ids.count, &into_uk)?;
        if matches!(self.function, WindowFunction::Process(_)) {
            seq = self.elements(g, key, &into)?.len() as u64;
            for w in olds {
                for (ek, v) in self.elements(g, key, w)? {
                    let mut nk = into_uk.to_vec();
                    nk.extend_from_slice(&seq.to_be_bytes());
                    seq += 1;
                    self.state
                        .put(g, key, self.ids.elements, &nk, &v)
                        .map_err(|e| self.state_error(e))?;
                    self.state.delete(g, key, self.ids.elements, &ek).map_err(|e| self.state_error(e))?;
                }
            }
        }
        for w in olds {
            let uk = w.encode();
            self.state.delete(g, key, self.ids.contents, &uk).map_err(|e| self.state_error(e))?;
            self.state.delete(g, key, self.ids.count, &uk).map_err(|e| self.state_error(e))?;
            self.state
                .delete(g, key, self.ids.trigger_count, &uk)
                .map_err(|e| self.state_error(e))?;
        }
        self.put_u64(g, key, self.ids.trigger_count, &into_uk, fires)?;
        if let Some(m) = merged {
            self.state
                .put(g, key, self.ids.contents, &into_uk, &m)
                .map_err(|e| self.state_error(e))?;
        }
        if matches!(self.function, WindowFunction::Process(_)) {
            count = seq;
        }
        self.put_u64(g, key, self.ids.count, &into_uk, count)?;
        if count > 0 || self.has_contents(g, key, &into)? {
            self.register_timers(key, &into, now)?;
        }
        Ok(())
    }

    // ---- adding --------------------------------------------------------

    /// Add `take` records of each pane (from `cursor`) to the window
    /// contents. Returns, per pane, whether the window had no contents before.
    fn add(&mut self, records: &[RecordRef<'_>], panes: &mut [Pane<'_>], chunks: &[(usize, usize, usize)]) -> Result<Vec<bool>, TaskError> {
        let mut fresh = vec![false; panes.len()];
        let mut errors: Vec<RecordError> = Vec::new();
        // Each pane's key was interned when the batch was grouped: its
        // slot serves the read and the write of the accumulator.
        let id = self.ids.contents;
        match &mut self.function {
            WindowFunction::Builtin(b) => {
                for &(p, from, to) in chunks {
                    let pane = &panes[p];
                    let before = read_acc(self.table.as_ref(), &self.state, id, pane).map_err(|e| self.outputs.internal(e))?;
                    fresh[p] = before.is_none();
                    let mut acc: Option<[u8; 9]> = before.and_then(|b| b.try_into().ok());
                    for &i in &pane.records[from..to] {
                        match b.add(acc.as_ref().map(|a| &a[..]), records[i as usize].value) {
                            Ok(a) => acc = Some(a),
                            Err(message) => errors.push(RecordError { index: i, message }),
                        }
                    }
                    if let Some(a) = acc {
                        write_acc(self.table.as_mut(), &mut self.state, id, pane, &a).map_err(|e| self.outputs.internal(e))?;
                    }
                }
                Ok(())
            }
            WindowFunction::Aggregate(guest) => {
                // Room for every record of the chunks: the batch never grows.
                let bytes: usize = chunks
                    .iter()
                    .flat_map(|&(p, from, to)| &panes[p].records[from..to])
                    .map(|&i| {
                        let r = &records[i as usize];
                        17 + r.key.map_or(0, <[u8]>::len) + r.value.len()
                    })
                    .sum();
                let mut batch = BatchWriter::with_capacity(bytes);
                let mut runs = Vec::with_capacity(chunks.len());
                let mut accs = Vec::with_capacity(chunks.len() * 12);
                let mut origin = Vec::new();
                for &(p, from, to) in chunks {
                    let pane = &panes[p];
                    let before = read_acc(self.table.as_ref(), &self.state, id, pane).map_err(|e| self.outputs.internal(e))?;
                    fresh[p] = before.is_none();
                    match before {
                        Some(a) => {
                            accs.extend_from_slice(&(a.len() as u32).to_le_bytes());
                            accs.extend_from_slice(a);
                        }
                        None => accs.extend_from_slice(&u32::MAX.to_le_bytes()),
                    }
                    for &i in &pane.records[from..to] {
                        batch.push_ref(&records[i as usize]);
                        origin.push(i);
                    }
                    runs.push((to - from) as u32);
                }
                let batch = batch.finish();
                let (packed, errs) = guest.aggregate_add(&batch, &runs, &accs)?;
                errors.extend(errs.into_iter().map(|e| RecordError {
                    index: origin[e.index as usize],
                    message: e.message,
                }));
                let mut rest = &packed[..];
                for &(p, _, _) in chunks {
                    let pane = &panes[p];
                    let acc = rest
                        .split_at_checked(4)
                        .and_then(|(len, tail)| tail.split_at_checked(u32::from_le_bytes(len.try_into().ok()?) as usize));
                    let Some((acc, tail)) = acc else {
                        return Err(self.guest_error(format!(
                            "aggregate `add` returned malformed accumulators: expected {} packed accumulators",
                            chunks.len()
                        )));
                    };
                    rest = tail;
                    write_acc(self.table.as_mut(), &mut self.state, id, pane, acc).map_err(|e| self.outputs.internal(e))?;
                }
                if rest.is_empty() {
                    Ok(())
                } else {
                    Err(self.guest_error(format!(
                        "aggregate `add` returned more than the {} accumulators it was given",
                        chunks.len()
                    )))
                }
            }
            WindowFunction::Process(_) => {
                for &(p, from, to) in chunks {
                    let pane = &panes[p];
                    let uk = pane.window.encode();
                    let mut seq = self.get_u64(pane.group, pane.key, self.ids.count, &uk)?;
                    fresh[p] = seq == 0 && !self.has_contents(pane.group, pane.key, &pane.window)?;
                    for &i in &pane.records[from..to] {
                        let r = &records[i as usize];
                        let mut ek = uk.to_vec();
                        ek.extend_from_slice(&seq.to_be_bytes());
                        seq += 1;
                        let mut v = Vec::with_capacity(9 + r.value.len());
                        match r.timestamp {
                            Some(t) => {
                                v.push(1);
                                v.extend_from_slice(&t.to_le_bytes());
                            }
                            None => v.push(0),
                        }
                        v.extend_from_slice(r.value);
                        self.state
                            .put(pane.group, pane.key, self.ids.elements, &ek, &v)
                            .map_err(|e| self.state_error(e))?;
                    }
                    self.put_u64(pane.group, pane.key, self.ids.count, &uk, seq)?;
                }
                Ok(())
            }
        }?;
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.index);
            let input = Self::rebuild(records);
            self.outputs.handle_errors(&errors, &input)?;
        }
        Ok(fresh)
    }

    // ---- sliced windows --------------------------------------------------

    /// Add a batch to its slices: per key one state read and one write,
    /// whatever the overlap of the windows.
    fn add_sliced(&mut self, s: Slicing, records: &[RecordRef<'_>], times: &[Option<i64>], out: &mut dyn Emit) -> Result<(), TaskError> {
        let mut late = Vec::new();
        let mut runs: Vec<(&[u8], Vec<u32>)> = Vec::new();
        let mut index: HashMap<&[u8], usize, KeyHasher> = HashMap::default();
        for (i, t) in times.iter().enumerate() {
            let Some(t) = *t else { continue };
            if s.last_fire_of(s.slice_of(t)) <= self.watermark {
                late.push(i as u32);
                continue;
            }
            let key = records[i].key.unwrap_or_default();
            let run = *index.entry(key).or_insert_with(|| {
                runs.push((key, Vec::new()));
                runs.len() - 1
            });
            runs[run].1.push(i as u32);
        }
        self.route_late(records, &late, out)?;
        let WindowFunction::Builtin(b) = &self.function else {
            return Err(self.outputs.internal("sliced windows without a built-in aggregate"));
        };
        let mut errors = Vec::new();
        for (key, run) in runs {
            let g = KeyGroup::of(key, self.max_parallelism);
            let mut slices = self.load_slices(g, key)?;
            for i in run {
                let Some(t) = times[i as usize] else { continue };
                let start = s.slice_of(t);
                let (at, acc) = slices.find(start);
                match b.add(acc.as_ref().map(|a| &a[..]), records[i as usize].value) {
                    Ok(a) => {
                        slices.store(at, start, a, acc.is_some());
                        if acc.is_none()
                            && let Some(fire) = s.next_fire_of(start, self.watermark)
                        {
                            self.timers
                                .try_register(TimeDomain::EventTime, slice_timer(key, fire))
                                .map_err(|e| self.outputs.internal(e))?;
                        }
                    }
                    Err(message) => errors.push(RecordError { index: i, message }),
                }
            }
            if !slices.0.is_empty() {
                self.state
                    .put(g, key, self.ids.contents, b"", &slices.encode())
                    .map_err(|e| self.outputs.internal(e))?;
            }
        }
        if !errors.is_empty() {
            errors.sort_by_key(|e| e.index);
            self.outputs.handle_errors(&errors, &Self::rebuild(records))?;
        }
        Ok(())
    }

    fn load_slices(&self, g: KeyGroup, key: &[u8]) -> Result<Slices, TaskError> {
        match self.state.get(g, key, self.ids.contents, b"").map_err(|e| self.state_error(e))? {
            None => Ok(Slices::default()),
            Some(bytes) => Slices::decode(bytes).ok_or_else(|| self.outputs.internal("stored window slices do not decode")),
        }
    }

    /// Fire the sliced window of `key` ending at `at` into `batch`: merge
    /// its slices, drop the slices no later window holds, and set the key's
    /// next timer.
    fn fire_slice(&mut self, key: &[u8], at: i64, batch: &mut BatchWriter) -> Result<(), TaskError> {
        let (Some(s), WindowFunction::Builtin(b)) = (self.slicing, &self.function) else {
            return Err(self.outputs.internal("a sliced window timer without slicing"));
        };
        let g = KeyGroup::of(key, self.max_parallelism);
        let mut slices = self.load_slices(g, key)?;
        let w = s.window_ending_at(at);
        let acc = slices
            .0
            .iter()
            .filter(|(start, _)| (w.start..w.end).contains(start))
            .map(|(_, acc)| *acc)
            .reduce(|x, y| b.merge(&x, &y));
        if let Some(acc) = acc {
            batch.push(Some(key), &b.result(key, &w, &acc), Some(at));
        }
        slices.0.retain(|(start, _)| s.last_fire_of(*start) > at);
        if let Some(next) = slices.0.iter().filter_map(|(start, _)| s.next_fire_of(*start, at)).min() {
            self.timers
                .try_register(TimeDomain::EventTime, slice_timer(key, next))
                .map_err(|e| self.outputs.internal(e))?;
        }
        let stored = if slices.0.is_empty() {
            self.state.delete(g, key, self.ids.contents, b"")
        } else {
            self.state.put(g, key, self.ids.contents, b"", &slices.encode())
        };
        stored.map_err(|e| self.outputs.internal(e))
    }

    fn rebuild(records: &[RecordRef<'_>]) -> Vec<u8> {
        let mut w = BatchWriter::new();
        for r in records {
            w.push_ref(r);
        }
        w.finish()
    }

    // ---- firing --------------------------------------------------------

    /// Compute and emit the results of fired windows; purge them after if
    /// the trigger purges.
    fn fire(&mut self, fired: &[(Vec<u8>, Window)], out: &mut dyn Emit) -> Result<(), TaskError> {
        // One pass: windows without contents (purged) are skipped; the
        // others go into one batch for one guest call.
        let mut batch = BatchWriter::new();
        let mut live = Vec::with_capacity(fired.len());
        let mut windows: Vec<(WindowBounds, u32)> = Vec::with_capacity(fired.len());
        for (key, w) in fired {
            let g = KeyGroup::of(key, self.max_parallelism);
            let ts = Some(w.max_timestamp());
            let count = match &self.function {
                WindowFunction::Builtin(_) | WindowFunction::Aggregate(_) => {
                    let acc = match &self.table {
                        Some(t) => t.get_by_key(key, w),
                        None => self
                            .state
                            .get(g, key, self.ids.contents, &w.encode())
                            .map_err(|e| self.state_error(e))?,
                    };
                    let Some(acc) = acc else { continue };
                    match &self.function {
                        WindowFunction::Builtin(b) => batch.push(Some(key), &b.result(key, w, acc), ts),
                        _ => batch.push(Some(key), acc, ts),
                    }
                    1
                }
                WindowFunction::Process(_) => {
                    let elements = self.elements(g, key, w)?;
                    if elements.is_empty() {
                        continue;
                    }
                    for (_, v) in &elements {
                        let (ts, value) = match v.split_first() {
                            Some((1, rest)) if rest.len() >= 8 => {
                                (Some(i64::from_le_bytes(rest[..8].try_into().unwrap_or_default())), &rest[8..])
                            }
                            Some((_, rest)) => (None, rest),
                            None => (None, &v[..]),
                        };
                        batch.push(Some(key), value, ts);
                    }
                    elements.len() as u32
                }
            };
            windows.push(((w.start, w.end), count));
            live.push((key.as_slice(), g, *w));
        }
        if live.is_empty() {
            return Ok(());
        }
        let len = batch.len();
        let batch = batch.finish();
        match &mut self.function {
            WindowFunction::Builtin(_) => out.emit(RecordBatch { bytes: batch, len })?,
            WindowFunction::Aggregate(guest) => {
                let bounds: Vec<WindowBounds> = windows.iter().map(|w| w.0).collect();
                let result = guest.aggregate_fire(&batch, &bounds)?;
                self.outputs.handle(result, &batch, out)?;
            }
            WindowFunction::Process(guest) => {
                let result = guest.window_process(&batch, &windows)?;
                self.outputs.handle(result, &batch, out)?;
            }
        }
        if self.cfg.trigger.purging {
            for (key, g, w) in live {
                self.clear_contents(g, key, &w)?;
            }
        }
        Ok(())
    }

    /// Fire and purge every window whose timers are due at `time`.
    fn on_timers(&mut self, domain: TimeDomain, time: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        loop {
            let mut fires = Vec::new();
            let mut cleanups = Vec::new();
            let mut sliced = BatchWriter::new();
            let mut popped = 0;
            while popped < FIRE_BATCH {
                let Some(t) = self.timers.pop_due(domain, time) else { break };
                popped += 1;
                if t.namespace.is_empty() && self.slicing.is_some() {
                    // At once: it registers the key's next timer, which
                    // may be due too and must come after it.
                    self.fire_slice(&t.key, t.timestamp, &mut sliced)?;
                    continue;
                }
                let Some(w) = Window::decode(&t.namespace) else { continue };
                let cleanup = self.cfg.time == domain && self.cfg.cleanup_time(&w) == Some(t.timestamp);
                let fire = self.cfg.trigger.kind == TriggerKind::Time(domain) && t.timestamp == w.max_timestamp();
                match (fire, cleanup) {
                    (true, true) => {
                        cleanups.push((t.key.clone(), w, true));
                        fires.push((t.key, w));
                    }
                    (true, false) => fires.push((t.key, w)),
                    (false, true) => cleanups.push((t.key, w, false)),
                    (false, false) => {}
                }
            }
            if popped == 0 {
                return Ok(());
            }
            if !sliced.is_empty() {
                let len = sliced.len();
                out.emit(RecordBatch {
                    bytes: sliced.finish(),
                    len,
                })?;
            }
            self.fire(&fires, out)?;
            for (key, w, fired) in cleanups {
                let g = KeyGroup::of(&key, self.max_parallelism);
                self.purge(g, &key, &w, fired)?;
            }
        }
    }

    fn route_late(&mut self, records: &[RecordRef<'_>], late: &[u32], out: &mut dyn Emit) -> Result<(), TaskError> {
        if late.is_empty() {
            return Ok(());
        }
        let to_side = out.has_late_output();
        let metrics = &self.outputs.metrics;
        if !to_side && metrics.records_late_dropped() == 0 {
            tracing::warn!(
                operator = %self.outputs.name,
                subtask = self.outputs.subtask,
                record = %preview(records[late[0] as usize].value),
                "late records are dropped (counted in `late_dropped`): add an edge with output = \"late\" to keep them"
            );
        }
        metrics.add_late(late.len() as u64, !to_side);
        if to_side {
            let mut w = BatchWriter::new();
            for &i in late {
                w.push_ref(&records[i as usize]);
            }
            let len = w.len();
            out.emit_late(RecordBatch { bytes: w.finish(), len })?;
        }
        Ok(())
    }
}

impl WindowOperator {
    /// Number the panes (key and window) of a batch's assigned records:
    /// the panes in order of first record, and each assigned record's
    /// pane. With the typed table a record costs one hash of its key and
    /// one probe of the table, which also interns the key (the pane is
    /// noted in the key's slot); without it, a map by key and window.
    fn number_panes<'r>(&mut self, records: &[RecordRef<'r>], assigned: &[(u32, Window)]) -> Result<(Vec<Head<'r>>, Vec<u32>), TaskError> {
        let mut heads: Vec<Head<'r>> = Vec::with_capacity(assigned.len().min(4096));
        let mut pane_of: Vec<u32> = Vec::with_capacity(assigned.len());
        let max_parallelism = self.max_parallelism;
        let Some(t) = &mut self.table else {
            let mut index: HashMap<PaneKey<'_>, u32, PaneHasher> = HashMap::with_capacity_and_hasher(records.len(), PaneHasher);
            let mut hashes: Vec<Option<u64>> = vec![None; records.len()];
            for &(i, w) in assigned {
                let key = records[i as usize].key.unwrap_or_default();
                let hash = *hashes[i as usize].get_or_insert_with(|| xxhash_rust::xxh3::xxh3_64(key));
                let p = *index.entry(PaneKey { hash, key, window: w }).or_insert_with(|| {
                    heads.push(Head::new(key, KeyGroup::of_hash(hash, max_parallelism), w, None));
                    (heads.len() - 1) as u32
                });
                heads[p as usize].records += 1;
                pane_of.push(p);
            }
            return Ok((heads, pane_of));
        };
        t.begin_batch();
        // The panes of a key other than its latest one in the batch, by
        // (slot, window start, end): needed only when a key's records
        // reach several windows. Every pane of a key but its latest is in
        // it (a pane stops being the latest only on a miss, which puts it
        // there first).
        let mut more: HashMap<(Slot, i64, i64), u32, KeyHasher> = HashMap::default();
        // A record assigned to several windows comes in a row: its slot is
        // looked up once.
        let mut last: Option<(u32, Slot, KeyGroup)> = None;
        let mut failed = None;
        for &(i, w) in assigned {
            let key = records[i as usize].key.unwrap_or_default();
            let (slot, group) = match last {
                Some((j, s, g)) if j == i => (s, g),
                _ => {
                    let h = xxhash_rust::xxh3::xxh3_64(key);
                    let group = KeyGroup::of_hash(h, max_parallelism);
                    match t.slot(t.hash_xxh3(h), key, group) {
                        Ok(s) => (s, group),
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            };
            last = Some((i, slot, group));
            let latest = t
                .last_pane(slot)
                .filter(|&p| heads.get(p as usize).is_some_and(|h| h.slot == Some(slot)));
            let p = match latest {
                Some(p) if heads[p as usize].window == w => p,
                _ => {
                    if let Some(p) = latest {
                        let h = &heads[p as usize];
                        more.entry((slot, h.window.start, h.window.end)).or_insert(p);
                    }
                    let known = if latest.is_some() {
                        more.get(&(slot, w.start, w.end)).copied()
                    } else {
                        None
                    };
                    let p = known.unwrap_or_else(|| {
                        heads.push(Head::new(key, group, w, Some(slot)));
                        (heads.len() - 1) as u32
                    });
                    t.set_last_pane(slot, p);
                    p
                }
            };
            heads[p as usize].records += 1;
            pane_of.push(p);
        }
        if let Some(e) = failed {
            release_unused(t, &heads);
            return Err(self.outputs.internal(e));
        }
        Ok((heads, pane_of))
    }

    /// Add a batch's records to their panes and fire what their triggers
    /// make due, in rounds (see [`Operator::process`]).
    fn process_panes(
        &mut self,
        records: &[RecordRef<'_>],
        assigned: &[(u32, Window)],
        heads: &[Head<'_>],
        pane_of: &[u32],
        now: i64,
        out: &mut dyn Emit,
    ) -> Result<(), TaskError> {
        let mut starts: Vec<usize> = Vec::with_capacity(heads.len() + 1);
        let mut at = 0usize;
        for h in heads {
            starts.push(at);
            at += h.records as usize;
        }
        starts.push(at);
        let mut order = vec![0u32; assigned.len()];
        let mut fill = starts.clone();
        for (&(i, _), &p) in assigned.iter().zip(pane_of) {
            order[fill[p as usize]] = i;
            fill[p as usize] += 1;
        }
        let mut panes: Vec<Pane<'_>> = heads
            .iter()
            .enumerate()
            .map(|(p, h)| Pane {
                key: h.key,
                group: h.group,
                window: h.window,
                slot: h.slot,
                records: &order[starts[p]..starts[p + 1]],
                count: 0,
            })
            .collect();
        if let TriggerKind::Count(_) = self.cfg.trigger.kind {
            for p in &mut panes {
                p.count = self.get_u64(p.group, p.key, self.ids.trigger_count, &p.window.encode())?;
            }
        }
        // Rounds: each adds, per pane, the records up to its next count
        // firing (all of them for other triggers), then fires what is due.
        let mut cursor = vec![0usize; panes.len()];
        loop {
            let mut chunks = Vec::new();
            for (p, pane) in panes.iter().enumerate() {
                let left = pane.records.len() - cursor[p];
                if left == 0 {
                    continue;
                }
                let take = match self.cfg.trigger.kind {
                    TriggerKind::Count(n) => left.min(n.saturating_sub(pane.count).max(1) as usize),
                    _ => left,
                };
                chunks.push((p, cursor[p], cursor[p] + take));
            }
            if chunks.is_empty() {
                break;
            }
            let fresh = self.add(records, &mut panes, &chunks)?;
            let mut fires = Vec::new();
            for &(p, from, to) in &chunks {
                cursor[p] = to;
                if fresh[p] {
                    let (key, w) = (panes[p].key, panes[p].window);
                    self.register_timers(key, &w, now)?;
                }
                let pane = &mut panes[p];
                match self.cfg.trigger.kind {
                    TriggerKind::Time(_) if self.fires_on_element(&pane.window, now) => {
                        fires.push((pane.key.to_vec(), pane.window));
                    }
                    TriggerKind::Count(n) => {
                        pane.count += (to - from) as u64;
                        if pane.count >= n {
                            pane.count = 0;
                            fires.push((pane.key.to_vec(), pane.window));
                        }
                    }
                    _ => {}
                }
            }
            if let TriggerKind::Count(_) = self.cfg.trigger.kind {
                for &(p, _, _) in &chunks {
                    let pane = &panes[p];
                    let (g, key, uk, c) = (pane.group, pane.key, pane.window.encode(), pane.count);
                    self.put_u64(g, key, self.ids.trigger_count, &uk, c)?;
                }
            }
            self.fire(&fires, out)?;
        }
        Ok(())
    }
}

impl Operator for WindowOperator {
    fn process(&mut self, _input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        let records: Vec<RecordRef<'_>> = batch.record_vec();
        let now = self.clock.now_ms();
        let mut times = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if r.key.is_none() {
                return Err(TaskError::MissingKey {
                    target: self.outputs.name.clone(),
                    value: preview(r.value),
                });
            }
            times.push(self.time_of(r, i, now, &batch.bytes)?);
        }
        if let Some(slicing) = self.slicing {
            return self.add_sliced(slicing, &records, &times, out);
        }
        let mut late = Vec::new();
        let assigned = if self.cfg.assigner.is_merging() {
            self.assign_sessions(&records, &times, now, &mut late)?
        } else {
            let mut assigned = Vec::with_capacity(records.len());
            let mut scratch = std::mem::take(&mut self.scratch);
            for (i, t) in times.iter().enumerate() {
                let Some(t) = *t else { continue };
                scratch.clear();
                self.cfg.assigner.assign(t, &mut scratch);
                let before = assigned.len();
                assigned.extend(
                    scratch
                        .iter()
                        .filter(|w| !self.cfg.is_late(w, self.watermark))
                        .map(|w| (i as u32, *w)),
                );
                if assigned.len() == before {
                    late.push(i as u32);
                }
            }
            self.scratch = scratch;
            assigned
        };
        self.route_late(&records, &late, out)?;

        // Group the assigned records by pane without a vector per pane:
        // number the panes, then lay their records out in one array
        // (a counting sort that keeps arrival order within a pane).
        let (heads, pane_of) = self.number_panes(&records, &assigned)?;
        let result = self.process_panes(&records, &assigned, &heads, &pane_of, now, out);
        if let Some(t) = &mut self.table {
            release_unused(t, &heads);
        }
        result
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.watermark = watermark;
        if let WindowFunction::Aggregate(g) | WindowFunction::Process(g) = &mut self.function {
            g.set_watermark(Some(watermark));
        }
        self.on_timers(TimeDomain::EventTime, watermark, out)?;
        if let Some(t) = &mut self.table {
            t.sweep();
        }
        out.watermark(watermark)
    }

    fn on_processing_time(&mut self, now: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        if self.timers.next(TimeDomain::ProcessingTime).is_some_and(|t| t <= now) {
            self.on_timers(TimeDomain::ProcessingTime, now, out)?;
        }
        Ok(())
    }

    /// At the end of input, processing time "passes" every window too, so no
    /// processing-time window is left unfired.
    fn finish(&mut self, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.on_timers(TimeDomain::ProcessingTime, i64::MAX, out)
    }

    /// As the end of input would (the watermark at its maximum, then
    /// processing time), for the keys in hand; then their state goes.
    fn end_keys(&mut self, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.watermark = i64::MAX;
        if let WindowFunction::Aggregate(g) | WindowFunction::Process(g) = &mut self.function {
            g.set_watermark(Some(i64::MAX));
        }
        self.on_timers(TimeDomain::EventTime, i64::MAX, out)?;
        self.on_timers(TimeDomain::ProcessingTime, i64::MAX, out)?;
        self.watermark = i64::MIN;
        if let WindowFunction::Aggregate(g) | WindowFunction::Process(g) = &mut self.function {
            g.set_watermark(None);
        }
        self.state.clear_all();
        self.timers.clear();
        if let Some(t) = &mut self.table {
            t.clear();
        }
        Ok(())
    }

    fn snapshot(&mut self, _checkpoint: u64, _last: bool) -> Result<Option<OperatorSnapshot>, TaskError> {
        let Some(table) = &self.table else {
            return Ok(Some(keyed_snapshot(&self.state, &self.timers, self.max_parallelism)));
        };
        // The table's entries are written as the generic state would write
        // `window-contents`: one entry per key and window.
        let mut w = SnapshotWriter::new();
        w.keyed_state(&self.state);
        let contents = w.state_index("window-contents");
        for (group, key, window, acc) in table.iter() {
            w.entry(group, contents, key, &window.encode(), acc);
        }
        w.timers(&self.timers, self.max_parallelism);
        Ok(Some(OperatorSnapshot {
            payload: Some(w.finish()),
            sink: None,
        }))
    }

    fn restore(&mut self, snapshots: &[Arc<DecodedSnapshot>]) -> Result<(), TaskError> {
        keyed_restore(snapshots, &mut self.state, &mut self.timers, &self.outputs)?;
        let Some(table) = &mut self.table else {
            return Ok(());
        };
        for (group, key, user_key, acc) in self.state.take_state(self.ids.contents) {
            let Some(w) = Window::decode(&user_key) else {
                return Err(self.outputs.internal(format!(
                    "restoring state: a `window-contents` entry's user key is {} bytes, not a window",
                    user_key.len()
                )));
            };
            let slot = table
                .slot(table.hash(&key), &key, group)
                .map_err(|e| self.outputs.internal(format!("restoring state: {e}")))?;
            table
                .put(slot, &w, &acc)
                .map_err(|e| self.outputs.internal(format!("restoring state: {e}")))?;
        }
        Ok(())
    }
}

/// The timer of a key's next sliced window: the empty namespace.
fn slice_timer(key: &[u8], timestamp: i64) -> Timer {
    Timer {
        timestamp,
        key: key.to_vec(),
        namespace: Vec::new(),
    }
}
