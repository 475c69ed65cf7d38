//! The join operator: an inner equi-join of two keyed inputs, computed by the
//! host (no guest), with its records in keyed state so checkpoints, restores
//! and rescaling treat them like any keyed state.
//!
//! - **Regular join** (no `join` table; Flink's unbounded inner join): each
//!   record is stored, then paired with every stored record of the other
//!   input with its key. A pair's timestamp is the later of the two.
//! - **Window join** (`join = { window = "tumbling" | "sliding", … }`; Flink's
//!   `join(…).window(…)`): each record is stored under each event-time window
//!   it falls in; when the watermark passes a window's end, its records of
//!   both inputs with one key are paired, emitted at the window's last
//!   millisecond, and forgotten. Records for windows already passed are late:
//!   counted and dropped.
//!
//! Values must be JSON; a pair is `{"left": l, "right": r}`, plus `"start"`
//! and `"end"` for a window join, keyed by the join key. A value that is not
//! JSON is a failed record (the job's `on_record_error` decides).
//!
//! State per key: `join-left` and `join-right` hold the records (user key:
//! the window, for a window join, then a sequence number; value: a
//! timestamp flag and timestamp, then the record's value), and `join-seq`
//! the next sequence number of each input.

use std::io::Write;
use std::sync::Arc;

use serde::de::IgnoredAny;
use sluice_guest::batch::{BatchWriter, RecordRef};

use super::{Emit, GuestOutputs, Operator, TaskError, keyed_restore, keyed_snapshot, preview};
use crate::checkpoint::{DecodedSnapshot, OperatorSnapshot};
use crate::spec::{JoinSpec, WindowAssignerKind};
use crate::state::{HeapKeyedState, KeyGroup, StateId};
use crate::time::{TimeDomain, Timer, TimerService};
use crate::types::RecordBatch;
use crate::wasm::RecordError;
use crate::window::{Assigner, Window, check_windows_per_record};

/// Largest page read from state at once.
const SCAN_PAGE: usize = 4096;
/// Pairs are emitted once this many bytes of them are buffered, so one hot
/// key never holds a batch's pairs in memory at once.
const EMIT_BYTES: usize = 1 << 20;
/// Most pairs one input batch may produce (a regular join on a hot key is
/// quadratic); past it the job fails with a message naming the limit.
pub const MAX_PAIRS_PER_BATCH: u64 = 10_000_000;

/// A stored record: (user key, value).
type Entry = (Vec<u8>, Vec<u8>);

/// A window join's windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinConfig {
    /// Tumbling or sliding windows.
    pub assigner: Assigner,
}

impl JoinConfig {
    /// Validate a spec; the error says what is wrong.
    pub fn from_spec(spec: &JoinSpec) -> Result<Self, String> {
        let size = match spec.size_ms {
            Some(s) if s > 0 => s,
            Some(s) => return Err(format!("join `size_ms` must be positive, not {s}")),
            None => return Err("a window join needs `size_ms`".into()),
        };
        let assigner = match spec.window {
            WindowAssignerKind::Tumbling => {
                if spec.slide_ms.is_some() {
                    return Err("`slide_ms` applies to window = \"sliding\"".into());
                }
                Assigner::Tumbling {
                    size,
                    offset: spec.offset_ms,
                }
            }
            WindowAssignerKind::Sliding => match spec.slide_ms {
                Some(slide) if slide > 0 && slide <= size => {
                    check_windows_per_record(size, slide).map_err(|e| format!("join {e}"))?;
                    Assigner::Sliding {
                        size,
                        slide,
                        offset: spec.offset_ms,
                    }
                }
                Some(slide) => return Err(format!("join `slide_ms` must be in 1..=size_ms, not {slide}")),
                None => return Err("window = \"sliding\" needs `slide_ms`".into()),
            },
            other => {
                return Err(format!(
                    "a join's window is \"tumbling\" or \"sliding\", not {:?}",
                    format!("{other:?}").to_lowercase()
                ));
            }
        };
        Ok(JoinConfig { assigner })
    }
}

struct Ids {
    sides: [StateId; 2],
    seq: StateId,
}

/// One subtask of a join operator.
pub(crate) struct JoinOperator {
    cfg: Option<JoinConfig>,
    state: HeapKeyedState,
    ids: Ids,
    timers: TimerService,
    watermark: i64,
    max_parallelism: u32,
    outputs: GuestOutputs,
    windows: Vec<Window>,
}

/// A stored record: its timestamp (if any) and value.
fn encode_element(timestamp: Option<i64>, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(9 + value.len());
    v.push(u8::from(timestamp.is_some()));
    v.extend_from_slice(&timestamp.unwrap_or(0).to_le_bytes());
    v.extend_from_slice(value);
    v
}

/// A stored record's timestamp and value. Bytes too short to hold the
/// header (a tampered checkpoint) read as a value without a timestamp.
fn decode_element(bytes: &[u8]) -> (Option<i64>, &[u8]) {
    match bytes.split_first_chunk::<9>() {
        Some((head, value)) => {
            let ts = i64::from_le_bytes([head[1], head[2], head[3], head[4], head[5], head[6], head[7], head[8]]);
            ((head[0] == 1).then_some(ts), value)
        }
        None => (None, bytes),
    }
}

/// `{"left":l,"right":r}` (with the window's bounds for a window join).
fn pair(out: &mut Vec<u8>, left: &[u8], right: &[u8], window: Option<&Window>) {
    out.extend_from_slice(b"{\"left\":");
    out.extend_from_slice(left);
    out.extend_from_slice(b",\"right\":");
    out.extend_from_slice(right);
    if let Some(w) = window {
        // Writing into a Vec cannot fail.
        let _ = write!(out, ",\"start\":{},\"end\":{}", w.start, w.end);
    }
    out.push(b'}');
}

impl JoinOperator {
    pub(crate) fn new(
        cfg: Option<JoinConfig>,
        mut state: HeapKeyedState,
        max_parallelism: u32,
        outputs: GuestOutputs,
    ) -> Result<Self, TaskError> {
        let mut id = |name: &str| state.declare(name).map_err(|e| TaskError::Internal(e.to_string()));
        let ids = Ids {
            sides: [id("join-left")?, id("join-right")?],
            seq: id("join-seq")?,
        };
        let timers = TimerService::with_budget(state.budget());
        Ok(JoinOperator {
            cfg,
            state,
            ids,
            timers,
            watermark: i64::MIN,
            max_parallelism,
            outputs,
            windows: Vec::new(),
        })
    }

    /// Every stored record of `side` for `key` under `prefix`, in order
    /// (all of one key's window: the state budget bounds it).
    fn stored(&self, g: KeyGroup, key: &[u8], side: usize, prefix: &[u8]) -> Result<Vec<Entry>, TaskError> {
        let mut all = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .state
                .scan(g, key, self.ids.sides[side], prefix, after.as_deref(), SCAN_PAGE, usize::MAX)
                .map_err(|e| self.outputs.internal(e))?;
            all.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(all),
            }
        }
    }

    /// Store a record of `side` under `prefix` with the key's next sequence number.
    fn store(&mut self, g: KeyGroup, key: &[u8], side: usize, prefix: &[u8], element: &[u8]) -> Result<(), TaskError> {
        let seq_key = [side as u8];
        let seq = self
            .state
            .get(g, key, self.ids.seq, &seq_key)
            .map_err(|e| self.outputs.internal(e))?
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        let mut uk = Vec::with_capacity(prefix.len() + 8);
        uk.extend_from_slice(prefix);
        uk.extend_from_slice(&seq.to_be_bytes());
        self.state
            .put(g, key, self.ids.sides[side], &uk, element)
            .and_then(|()| self.state.put(g, key, self.ids.seq, &seq_key, &(seq + 1).to_le_bytes()))
            .map_err(|e| self.outputs.internal(e))
    }

    /// A regular join: store the record, pair it with the other side's,
    /// page by page, emitting pairs as they pile up.
    fn regular(&mut self, side: usize, r: &RecordRef<'_>, key: &[u8], pairs: &mut Pairs, out: &mut dyn Emit) -> Result<(), TaskError> {
        let g = KeyGroup::of(key, self.max_parallelism);
        self.store(g, key, side, &[], &encode_element(r.timestamp, r.value))?;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .state
                .scan(g, key, self.ids.sides[1 - side], &[], after.as_deref(), SCAN_PAGE, usize::MAX)
                .map_err(|e| self.outputs.internal(e))?;
            for (_, other) in &page.entries {
                let (ots, ovalue) = decode_element(other);
                let ts = match (r.timestamp, ots) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                let (left, right) = if side == 0 { (r.value, ovalue) } else { (ovalue, r.value) };
                pairs.push(&self.outputs, key, ts, |buf| pair(buf, left, right, None), out)?;
            }
            match page.next {
                Some(n) => after = Some(n),
                None => return Ok(()),
            }
        }
    }

    /// A window join: store the record under each of its windows still open.
    /// Returns false when every window has passed (the record is late).
    fn windowed(&mut self, assigner: Assigner, side: usize, r: &RecordRef<'_>, key: &[u8]) -> Result<bool, TaskError> {
        let Some(t) = r.timestamp else {
            return Ok(false);
        };
        let mut windows = std::mem::take(&mut self.windows);
        windows.clear();
        assigner.assign(t, &mut windows);
        let g = KeyGroup::of(key, self.max_parallelism);
        let element = encode_element(r.timestamp, r.value);
        let mut stored = false;
        let watermark = self.watermark;
        for win in windows.iter().filter(|win| win.max_timestamp() > watermark) {
            self.store(g, key, side, &win.encode(), &element)?;
            self.timers
                .try_register(
                    TimeDomain::EventTime,
                    Timer {
                        timestamp: win.max_timestamp(),
                        key: key.to_vec(),
                        namespace: win.encode().to_vec(),
                    },
                )
                .map_err(|e| self.outputs.internal(e))?;
            stored = true;
        }
        self.windows = windows;
        Ok(stored)
    }

    /// Pair and forget the windows due at `watermark`.
    fn fire(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        let mut pairs = Pairs::default();
        while let Some(t) = self.timers.pop_due(TimeDomain::EventTime, watermark) {
            let Some(win) = Window::decode(&t.namespace) else { continue };
            let g = KeyGroup::of(&t.key, self.max_parallelism);
            let prefix = win.encode();
            let left = self.stored(g, &t.key, 0, &prefix)?;
            let right = self.stored(g, &t.key, 1, &prefix)?;
            for (_, l) in &left {
                for (_, r) in &right {
                    let (lv, rv) = (decode_element(l).1, decode_element(r).1);
                    pairs.push(
                        &self.outputs,
                        &t.key,
                        Some(win.max_timestamp()),
                        |buf| pair(buf, lv, rv, Some(&win)),
                        out,
                    )?;
                }
            }
            for (side, entries) in [(0, &left), (1, &right)] {
                for (uk, _) in entries {
                    self.state
                        .delete(g, &t.key, self.ids.sides[side], uk)
                        .map_err(|e| self.outputs.internal(e))?;
                }
            }
            // A firing is not one input batch: the cap counts per window.
            pairs.count = 0;
        }
        pairs.flush(out)
    }
}

/// Pairs being built, emitted every [`EMIT_BYTES`], counted against
/// [`MAX_PAIRS_PER_BATCH`].
#[derive(Default)]
struct Pairs {
    w: BatchWriter,
    bytes: usize,
    count: u64,
}

impl Pairs {
    fn push(
        &mut self,
        outputs: &GuestOutputs,
        key: &[u8],
        ts: Option<i64>,
        write: impl FnOnce(&mut Vec<u8>),
        out: &mut dyn Emit,
    ) -> Result<(), TaskError> {
        self.count += 1;
        if self.count > MAX_PAIRS_PER_BATCH {
            return Err(outputs.internal(format!(
                "the join produced more than {MAX_PAIRS_PER_BATCH} pairs for one input batch (the pairs-per-batch limit): \
                 a key this hot needs a window join or a pre-aggregation"
            )));
        }
        let before = self.w.byte_len();
        self.w.push_with(Some(key), ts, write);
        self.bytes += self.w.byte_len() - before;
        if self.bytes >= EMIT_BYTES {
            self.flush(out)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut dyn Emit) -> Result<(), TaskError> {
        if self.w.is_empty() {
            return Ok(());
        }
        let len = self.w.len();
        self.bytes = 0;
        out.emit(RecordBatch {
            bytes: std::mem::take(&mut self.w).finish(),
            len,
        })
    }
}

impl Operator for JoinOperator {
    fn process(&mut self, input: usize, batch: RecordBatch, out: &mut dyn Emit) -> Result<(), TaskError> {
        let side = input.min(1);
        let mut pairs = Pairs::default();
        let mut errors = Vec::new();
        let mut late = 0u64;
        for (i, r) in batch.records().enumerate() {
            let Some(key) = r.key else {
                return Err(TaskError::MissingKey {
                    target: self.outputs.name.clone(),
                    value: preview(r.value),
                });
            };
            if serde_json::from_slice::<IgnoredAny>(r.value).is_err() {
                errors.push(RecordError {
                    index: i as u32,
                    message: "a join's input values must be JSON".into(),
                });
                continue;
            }
            match self.cfg {
                None => self.regular(side, &r, key, &mut pairs, out)?,
                Some(cfg) => {
                    if !self.windowed(cfg.assigner, side, &r, key)? {
                        late += 1;
                    }
                }
            }
        }
        if late > 0 {
            self.outputs.metrics.add_late(late, true);
        }
        self.outputs.handle_errors(&errors, &batch.bytes)?;
        pairs.flush(out)
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.watermark = watermark;
        self.fire(watermark, out)?;
        out.watermark(watermark)
    }

    fn end_keys(&mut self, out: &mut dyn Emit) -> Result<(), TaskError> {
        self.watermark = i64::MAX;
        self.fire(i64::MAX, out)?;
        self.watermark = i64::MIN;
        self.state.clear_all();
        self.timers.clear();
        Ok(())
    }

    fn snapshot(&mut self, _checkpoint: u64, _last: bool) -> Result<Option<OperatorSnapshot>, TaskError> {
        Ok(Some(keyed_snapshot(&self.state, &self.timers, self.max_parallelism)))
    }

    fn restore(&mut self, snapshots: &[Arc<DecodedSnapshot>]) -> Result<(), TaskError> {
        keyed_restore(snapshots, &mut self.state, &mut self.timers, &self.outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_specs_are_checked() {
        let spec = |window, size_ms, slide_ms| JoinSpec {
            window,
            size_ms,
            slide_ms,
            offset_ms: 0,
        };
        assert!(JoinConfig::from_spec(&spec(WindowAssignerKind::Tumbling, Some(10), None)).is_ok());
        assert!(JoinConfig::from_spec(&spec(WindowAssignerKind::Sliding, Some(10), Some(2))).is_ok());
        let err = |s| JoinConfig::from_spec(&s).unwrap_err();
        assert!(err(spec(WindowAssignerKind::Tumbling, None, None)).contains("size_ms"));
        assert!(err(spec(WindowAssignerKind::Sliding, Some(10), None)).contains("slide_ms"));
        assert!(err(spec(WindowAssignerKind::Sliding, Some(10), Some(20))).contains("slide_ms"));
        assert!(err(spec(WindowAssignerKind::Session, Some(10), None)).contains("\"session\""));
        // Each record in at most MAX_WINDOWS_PER_RECORD windows.
        assert!(JoinConfig::from_spec(&spec(WindowAssignerKind::Sliding, Some(10_000), Some(1))).is_ok());
        assert!(err(spec(WindowAssignerKind::Sliding, Some(10_001), Some(1))).contains("at most 10000"));
        assert!(err(spec(WindowAssignerKind::Sliding, Some(1_000_000_000_000_000), Some(1))).contains("windows"));
    }

    #[test]
    fn a_pair_is_json_with_the_window() {
        let mut out = Vec::new();
        pair(&mut out, br#"{"a":1}"#, b"2", Some(&Window { start: 0, end: 10 }));
        assert_eq!(out, br#"{"left":{"a":1},"right":2,"start":0,"end":10}"#);
        let e = encode_element(Some(-5), b"v");
        assert_eq!(decode_element(&e), (Some(-5), &b"v"[..]));
        assert_eq!(decode_element(&encode_element(None, b"")), (None, &b""[..]));
        assert_eq!(decode_element(b"\x01ab"), (None, &b"\x01ab"[..]), "short bytes never panic");
    }
}
