//! Nexmark q5, hot items, second stage: a full-window function over the bid
//! counts of one sliding window (`{"key": auction, "start", "end", "count"}`
//! rows of the built-in count, keyed by the window's start), emitting the
//! auctions with the most bids in that window as
//! `{"auction", "num", "window_start", "window_end"}` (Flink's q5 emits
//! `auction, num`; the window makes each row unique).

use sluice_guest::{Collector, Error, Record, Window, WindowProcess};

#[derive(serde::Deserialize)]
struct Counted<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    count: u64,
}

#[derive(serde::Serialize)]
struct Hot {
    auction: u64,
    num: u64,
    window_start: i64,
    window_end: i64,
}

struct Q5;

impl WindowProcess for Q5 {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q5)
    }

    fn process(&mut self, key: &[u8], window: Window, elements: &[Record<'_>], out: &mut Collector) -> Result<(), Error> {
        let counts = elements
            .iter()
            .map(|r| serde_json::from_slice::<Counted<'_>>(r.value))
            .collect::<Result<Vec<_>, _>>()?;
        let max = counts.iter().map(|c| c.count).max().unwrap_or(0);
        for c in counts.iter().filter(|c| c.count == max) {
            let auction = c
                .key
                .parse()
                .map_err(|_| Error::new(format!("auction id `{}` is not a number", c.key)))?;
            let hot = Hot {
                auction,
                num: c.count,
                window_start: c.start,
                window_end: c.end,
            };
            out.emit_json(Some(key), &hot, Some(window.max_timestamp()))?;
        }
        Ok(())
    }
}

sluice_guest::export_window_process!(Q5);
