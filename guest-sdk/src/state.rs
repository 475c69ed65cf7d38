//! Typed keyed state over the host's `state` interface.
//!
//! State lives in the host, scoped to the key of the record being processed:
//! a guest cannot see another key's state, and an instance can be dropped and
//! re-created without losing any. Values are stored as JSON (so SDKs in other
//! languages read the same bytes); map keys as order-preserving bytes
//! ([`StateKey`]).
//!
//! Declare states in `open`:
//!
//! ```ignore
//! use sluice_guest::{ValueState, ListState, MapState};
//! let total: ValueState<u64> = ValueState::new("total")?;
//! let seen: ListState<String> = ListState::new("seen")?;
//! let by_day: MapState<i64, f64> = MapState::new("by-day")?;
//! ```
//!
//! A [`ValueState`] is cached for the current run of records of one key and
//! written back once when the run ends. Within a batch of records, the values
//! of many runs' keys come in one `get-runs` call and the writes of the
//! batch's runs go back in one `put-runs` call, so a batch of any number of
//! keys costs about two calls across the boundary per value state. A [`ListState`] append costs O(1) host
//! calls whatever the list's length. Lists and maps are read in pages, so a
//! huge state never crosses the boundary at once.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::rc::Rc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::imports::sluice::udf::state as host;
use crate::Error;

/// Why a state call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateError(String);

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StateError {}

impl From<host::StateError> for StateError {
    fn from(e: host::StateError) -> Self {
        StateError(match e {
            host::StateError::NoCurrentKey => "state used outside a keyed run: no key is in scope".into(),
            host::StateError::UnknownState(id) => format!("unknown state id {id}"),
            host::StateError::QuotaExceeded(m) => format!("state quota exceeded: {m}"),
            host::StateError::Invalid(m) => format!("invalid state request: {m}"),
        })
    }
}

const PAGE: u32 = 256;
/// Encoded value-state writes a batch queues (per state) before they are
/// written back early, so a batch of huge values never piles up.
const MAX_QUEUED_BYTES: usize = 1 << 20;

thread_local! {
    static IN_RUN: Cell<bool> = const { Cell::new(false) };
    static RUN_EPOCH: Cell<u64> = const { Cell::new(0) };
    /// The run in scope: its index in the call's batch.
    static RUN: Cell<u32> = const { Cell::new(0) };
    /// The host has not been told yet which run is in scope (a record
    /// carries its key; only calls that need the host's scope enter it).
    static ENTER_PENDING: Cell<bool> = const { Cell::new(false) };
    /// A batch of records is being processed: each run comes once, in
    /// order, so value states are read for many runs in one call and their
    /// writes are written back together when the batch ends.
    static BATCHED: Cell<bool> = const { Cell::new(false) };
    static BATCH_EPOCH: Cell<u64> = const { Cell::new(0) };
    static DIRTY: RefCell<Vec<Rc<dyn Flush>>> = const { RefCell::new(Vec::new()) };
    /// States with writes queued for the end of the batch.
    static QUEUED: RefCell<Vec<Rc<dyn Flush>>> = const { RefCell::new(Vec::new()) };
}

trait Flush {
    /// The run ends: write back (or, in a batch, queue) what it changed.
    fn flush(self: Rc<Self>) -> Result<(), Error>;
    /// Write back the queued writes; a failed write's run and error (the
    /// others are still written). `end`: the batch ends.
    fn write_back(&self, end: bool) -> Vec<(u32, Error)>;
}

/// A batch of records begins; its runs are entered with [`begin_run_at`].
pub(crate) fn begin_batch() {
    BATCHED.with(|b| b.set(true));
    BATCH_EPOCH.with(|e| e.set(e.get() + 1));
}

/// The batch ends: every queued value-state write is written back; the
/// runs and errors of those that failed.
pub(crate) fn end_batch() -> Vec<(u32, Error)> {
    BATCHED.with(|b| b.set(false));
    let queued = QUEUED.with(|q| std::mem::take(&mut *q.borrow_mut()));
    queued.iter().flat_map(|s| s.write_back(true)).collect()
}

/// Run `run` of the batch is in scope; the host is told only when a call
/// needs it ([`enter`]).
pub(crate) fn begin_run_at(run: u32) {
    begin_run();
    RUN.with(|r| r.set(run));
    ENTER_PENDING.with(|p| p.set(true));
}

/// A new run (a new key), already entered on the host, is in scope: cached
/// values are stale.
pub(crate) fn begin_run() {
    RUN_EPOCH.with(|e| e.set(e.get() + 1));
    IN_RUN.with(|r| r.set(true));
    ENTER_PENDING.with(|p| p.set(false));
}

/// Bring the run in scope into the host's scope, if it is not yet: before
/// any call the host answers for "the current key".
pub(crate) fn enter() -> Result<(), Error> {
    if IN_RUN.with(Cell::get) && ENTER_PENDING.with(Cell::get) {
        let run = RUN.with(Cell::get);
        crate::__private::imports::sluice::udf::keyed_context::enter_run(run)
            .map_err(|e| Error::new(format!("the host refused run {run}: {e}")))?;
        ENTER_PENDING.with(|p| p.set(false));
    }
    Ok(())
}

/// The run ends: write back what it changed (in a batch: queue it).
pub(crate) fn end_run() -> Result<(), Error> {
    let dirty = DIRTY.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let mut result = Ok(());
    for s in dirty {
        if let Err(e) = s.flush() {
            result = Err(e);
        }
    }
    IN_RUN.with(|r| r.set(false));
    result
}

fn declare(name: &str) -> Result<u32, Error> {
    Ok(host::declare(name).map_err(StateError::from)?)
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::new(format!("stored state does not decode: {e}")))
}

fn get_raw(id: u32, user_key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
    enter()?;
    Ok(host::get(id, user_key).map_err(StateError::from)?)
}

fn put_raw(id: u32, user_key: &[u8], value: &[u8]) -> Result<(), Error> {
    enter()?;
    Ok(host::put(id, user_key, value).map_err(StateError::from)?)
}

fn delete_raw(id: u32, user_key: &[u8]) -> Result<(), Error> {
    enter()?;
    Ok(host::delete(id, user_key).map_err(StateError::from)?)
}

/// Visit every entry under `prefix`, a page at a time.
fn scan(id: u32, prefix: &[u8], mut each: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), Error>) -> Result<(), Error> {
    enter()?;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = host::list(id, prefix, after.as_deref(), PAGE).map_err(StateError::from)?;
        for e in page.entries {
            each(e.user_key, e.value)?;
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(()),
        }
    }
}

/// A single value per key.
///
/// Reads within a run of records of one key are served from a cache; writes
/// are written back to the host once, when the run ends. While a batch of
/// records is processed, the values of many runs' keys are read in one host
/// call and the batch's writes are written back together when it ends, so a
/// batch costs a couple of host calls, not two per key.
pub struct ValueState<T> {
    inner: Rc<ValueInner<T>>,
}

struct ValueInner<T> {
    id: u32,
    cache: RefCell<Cached<T>>,
    batch: RefCell<Batched>,
}

struct Cached<T> {
    epoch: u64,
    value: Option<T>,
    dirty: bool,
}

/// A value state's reads and writes for the batch being processed.
#[derive(Default)]
struct Batched {
    /// The batch (`BATCH_EPOCH`) `values` belong to.
    epoch: u64,
    /// The run of `values[0]`.
    first: u32,
    /// Values of runs `first..`, as the host returned them.
    values: Vec<Option<Vec<u8>>>,
    /// Writes queued for the batch's end: (run, encoded value or removal).
    writes: Vec<(u32, Option<Vec<u8>>)>,
    queued_bytes: usize,
    /// Listed in `QUEUED`.
    queued: bool,
}

impl<T: Serialize + DeserializeOwned + Clone + 'static> ValueState<T> {
    /// Declare the value state `name`.
    pub fn new(name: &str) -> Result<Self, Error> {
        Ok(ValueState {
            inner: Rc::new(ValueInner {
                id: declare(name)?,
                cache: RefCell::new(Cached {
                    epoch: 0,
                    value: None,
                    dirty: false,
                }),
                batch: RefCell::new(Batched::default()),
            }),
        })
    }

    /// The value for the current key, if set.
    pub fn get(&self) -> Result<Option<T>, Error> {
        if !IN_RUN.with(Cell::get) {
            return get_raw(self.inner.id, b"")?.map(|b| decode(&b)).transpose();
        }
        let epoch = RUN_EPOCH.with(Cell::get);
        let mut c = self.inner.cache.borrow_mut();
        if c.epoch != epoch {
            let raw = if BATCHED.with(Cell::get) {
                self.inner.batched(RUN.with(Cell::get))?
            } else {
                get_raw(self.inner.id, b"")?
            };
            c.value = raw.map(|b| decode(&b)).transpose()?;
            c.epoch = epoch;
            c.dirty = false;
        }
        Ok(c.value.clone())
    }

    /// Set the value for the current key.
    pub fn set(&self, value: T) -> Result<(), Error> {
        self.store(Some(value))
    }

    /// Remove the value for the current key.
    pub fn clear(&self) -> Result<(), Error> {
        self.store(None)
    }

    fn store(&self, value: Option<T>) -> Result<(), Error> {
        if !IN_RUN.with(Cell::get) {
            return match value {
                Some(v) => put_raw(self.inner.id, b"", &encode(&v)?),
                None => delete_raw(self.inner.id, b""),
            };
        }
        let epoch = RUN_EPOCH.with(Cell::get);
        let mut c = self.inner.cache.borrow_mut();
        c.epoch = epoch;
        c.value = value;
        if !c.dirty {
            c.dirty = true;
            let flush: Rc<dyn Flush> = self.inner.clone();
            DIRTY.with(|d| d.borrow_mut().push(flush));
        }
        Ok(())
    }
}

impl<T> ValueInner<T> {
    /// The stored value of run `run` of the batch, from the values the host
    /// gave for many runs at once (asking again past their end).
    fn batched(&self, run: u32) -> Result<Option<Vec<u8>>, Error> {
        let mut b = self.batch.borrow_mut();
        let epoch = BATCH_EPOCH.with(Cell::get);
        if b.epoch != epoch {
            b.epoch = epoch;
            b.values.clear();
            b.first = 0;
        }
        let at = run.checked_sub(b.first).map(|i| i as usize).filter(|&i| i < b.values.len());
        let i = match at {
            Some(i) => i,
            None => {
                b.values = host::get_runs(self.id, run).map_err(StateError::from)?;
                b.first = run;
                if b.values.is_empty() {
                    return Err(Error::new(format!("the host returned no value state for run {run}")));
                }
                0
            }
        };
        // Each run is in scope once per batch: its value is read once.
        Ok(b.values[i].take())
    }
}

impl<T: Serialize + 'static> Flush for ValueInner<T> {
    fn flush(self: Rc<Self>) -> Result<(), Error> {
        let mut c = self.cache.borrow_mut();
        if !c.dirty {
            return Ok(());
        }
        c.dirty = false;
        if !BATCHED.with(Cell::get) {
            return match &c.value {
                Some(v) => put_raw(self.id, b"", &encode(v)?),
                None => delete_raw(self.id, b""),
            };
        }
        let value = c.value.as_ref().map(encode).transpose()?;
        drop(c);
        let full = {
            let mut b = self.batch.borrow_mut();
            b.queued_bytes += value.as_ref().map_or(0, Vec::len) + 8;
            b.writes.push((RUN.with(Cell::get), value));
            if !b.queued {
                b.queued = true;
                let me: Rc<dyn Flush> = self.clone();
                QUEUED.with(|q| q.borrow_mut().push(me));
            }
            b.queued_bytes >= MAX_QUEUED_BYTES
        };
        if full {
            // The run's own write failing is reported against the run.
            if let Some((_, e)) = self.write_back(false).into_iter().next() {
                return Err(e);
            }
        }
        Ok(())
    }

    fn write_back(&self, end: bool) -> Vec<(u32, Error)> {
        let mut writes = {
            let mut b = self.batch.borrow_mut();
            b.queued_bytes = 0;
            b.queued &= !end;
            std::mem::take(&mut b.writes)
        };
        let mut failed = Vec::new();
        // Each round writes at least one entry: bounded by the writes.
        while !writes.is_empty() {
            match host::put_runs(self.id, &writes) {
                Ok(()) => break,
                Err((i, e)) => {
                    let i = (i as usize).min(writes.len() - 1);
                    failed.push((writes[i].0, Error::from(StateError::from(e))));
                    writes.drain(..=i);
                }
            }
        }
        failed
    }
}

/// An append-only list per key (until cleared). Appending costs O(1) host
/// calls, whatever the length.
pub struct ListState<T> {
    id: u32,
    _t: PhantomData<T>,
}

const LIST_LEN: &[u8] = b"";
const LIST_ITEM: u8 = 1;

fn list_item_key(i: u64) -> [u8; 9] {
    let mut k = [LIST_ITEM; 9];
    k[1..].copy_from_slice(&i.to_be_bytes());
    k
}

impl<T: Serialize + DeserializeOwned> ListState<T> {
    /// Declare the list state `name`.
    pub fn new(name: &str) -> Result<Self, Error> {
        Ok(ListState {
            id: declare(name)?,
            _t: PhantomData,
        })
    }

    /// Number of elements for the current key.
    pub fn len(&self) -> Result<u64, Error> {
        Ok(match get_raw(self.id, LIST_LEN)? {
            Some(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().unwrap_or([0; 8])),
            Some(_) => return Err(Error::new("list state length is corrupt")),
            None => 0,
        })
    }

    /// True when the list is empty for the current key.
    pub fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len()? == 0)
    }

    /// Append an element.
    pub fn add(&self, value: &T) -> Result<(), Error> {
        let n = self.len()?;
        put_raw(self.id, &list_item_key(n), &encode(value)?)?;
        put_raw(self.id, LIST_LEN, &(n + 1).to_le_bytes())
    }

    /// Visit every element in insertion order, a page at a time.
    pub fn for_each(&self, mut f: impl FnMut(T) -> Result<(), Error>) -> Result<(), Error> {
        scan(self.id, &[LIST_ITEM], |_, v| f(decode(&v)?))
    }

    /// Every element, in insertion order.
    pub fn get(&self) -> Result<Vec<T>, Error> {
        let mut all = Vec::new();
        self.for_each(|v| {
            all.push(v);
            Ok(())
        })?;
        Ok(all)
    }

    /// Remove every element.
    pub fn clear(&self) -> Result<(), Error> {
        enter()?;
        Ok(host::clear(self.id).map_err(StateError::from)?)
    }
}

/// A key type of a [`MapState`], encoded so that byte order is value order.
pub trait StateKey: Sized {
    /// Encode.
    fn to_key(&self) -> Vec<u8>;
    /// Decode.
    fn from_key(bytes: &[u8]) -> Result<Self, Error>;
}

impl StateKey for String {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, Error> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

impl StateKey for Vec<u8> {
    fn to_key(&self) -> Vec<u8> {
        self.clone()
    }
    fn from_key(bytes: &[u8]) -> Result<Self, Error> {
        Ok(bytes.to_vec())
    }
}

macro_rules! int_key {
    ($($t:ty => $u:ty),*) => {$(
        impl StateKey for $t {
            fn to_key(&self) -> Vec<u8> {
                // Flip the sign bit of signed integers so byte order is numeric order.
                let flipped = (*self as $u) ^ ((<$t>::MIN as $u) & (1 as $u).rotate_right(1));
                flipped.to_be_bytes().to_vec()
            }
            fn from_key(bytes: &[u8]) -> Result<Self, Error> {
                let arr = bytes.try_into().map_err(|_| Error::new("map state key has the wrong length"))?;
                let raw = <$u>::from_be_bytes(arr);
                Ok((raw ^ ((<$t>::MIN as $u) & (1 as $u).rotate_right(1))) as $t)
            }
        }
    )*};
}

int_key!(u32 => u32, u64 => u64, i32 => u32, i64 => u64);

/// A map per key, sorted by [`StateKey`] bytes.
pub struct MapState<K, V> {
    id: u32,
    _kv: PhantomData<(K, V)>,
}

impl<K: StateKey, V: Serialize + DeserializeOwned> MapState<K, V> {
    /// Declare the map state `name`.
    pub fn new(name: &str) -> Result<Self, Error> {
        Ok(MapState {
            id: declare(name)?,
            _kv: PhantomData,
        })
    }

    /// The value under `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, Error> {
        get_raw(self.id, &key.to_key())?.map(|b| decode(&b)).transpose()
    }

    /// Set the value under `key`.
    pub fn insert(&self, key: &K, value: &V) -> Result<(), Error> {
        put_raw(self.id, &key.to_key(), &encode(value)?)
    }

    /// Remove `key`.
    pub fn remove(&self, key: &K) -> Result<(), Error> {
        delete_raw(self.id, &key.to_key())
    }

    /// Visit the entries in key order, a page at a time.
    pub fn for_each(&self, mut f: impl FnMut(K, V) -> Result<(), Error>) -> Result<(), Error> {
        scan(self.id, b"", |k, v| f(K::from_key(&k)?, decode(&v)?))
    }

    /// Every entry in key order.
    pub fn entries(&self) -> Result<Vec<(K, V)>, Error> {
        let mut all = Vec::new();
        self.for_each(|k, v| {
            all.push((k, v));
            Ok(())
        })?;
        Ok(all)
    }

    /// Remove every entry.
    pub fn clear(&self) -> Result<(), Error> {
        enter()?;
        Ok(host::clear(self.id).map_err(StateError::from)?)
    }
}
