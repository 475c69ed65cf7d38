//! Nexmark q5, hot items, second stage: a window aggregate over the bid
//! counts of one sliding window (`{"key": auction, "start", "end", "count"}`
//! rows of the built-in count, keyed by the window's start), keeping only
//! the highest count and the auctions that have it, and emitting those as
//! `{"auction", "num", "window_start", "window_end"}` (Flink's q5 emits
//! `auction, num`; the window makes each row unique).

use serde::{Deserialize, Serialize};
use sluice_guest::{Aggregate, Collector, Error, Json, Record, Window};

#[derive(Deserialize)]
struct Counted<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    count: u64,
}

/// The most-bid auctions of one sliding window so far.
#[derive(Serialize, Deserialize, Default)]
struct Hottest {
    num: u64,
    auctions: Vec<u64>,
    start: i64,
    end: i64,
}

#[derive(Serialize)]
struct Hot {
    auction: u64,
    num: u64,
    window_start: i64,
    window_end: i64,
}

struct Q5;

impl Aggregate for Q5 {
    type Acc = Json<Hottest>;

    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q5)
    }

    fn create(&mut self) -> Json<Hottest> {
        Json(Hottest::default())
    }

    fn add(&mut self, acc: &mut Json<Hottest>, record: &Record<'_>) -> Result<(), Error> {
        let c: Counted<'_> = serde_json::from_slice(record.value)?;
        let auction = c
            .key
            .parse()
            .map_err(|_| Error::new(format!("auction id `{}` is not a number", c.key)))?;
        let h = &mut acc.0;
        if c.count < h.num {
            return Ok(());
        }
        if c.count > h.num || h.auctions.is_empty() {
            *h = Hottest {
                num: c.count,
                auctions: Vec::new(),
                start: c.start,
                end: c.end,
            };
        }
        h.auctions.push(auction);
        Ok(())
    }

    fn merge(&mut self, acc: &mut Json<Hottest>, other: Json<Hottest>) {
        let (a, o) = (&mut acc.0, other.0);
        if o.auctions.is_empty() || o.num < a.num {
            return;
        }
        if o.num > a.num || a.auctions.is_empty() {
            *a = o;
        } else {
            a.auctions.extend(o.auctions);
        }
    }

    fn result(&mut self, key: &[u8], window: Window, acc: Json<Hottest>, out: &mut Collector) -> Result<(), Error> {
        let h = acc.0;
        for auction in h.auctions {
            let hot = Hot {
                auction,
                num: h.num,
                window_start: h.start,
                window_end: h.end,
            };
            out.emit_json(Some(key), &hot, Some(window.max_timestamp()))?;
        }
        Ok(())
    }
}

sluice_guest::export_aggregate!(Q5);
