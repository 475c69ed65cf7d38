//! Operator traits and the glue that exports them through the WIT worlds.
//!
//! The host calls a guest once per batch. The glue decodes the packed batch
//! without copying, calls the user's trait method once per record, and packs
//! what it emits into one output buffer. For keyed operators it keeps track
//! of the run of records (the key) in scope, telling the host only when a
//! call needs the host's scope (list and map states, timers), and flushes the
//! write-back cache of value states at the end of each run. Value states are
//! read for many runs in one host call and the batch's writes are written
//! back together when it ends, so a batch costs a couple of state calls, not
//! two per key. Timers that fire are handled run by run, with their key's
//! state in scope.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::marker::PhantomData;

use crate::Error;
use crate::batch::{Batch, BatchWriter, RecordRef};
use crate::timers::{TimeDomain, Timer};

/// One input record.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The key, if any. Every record of a keyed operator has one.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// Event time in milliseconds since the Unix epoch, if assigned.
    pub timestamp: Option<i64>,
    /// Position in the input batch of this call: the index of its `record-error`.
    pub(crate) index: u32,
}

impl<'a> Record<'a> {
    pub(crate) fn new(r: RecordRef<'a>, index: usize) -> Self {
        Record {
            key: r.key,
            value: r.value,
            timestamp: r.timestamp,
            index: index as u32,
        }
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&'a str, Error> {
        Ok(std::str::from_utf8(self.value)?)
    }

    /// An output equal to this record (key, value and timestamp).
    pub fn to_output(&self) -> Output<'a> {
        Output {
            key: self.key.map(Cow::Borrowed),
            value: Cow::Borrowed(self.value),
            timestamp: self.timestamp,
        }
    }

    /// An output with this record's key and timestamp and a new value.
    pub fn with_value(&self, value: impl Into<Cow<'a, [u8]>>) -> Output<'a> {
        Output {
            key: self.key.map(Cow::Borrowed),
            value: value.into(),
            timestamp: self.timestamp,
        }
    }
}

/// A record a [`Map`] produces; borrows from the input where it can.
#[derive(Debug, Clone)]
pub struct Output<'a> {
    /// The key, if any.
    pub key: Option<Cow<'a, [u8]>>,
    /// The value.
    pub value: Cow<'a, [u8]>,
    /// Event time, if any.
    pub timestamp: Option<i64>,
}

impl<'a> Output<'a> {
    /// An output with only a value.
    pub fn value(value: impl Into<Cow<'a, [u8]>>) -> Self {
        Output {
            key: None,
            value: value.into(),
            timestamp: None,
        }
    }

    /// Set the key.
    pub fn key(mut self, key: impl Into<Cow<'a, [u8]>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Set the timestamp.
    pub fn timestamp(mut self, timestamp: Option<i64>) -> Self {
        self.timestamp = timestamp;
        self
    }
}

/// Collects the records an operator emits for one batch.
#[derive(Debug, Default)]
pub struct Collector {
    records: BatchWriter,
    errors: Vec<(u32, String)>,
}

impl Collector {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Collector {
            records: BatchWriter::with_capacity(bytes),
            errors: Vec::new(),
        }
    }

    /// Report the input at `index` of this call (a record, an element, a
    /// timer) as failed.
    pub(crate) fn fail_at(&mut self, index: usize, error: impl Into<Error>) {
        self.errors.push((index as u32, error.into().to_string()));
    }

    /// The packed records and the errors, for the generated `output` record.
    pub(crate) fn into_parts(self) -> (Vec<u8>, Vec<(u32, String)>) {
        (self.records.finish(), self.errors)
    }

    /// Emit a record.
    #[inline]
    pub fn emit(&mut self, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>) {
        self.records.push(key, value, timestamp);
    }

    /// Emit a record whose value `write` appends to the buffer it is given
    /// (no intermediate allocation).
    #[inline]
    pub fn emit_with(&mut self, key: Option<&[u8]>, timestamp: Option<i64>, write: impl FnOnce(&mut Vec<u8>)) {
        self.records.push_with(key, timestamp, write);
    }

    /// Emit a record whose value is `value` serialized as JSON.
    pub fn emit_json<T: serde::Serialize + ?Sized>(&mut self, key: Option<&[u8]>, value: &T, timestamp: Option<i64>) -> Result<(), Error> {
        let mut failed = None;
        self.records.push_with(key, timestamp, |buf| {
            if let Err(e) = serde_json::to_writer(&mut *buf, value) {
                failed = Some(e);
            }
        });
        failed.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Report `record` as failed: the host routes it by the job's error policy.
    pub fn fail(&mut self, record: &Record<'_>, error: impl Into<Error>) {
        self.errors.push((record.index, error.into().to_string()));
    }

    fn emit_output(&mut self, o: &Output<'_>) {
        self.records.push(o.key.as_deref(), &o.value, o.timestamp);
    }
}

/// A one-to-one transformation.
///
/// ```ignore
/// struct Upper;
/// impl sluice_guest::Map for Upper {
///     fn open(_: &str) -> Result<Self, sluice_guest::Error> { Ok(Upper) }
///     fn map<'a>(&mut self, r: sluice_guest::Record<'a>) -> Result<sluice_guest::Output<'a>, sluice_guest::Error> {
///         Ok(r.with_value(r.value.to_ascii_uppercase()))
///     }
/// }
/// sluice_guest::export_map!(Upper);
/// ```
pub trait Map: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record.
    fn map<'a>(&mut self, record: Record<'a>) -> Result<Output<'a>, Error>;
}

/// Keeps the records for which [`Filter::filter`] returns true.
pub trait Filter: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record.
    fn filter(&mut self, record: &Record<'_>) -> Result<bool, Error>;
}

/// Emits any number of records per input record.
pub trait FlatMap: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record.
    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error>;
}

/// A keyed operator: each call sees one record, with the state of its key in
/// scope (read and written through [`crate::state`]).
///
/// ```ignore
/// use sluice_guest::{KeyedProcess, Record, Collector, Error, ValueState};
/// struct Count { n: ValueState<u64> }
/// impl KeyedProcess for Count {
///     fn open(_: &str) -> Result<Self, Error> { Ok(Count { n: ValueState::new("n")? }) }
///     fn process(&mut self, r: Record<'_>, out: &mut Collector) -> Result<(), Error> {
///         let n = self.n.get()?.unwrap_or(0) + 1;
///         self.n.set(n)?;
///         out.emit(r.key, n.to_string().as_bytes(), r.timestamp);
///         Ok(())
///     }
/// }
/// sluice_guest::export_keyed_process!(Count);
/// ```
pub trait KeyedProcess: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    /// States are declared here.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record, in arrival order within each key.
    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error>;
    /// Called when a timer registered through [`crate::timers`] fires, with
    /// the state of its key (`key`) in scope. Timers fire in timestamp order;
    /// a fired timer is already removed and may be registered again. Does
    /// nothing unless overridden.
    fn on_timer(&mut self, key: &[u8], timer: Timer, out: &mut Collector) -> Result<(), Error> {
        let _ = (key, timer, out);
        Ok(())
    }
}

/// A keyed operator with two inputs (two keyed streams connected, as Flink's
/// `KeyedCoProcessFunction`): records of both inputs with the same key share
/// that key's state and timers.
///
/// ```ignore
/// use sluice_guest::{CoKeyedProcess, Record, Collector, Error, ValueState};
/// struct Enrich { name: ValueState<String> }
/// impl CoKeyedProcess for Enrich {
///     fn open(_: &str) -> Result<Self, Error> { Ok(Enrich { name: ValueState::new("name")? }) }
///     fn process1(&mut self, r: Record<'_>, out: &mut Collector) -> Result<(), Error> {
///         let name = self.name.get()?.unwrap_or_default();
///         out.emit(r.key, format!("{name}: {}", r.value_str()?).as_bytes(), r.timestamp);
///         Ok(())
///     }
///     fn process2(&mut self, r: Record<'_>, _: &mut Collector) -> Result<(), Error> {
///         self.name.set(r.value_str()?.to_owned())
///     }
/// }
/// sluice_guest::export_co_keyed_process!(Enrich);
/// ```
pub trait CoKeyedProcess: Sized + 'static {
    /// Called once per instance with the operator's JSON configuration.
    /// States are declared here.
    fn open(config: &str) -> Result<Self, Error>;
    /// Called once per record of the first input, in arrival order within
    /// each key.
    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error>;
    /// Called once per record of the second input, in arrival order within
    /// each key.
    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error>;
    /// As [`KeyedProcess::on_timer`]. Does nothing unless overridden.
    fn on_timer(&mut self, key: &[u8], timer: Timer, out: &mut Collector) -> Result<(), Error> {
        let _ = (key, timer, out);
        Ok(())
    }
}

thread_local! {
    /// The operator instance created by `open` (a component is single-threaded).
    static OPERATOR: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

pub(crate) fn open_operator<T: 'static>(make: impl FnOnce() -> Result<T, Error>) -> Result<(), String> {
    crate::log::install_panic_hook();
    let op = make().map_err(|e| e.to_string())?;
    OPERATOR.with(|o| *o.borrow_mut() = Some(Box::new(op)));
    Ok(())
}

pub(crate) fn with_operator<T: 'static, R>(f: impl FnOnce(&mut T) -> R) -> R {
    OPERATOR.with(|o| {
        let mut slot = o.borrow_mut();
        let op = slot
            .as_mut()
            .and_then(|b| b.downcast_mut::<T>())
            .expect("the host called process before a successful open");
        f(op)
    })
}

pub(crate) fn for_each_record<'a>(batch: &'a [u8], mut f: impl FnMut(Record<'a>)) {
    for (i, r) in Batch::new(batch).iter().enumerate() {
        match r {
            Ok(r) => f(Record::new(r, i)),
            Err(e) => panic!("the host sent a malformed batch: {e}"),
        }
    }
}

/// Runs a stateless operator over one batch.
fn stateless(batch: Vec<u8>, mut each: impl FnMut(Record<'_>, &mut Collector) -> Result<(), Error>) -> Collector {
    let mut out = Collector::with_capacity(batch.len() + batch.len() / 4);
    for_each_record(&batch, |r| {
        if let Err(e) = each(r, &mut out) {
            out.fail(&r, e);
        }
    });
    out
}

/// Runs a keyed operator over one batch of runs, calling `each` once per
/// record with the record's key in scope.
fn keyed<T: 'static>(batch: Vec<u8>, mut each: impl FnMut(&mut T, Record<'_>, &mut Collector) -> Result<(), Error>) -> Collector {
    let mut out = Collector::with_capacity(batch.len() * 2);
    // The last record of the run in scope, and of every run before it: a
    // failed write-back of a run's state is reported against it.
    let mut last: Option<Record<'_>> = None;
    let mut last_of_run: Vec<u32> = Vec::new();
    crate::state::begin_batch();
    with_operator::<T, _>(|op| {
        for_each_record(&batch, |r| {
            let key = r.key.expect("the host sent a keyed operator a record without a key");
            if last.map(|l| l.key) != Some(Some(key)) {
                if let Some(prev) = last {
                    end_run(prev.index as usize, &mut out);
                    last_of_run.push(prev.index);
                }
                // The host is told of the run only when a call needs it.
                crate::state::begin_run_at(last_of_run.len() as u32);
            }
            last = Some(r);
            if let Err(e) = each(op, r, &mut out) {
                out.fail(&r, e);
            }
        });
    });
    if let Some(prev) = last {
        end_run(prev.index as usize, &mut out);
        last_of_run.push(prev.index);
    }
    for (run, e) in crate::state::end_batch() {
        match last_of_run.get(run as usize) {
            Some(&i) => out.fail_at(i as usize, e),
            None => out.fail_at(0, e),
        }
    }
    out
}

/// Reports every record of a batch sent to an input the operator does not
/// have.
fn reject_input(batch: Vec<u8>, input: u32) -> Collector {
    let mut out = Collector::default();
    for_each_record(&batch, |r| {
        out.fail(
            &r,
            format!("this operator has two inputs (0 and 1); the host sent a batch to input {input}"),
        );
    });
    out
}

/// Handles fired timers, in order, each with its key (run) in scope.
/// Consecutive timers of one run share one scope, as the records of a run do:
/// their value states are written back once, after the last of them.
fn keyed_timers<T: 'static>(
    timers: Vec<keyed_op::FiredTimer>,
    mut each: impl FnMut(&mut T, &[u8], Timer, &mut Collector) -> Result<(), Error>,
) -> Collector {
    use crate::__private::imports::sluice::udf::keyed_context;
    let mut out = Collector::with_capacity(timers.len() * 64);
    with_operator::<T, _>(|op| {
        let mut i = 0;
        while i < timers.len() {
            let run = timers[i].run;
            let end = timers[i..].iter().position(|t| t.run != run).map_or(timers.len(), |n| i + n);
            match keyed_context::enter_run(run) {
                Ok(key) => {
                    crate::state::begin_run();
                    for (j, t) in timers.iter().enumerate().take(end).skip(i) {
                        let timer = Timer {
                            domain: TimeDomain::from_host(t.domain),
                            timestamp: t.timestamp,
                        };
                        if let Err(e) = each(op, &key, timer, &mut out) {
                            out.fail_at(j, e);
                        }
                    }
                    end_run(end - 1, &mut out);
                }
                Err(e) => {
                    for j in i..end {
                        out.fail_at(j, format!("the host refused run {run} of timer {j}: {e}"));
                    }
                }
            }
            i = end;
        }
    });
    out
}

/// Ends the run in scope, reporting a failed write-back against the input at
/// `last` (the run's last record or timer).
fn end_run(last: usize, out: &mut Collector) {
    if let Err(e) = crate::state::end_run() {
        out.fail_at(last, e);
    }
}

macro_rules! to_output {
    ($types:path, $c:expr) => {{
        use $types as types;
        let (records, errors) = $c.into_parts();
        types::Output {
            records,
            errors: errors
                .into_iter()
                .map(|(index, message)| types::RecordError { index, message })
                .collect(),
        }
    }};
}
pub(crate) use to_output;

/// Export glue for [`Map`].
pub struct MapExport<T>(PhantomData<T>);
/// Export glue for [`Filter`].
pub struct FilterExport<T>(PhantomData<T>);
/// Export glue for [`FlatMap`].
pub struct FlatMapExport<T>(PhantomData<T>);
/// Export glue for [`KeyedProcess`].
pub struct KeyedExport<T>(PhantomData<T>);
/// Export glue for [`CoKeyedProcess`].
pub struct CoKeyedExport<T>(PhantomData<T>);

use crate::__private::keyed::exports::sluice::udf::keyed_operator as keyed_op;
use crate::__private::stateless::exports::sluice::udf::stateless_operator as stateless_op;

impl<T: Map> stateless_op::Guest for MapExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn process(records: Vec<u8>) -> stateless_op::Output {
        let c = with_operator::<T, _>(|op| {
            stateless(records, |r, out| {
                out.emit_output(&op.map(r)?);
                Ok(())
            })
        });
        to_output!(crate::__private::stateless::sluice::udf::types, c)
    }
}

impl<T: Filter> stateless_op::Guest for FilterExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn process(records: Vec<u8>) -> stateless_op::Output {
        let c = with_operator::<T, _>(|op| {
            stateless(records, |r, out| {
                if op.filter(&r)? {
                    out.emit(r.key, r.value, r.timestamp);
                }
                Ok(())
            })
        });
        to_output!(crate::__private::stateless::sluice::udf::types, c)
    }
}

impl<T: FlatMap> stateless_op::Guest for FlatMapExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn process(records: Vec<u8>) -> stateless_op::Output {
        let c = with_operator::<T, _>(|op| stateless(records, |r, out| op.flat_map(r, out)));
        to_output!(crate::__private::stateless::sluice::udf::types, c)
    }
}

impl<T: KeyedProcess> keyed_op::Guest for KeyedExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    /// A single-input operator treats every batch as its one input's.
    fn process_runs(_input: u32, records: Vec<u8>) -> keyed_op::Output {
        let c = keyed::<T>(records, |op, r, out| op.process(r, out));
        to_output!(crate::__private::keyed::sluice::udf::types, c)
    }

    fn on_timers(timers: Vec<keyed_op::FiredTimer>) -> keyed_op::Output {
        let c = keyed_timers::<T>(timers, |op, key, timer, out| op.on_timer(key, timer, out));
        to_output!(crate::__private::keyed::sluice::udf::types, c)
    }
}

impl<T: CoKeyedProcess> keyed_op::Guest for CoKeyedExport<T> {
    fn open(config: String) -> Result<(), String> {
        open_operator(|| T::open(&config))
    }

    fn process_runs(input: u32, records: Vec<u8>) -> keyed_op::Output {
        let c = match input {
            0 => keyed::<T>(records, |op, r, out| op.process1(r, out)),
            1 => keyed::<T>(records, |op, r, out| op.process2(r, out)),
            n => reject_input(records, n),
        };
        to_output!(crate::__private::keyed::sluice::udf::types, c)
    }

    fn on_timers(timers: Vec<keyed_op::FiredTimer>) -> keyed_op::Output {
        let c = keyed_timers::<T>(timers, |op, key, timer, out| op.on_timer(key, timer, out));
        to_output!(crate::__private::keyed::sluice::udf::types, c)
    }
}
