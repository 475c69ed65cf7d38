//! `count`: the keyed word count of Flink's introduction.
//!
//! Keeps a `ValueState<u64>` per word in host state and emits
//! `{"word": w, "count": n}` on every update, keyed by the word.

use sluice_guest::{Collector, Error, KeyedProcess, Record, ValueState};

struct Count {
    count: ValueState<u64>,
}

#[derive(serde::Serialize)]
struct Update<'a> {
    word: &'a str,
    count: u64,
}

impl KeyedProcess for Count {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Count {
            count: ValueState::new("count")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let key = record.key.unwrap_or_default();
        let word = std::str::from_utf8(key)?;
        let count = self.count.get()?.unwrap_or(0) + 1;
        self.count.set(count)?;
        out.emit_json(Some(key), &Update { word, count }, record.timestamp)
    }
}

sluice_guest::export_keyed_process!(Count);
