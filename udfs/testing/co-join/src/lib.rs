//! Test guest: a two-input keyed process joining each left record (input 1)
//! with the latest right value (input 2) of its key.
//!
//! - A left record whose key has a right value emits
//!   `{"key": k, "left": l, "right": r}` at once; otherwise it is buffered
//!   (in a list state) until one arrives.
//! - A right record replaces the key's right value (a value state), then
//!   emits the join of every buffered left record, in arrival order, and
//!   empties the buffer.
//!
//! Emitted records carry the key and the timestamp of the record that
//! triggered them.

use sluice_guest::{CoKeyedProcess, Collector, Error, ListState, Record, ValueState};

struct CoJoin {
    right: ValueState<String>,
    pending: ListState<String>,
}

#[derive(serde::Serialize)]
struct Joined<'a> {
    key: &'a str,
    left: &'a str,
    right: &'a str,
}

fn emit(record: &Record<'_>, left: &str, right: &str, out: &mut Collector) -> Result<(), Error> {
    let key = record.key.unwrap_or_default();
    let joined = Joined {
        key: std::str::from_utf8(key)?,
        left,
        right,
    };
    out.emit_json(Some(key), &joined, record.timestamp)
}

impl CoKeyedProcess for CoJoin {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(CoJoin {
            right: ValueState::new("right")?,
            pending: ListState::new("pending-left")?,
        })
    }

    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let left = record.value_str()?;
        match self.right.get()? {
            Some(right) => emit(&record, left, &right, out),
            None => self.pending.add(&left.to_owned()),
        }
    }

    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let right = record.value_str()?;
        self.right.set(right.to_owned())?;
        self.pending.for_each(|left| emit(&record, &left, right, out))?;
        self.pending.clear()
    }
}

sluice_guest::export_co_keyed_process!(CoJoin);
