//! `window-count`: the windowed word count, as an incremental aggregate.
//!
//! The host assigns each word (the record's key) to windows and keeps one
//! `u64` count per word and window; when a window fires this emits
//! `{"word": w, "start": s, "end": e, "count": n}`, keyed by the word, at the
//! window's last millisecond.

use sluice_guest::{Aggregate, Collector, Error, Record, Window};

struct WindowCount;

#[derive(serde::Serialize)]
struct Counted<'a> {
    word: &'a str,
    start: i64,
    end: i64,
    count: u64,
}

impl Aggregate for WindowCount {
    type Acc = u64;

    fn open(_config: &str) -> Result<Self, Error> {
        Ok(WindowCount)
    }

    fn create(&mut self) -> u64 {
        0
    }

    #[inline]
    fn add(&mut self, acc: &mut u64, _record: &Record<'_>) -> Result<(), Error> {
        *acc += 1;
        Ok(())
    }

    fn merge(&mut self, acc: &mut u64, other: u64) {
        *acc += other;
    }

    fn result(&mut self, key: &[u8], window: Window, count: u64, out: &mut Collector) -> Result<(), Error> {
        let word = std::str::from_utf8(key)?;
        let counted = Counted {
            word,
            start: window.start,
            end: window.end,
            count,
        };
        out.emit_json(Some(key), &counted, Some(window.max_timestamp()))
    }
}

sluice_guest::export_aggregate!(WindowCount);
