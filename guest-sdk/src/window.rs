//! Window functions: incremental aggregates ([`Aggregate`]) and full-window
//! functions ([`WindowProcess`]).
//!
//! The host assigns records to windows, keeps what a window needs in its
//! keyed state and decides when a window fires; the guest only computes.
//!
//! An [`Aggregate`] folds records into an accumulator as they arrive, so a
//! window costs one small accumulator whatever its size; the host stores the
//! accumulator as the bytes [`Accumulator::encode`] produces. A
//! [`WindowProcess`] sees every element of a window when it fires, at the cost
//! of the host keeping them all.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::batch::Batch;
use crate::export::{Collector, Record, open_operator, to_output, with_operator};
use crate::time_window::Window;

/// An accumulator the host can store: encoded to bytes after every `add`,
/// decoded before the next one.
///
/// Implemented for `u64`, `i64` and `f64` (8 bytes, little-endian), for
/// `Vec<u8>` (the bytes themselves), and for [`Json`] over any serde type.
pub trait Accumulator: Sized {
    /// Append the encoding of `self` to `out`. Must only append: `out` holds
    /// other accumulators before this one.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decode what [`Accumulator::encode`] wrote. Bytes that do not decode (a
    /// stored accumulator of an older, incompatible version) are an error,
    /// reported against the records or window concerned.
    fn decode(bytes: &[u8]) -> Result<Self, Error>;
}

macro_rules! le_accumulator {
    ($($t:ty),*) => {$(
        impl Accumulator for $t {
            #[inline]
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }

            #[inline]
            fn decode(bytes: &[u8]) -> Result<Self, Error> {
                match <[u8; 8]>::try_from(bytes) {
                    Ok(b) => Ok(<$t>::from_le_bytes(b)),
                    Err(_) => Err(Error::new(format!(
                        "a stored {} accumulator is 8 bytes, not {}",
                        stringify!($t),
                        bytes.len()
                    ))),
                }
            }
        }
    )*};
}

le_accumulator!(u64, i64, f64);

impl Accumulator for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(bytes.to_vec())
    }
}

/// An accumulator of any serde type, stored as JSON.
///
/// ```ignore
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Avg { sum: f64, n: u64 }
/// type Acc = sluice_guest::Json<Avg>;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Json<T>(pub T);

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Serialize + DeserializeOwned> Accumulator for Json<T> {
    /// # Panics
    /// When `T`'s `Serialize` implementation fails (with serde_json, only a
    /// map whose keys are not strings, or a custom implementation's error):
    /// a bug in `T`, not a property of the data.
    fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        if let Err(e) = serde_json::to_writer(&mut *out, &self.0) {
            out.truncate(at);
            panic!("a Json accumulator does not serialize: {e}");
        }
    }

    fn decode(bytes: &[u8]) -> Result<Self, Error> {
        serde_json::from_slice(bytes)
            .map(Json)
            .map_err(|e| Error::new(format!("a stored accumulator does not decode: {e}")))
    }
}

/// An incremental window aggregate, as Flink's `AggregateFunction`: the host
/// keeps one accumulator per key and window, and calls [`Aggregate::result`]
/// when the window fires.
///
/// ```ignore
/// use sluice_guest::{Aggregate, Collector, Error, Record, Window};
/// struct Sum;
/// impl Aggregate for Sum {
///     type Acc = f64;
///     fn open(_: &str) -> Result<Self, Error> { Ok(Sum) }
///     fn create(&mut self) -> f64 { 0.0 }
///     fn add(&mut self, acc: &mut f64, r: &Record<'_>) -> Result<(), Error> {
///         *acc += r.value_str()?.trim().parse::<f64>().map_err(|e| e.to_string())?;
///         Ok(())
///     }
///     fn merge(&mut self, acc: &mut f64, other: f64) { *acc += other }
///     fn result(&mut self, key: &[u8], w: Window, acc: f64, out: &mut Collector) -> Result<(), Error> {
///         out.emit(Some(key), acc.to_string().as_bytes(), Some(w.max_timestamp()));
///         Ok(())
///     }
/// }
/// sluice_guest::export_aggregate!(Sum);
/// ```
pub trait Aggregate: Sized + 'static {
    /// The accumulator: what the host stores per key and window.
    type Acc: Accumulator;
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// A new, empty accumulator (for a window's first record).
    fn create(&mut self) -> Self::Acc;
    /// Fold one record into an accumulator. On an error the record is left
    /// out; what `add` did to `acc` before failing is kept.
    fn add(&mut self, acc: &mut Self::Acc, record: &Record<'_>) -> Result<(), Error>;
    /// Fold `other` into `acc`, when windows merge (sessions).
    fn merge(&mut self, acc: &mut Self::Acc, other: Self::Acc);
    /// The window fired: emit its results (usually one record, with key `key`
    /// and timestamp [`Window::max_timestamp`]).
    fn result(&mut self, key: &[u8], window: Window, acc: Self::Acc, out: &mut Collector) -> Result<(), Error>;
}

/// A function of every element of a window, as Flink's
/// `ProcessWindowFunction`: called once per fired window.
///
/// ```ignore
/// use sluice_guest::{WindowProcess, Collector, Error, Record, Window};
/// struct Longest;
/// impl WindowProcess for Longest {
///     fn open(_: &str) -> Result<Self, Error> { Ok(Longest) }
///     fn process(&mut self, key: &[u8], w: Window, elements: &[Record<'_>], out: &mut Collector) -> Result<(), Error> {
///         if let Some(r) = elements.iter().max_by_key(|r| r.value.len()) {
///             out.emit(Some(key), r.value, Some(w.max_timestamp()));
///         }
///         Ok(())
///     }
/// }
/// sluice_guest::export_window_process!(Longest);
/// ```
pub trait WindowProcess: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per fired window with its key, its bounds and its
    /// elements in arrival order. An error is reported against the window's
    /// first element. (The key is read from the elements: a window fired
    /// with no elements, which the host does not do, would get an empty key,
    /// and its error would only be logged.)
    fn process(&mut self, key: &[u8], window: Window, elements: &[Record<'_>], out: &mut Collector) -> Result<(), Error>;
}

/// The length that stands for "no accumulator yet" in a packed list.
const NO_ACCUMULATOR: u32 = u32::MAX;

/// One entry of a packed accumulator list.
enum Packed<'a> {
    /// No accumulator yet: the guest creates one.
    Missing,
    /// An accumulator's bytes.
    Bytes(&'a [u8]),
}

/// Reads a packed accumulator list (`u32 LE` length, then the bytes; the
/// length `0xffffffff` for none) without copying.
struct PackedReader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> PackedReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        PackedReader { bytes, pos: 0 }
    }

    fn is_done(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// The next entry. After an error the reader is exhausted.
    #[inline]
    fn read(&mut self) -> Result<Packed<'a>, &'static str> {
        let rest = &self.bytes[self.pos.min(self.bytes.len())..];
        let Some((len, rest)) = rest.split_first_chunk::<4>() else {
            let reason = if rest.is_empty() {
                "the packed accumulator list ends early"
            } else {
                "the packed accumulator list has a truncated length"
            };
            self.pos = self.bytes.len();
            return Err(reason);
        };
        let len = u32::from_le_bytes(*len);
        if len == NO_ACCUMULATOR {
            self.pos += 4;
            return Ok(Packed::Missing);
        }
        match rest.get(..len as usize) {
            Some(b) => {
                self.pos += 4 + b.len();
                Ok(Packed::Bytes(b))
            }
            None => {
                self.pos = self.bytes.len();
                Err("a packed accumulator runs past the end of the list")
            }
        }
    }
}

/// Append `acc` to a packed list.
#[inline]
fn write_packed<A: Accumulator>(acc: &A, out: &mut Vec<u8>) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    acc.encode(out);
    // Below 2^31 on wasm32 (no allocation is larger), so never the
    // "no accumulator" length.
    let n = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&n.to_le_bytes());
}

/// Append stored bytes, unchanged, to a packed list.
fn write_packed_bytes(bytes: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// `add` over a batch of runs: the updated packed accumulators and the
/// `(index, message)` of the records that failed.
///
/// Never panics on a malformed call: a record that cannot be added (it does
/// not parse, its run's accumulator does not decode, or it is in no run) is
/// reported as failed. A run whose stored accumulator does not decode keeps
/// it unchanged; one whose accumulator cannot even be found in the list (a
/// malformed list) gets a new, empty accumulator.
fn aggregate_add<T: Aggregate>(op: &mut T, records: &[u8], runs: &[u32], accumulators: &[u8]) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut packed = Vec::with_capacity(accumulators.len() + runs.len() * 16);
    let mut errors: Vec<(u32, String)> = Vec::new();
    let mut reader = PackedReader::new(accumulators);
    let mut iter = Batch::new(records).iter();
    let mut index: usize = 0;
    // The batch ended before the runs did; or broke (already reported).
    let mut missing_records = false;
    let mut malformed = false;
    for (run, &n) in runs.iter().enumerate() {
        let stored = reader.read();
        let mut acc = match stored {
            Ok(Packed::Missing) => Ok(op.create()),
            Ok(Packed::Bytes(b)) => T::Acc::decode(b).map_err(|e| e.to_string()),
            Err(reason) => Err(format!("no accumulator for run {run}: {reason}")),
        };
        for _ in 0..n {
            match iter.next() {
                Some(Ok(r)) => match &mut acc {
                    Ok(a) => {
                        if let Err(e) = op.add(a, &Record::new(r, index)) {
                            errors.push((index as u32, e.to_string()));
                        }
                    }
                    Err(message) => errors.push((index as u32, message.clone())),
                },
                Some(Err(e)) => {
                    malformed = true;
                    errors.push((index as u32, e.to_string()));
                }
                None => {
                    missing_records = true;
                    break;
                }
            }
            index += 1;
        }
        match (acc, stored) {
            (Ok(acc), _) => write_packed(&acc, &mut packed),
            (Err(_), Ok(Packed::Bytes(b))) => write_packed_bytes(b, &mut packed),
            (Err(_), _) => write_packed(&op.create(), &mut packed),
        }
    }
    for r in iter {
        let message = match r {
            Ok(_) => "the record is in none of the runs of the call".to_string(),
            Err(e) => e.to_string(),
        };
        errors.push((index as u32, message));
        index += 1;
    }
    if missing_records && !malformed {
        crate::log::warn("aggregate add: the runs hold more records than the batch");
    }
    if !reader.is_done() {
        crate::log::warn("aggregate add: more accumulators than runs; the extra ones are ignored");
    }
    (packed, errors)
}

/// `merge`: the merged accumulator's bytes.
fn aggregate_merge<T: Aggregate>(op: &mut T, accumulators: &[u8]) -> Result<Vec<u8>, String> {
    let mut reader = PackedReader::new(accumulators);
    let mut merged: Option<T::Acc> = None;
    let mut i = 0;
    while !reader.is_done() {
        let acc = match reader.read().map_err(|reason| format!("accumulator {i}: {reason}"))? {
            Packed::Missing => op.create(),
            Packed::Bytes(b) => T::Acc::decode(b).map_err(|e| format!("accumulator {i}: {e}"))?,
        };
        match &mut merged {
            None => merged = Some(acc),
            Some(m) => op.merge(m, acc),
        }
        i += 1;
    }
    let merged = merged.ok_or("merge called with no accumulator")?;
    let mut out = Vec::new();
    merged.encode(&mut out);
    Ok(out)
}

/// `fire`: one `result` call per fired window.
fn aggregate_fire<T: Aggregate>(op: &mut T, accumulators: &[u8], windows: &[Window]) -> Collector {
    let mut out = Collector::with_capacity(accumulators.len() * 2 + windows.len() * 64);
    let mut seen = 0;
    for (i, r) in Batch::new(accumulators).iter().enumerate() {
        seen = i + 1;
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                out.fail_at(i, e.to_string());
                break;
            }
        };
        let Some(&window) = windows.get(i) else {
            out.fail_at(i, format!("no window for fired accumulator {i} ({} windows given)", windows.len()));
            continue;
        };
        let result = T::Acc::decode(r.value).and_then(|acc| op.result(r.key.unwrap_or_default(), window, acc, &mut out));
        if let Err(e) = result {
            out.fail_at(i, e);
        }
    }
    if windows.len() > seen {
        crate::log::warn("aggregate fire: more windows than accumulators; the extra windows are ignored");
    }
    out
}

/// `process` of a window-process operator: one call per fired window.
fn window_process<T: WindowProcess>(op: &mut T, elements: &[u8], windows: &[(Window, u32)]) -> Collector {
    let mut out = Collector::with_capacity(elements.len() + windows.len() * 64);
    let mut all: Vec<Record<'_>> = Vec::new();
    let mut malformed = false;
    for (i, r) in Batch::new(elements).iter().enumerate() {
        match r {
            Ok(r) => all.push(Record::new(r, i)),
            Err(e) => {
                out.fail_at(i, e.to_string());
                malformed = true;
            }
        }
    }
    let mut start = 0usize;
    for (w, &(window, count)) in windows.iter().enumerate() {
        let end = start.saturating_add(count as usize);
        let Some(els) = all.get(start..end) else {
            // The batch ended (or broke) inside this window: its elements are
            // not all there, so it is not processed.
            if start < all.len() {
                out.fail_at(
                    start,
                    format!("window {w} has {count} elements but the batch holds only {}", all.len() - start),
                );
            } else if !malformed {
                crate::log::warn(&format!("window process: window {w} has no elements in the batch; not processed"));
            }
            start = end;
            continue;
        };
        let key = els.first().and_then(|r| r.key).unwrap_or_default();
        if let Err(e) = op.process(key, window, els, &mut out) {
            if els.is_empty() {
                // No element to report it against.
                crate::log::error(&format!("window process: empty window {w} failed: {e}"));
            } else {
                out.fail_at(start, e);
            }
        }
        start = end;
    }
    if start < all.len() {
        out.fail_at(start, "the element is in none of the windows of the call");
    }
    out
}

/// Export glue for [`Aggregate`].
pub struct AggregateExport<T>(PhantomData<T>);
/// Export glue for [`WindowProcess`].
pub struct WindowProcessExport<T>(PhantomData<T>);

use crate::__private::aggregate::exports::sluice::udf::aggregate_operator as agg_op;
use crate::__private::window_process::exports::sluice::udf::window_process_operator as wp_op;

impl<T: Aggregate> agg_op::Guest for AggregateExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn add(records: Vec<u8>, runs: Vec<u32>, accumulators: Vec<u8>) -> agg_op::Accumulated {
        let (accumulators, errors) = with_operator::<T, _>(|op| aggregate_add(op, &records, &runs, &accumulators));
        agg_op::Accumulated {
            accumulators,
            errors: errors
                .into_iter()
                .map(|(index, message)| agg_op::RecordError { index, message })
                .collect(),
        }
    }

    fn merge(accumulators: Vec<u8>) -> Result<Vec<u8>, String> {
        with_operator::<T, _>(|op| aggregate_merge(op, &accumulators))
    }

    fn fire(accumulators: Vec<u8>, windows: Vec<agg_op::Window>) -> agg_op::Output {
        let windows: Vec<Window> = windows
            .iter()
            .map(|w| Window {
                start: w.start,
                end: w.end,
            })
            .collect();
        let c = with_operator::<T, _>(|op| aggregate_fire(op, &accumulators, &windows));
        to_output!(crate::__private::aggregate::sluice::udf::types, c)
    }
}

impl<T: WindowProcess> wp_op::Guest for WindowProcessExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn process(elements: Vec<u8>, windows: Vec<wp_op::FiredWindow>) -> wp_op::Output {
        let windows: Vec<(Window, u32)> = windows
            .iter()
            .map(|w| {
                (
                    Window {
                        start: w.window.start,
                        end: w.window.end,
                    },
                    w.count,
                )
            })
            .collect();
        let c = with_operator::<T, _>(|op| window_process(op, &elements, &windows));
        to_output!(crate::__private::window_process::sluice::udf::types, c)
    }
}
