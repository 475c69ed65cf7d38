//! Nexmark q4, first stage: each auction's final price. A keyed process over
//! auctions and their bids on one stream (from `nexmark-select` with
//! `{"auction": "id", "bid": "auction"}`), keyed by auction id, joining them
//! as Flink's q4 does: the highest price among the bids with
//! `auction.date_time <= bid.date_time <= auction.expires`. When the auction
//! closes (an event-time timer at `expires`) it emits
//! `{"category", "auction", "price"}` keyed by category, if any bid counted.
//!
//! One value state per auction id holds where it is:
//! - **waiting**: bids that came before their auction (the generator bids a
//!   little ahead of the newest auction, and parallel sources interleave),
//!   with a timer at the earliest one's time. The auction cannot arrive
//!   later than a bid's time and still count it (it is no later than the
//!   bid), so when the timer fires the bids up to then are dropped;
//! - **open**: the auction and the best price so far; a bid writes state
//!   only when it raises the price;
//! - **closed**: a tombstone kept `retention_ms` of event time after the
//!   auction closed (configuration `{"retention_ms": 10000}`, the default),
//!   so that bids naming it too late to count are dropped at the cost of one
//!   state read rather than waiting as if their auction were still to come.
//!   The answer is the same either way.

use serde::{Deserialize, Serialize};
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, KeyedProcess, Record, Timer, ValueState, timers};

/// Where one auction id is.
#[derive(Serialize, Deserialize, Clone)]
enum Slot {
    /// Bids (price, time) that came before the auction.
    Waiting(Vec<(u64, i64)>),
    Open(Open),
    /// Closed; forgotten at `.0`.
    Closed(i64),
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct Open {
    category: u64,
    date_time: i64,
    expires: i64,
    /// The highest price of a bid that counts so far.
    best: Option<u64>,
}

impl Open {
    /// Count a bid; true when it raised the best price.
    fn offer(&mut self, price: u64, date_time: i64) -> bool {
        let raises = (self.date_time..=self.expires).contains(&date_time) && self.best.is_none_or(|b| price > b);
        if raises {
            self.best = Some(price);
        }
        raises
    }
}

#[derive(Serialize)]
struct Final {
    category: u64,
    auction: u64,
    price: u64,
}

struct Q4Join {
    retention_ms: i64,
    slot: ValueState<Slot>,
}

impl KeyedProcess for Q4Join {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            #[serde(default = "default_retention")]
            retention_ms: i64,
        }
        fn default_retention() -> i64 {
            10_000
        }
        let c: Config = sluice_guest::parse_config(config)?;
        if c.retention_ms < 0 {
            return Err(Error::new("config: `retention_ms` must not be negative"));
        }
        Ok(Q4Join {
            retention_ms: c.retention_ms,
            slot: ValueState::new("auction")?,
        })
    }

    fn process(&mut self, record: Record<'_>, _out: &mut Collector) -> Result<(), Error> {
        match Event::decode(record.value)? {
            Event::Auction(a) => {
                let mut open = Open {
                    category: a.category,
                    date_time: a.date_time,
                    expires: a.expires,
                    best: None,
                };
                if let Some(Slot::Waiting(bids)) = self.slot.get()? {
                    for (price, at) in bids {
                        open.offer(price, at);
                    }
                }
                self.slot.set(Slot::Open(open))?;
                timers::register_event_time_timer(a.expires)
            }
            Event::Bid(b) => match self.slot.get()? {
                Some(Slot::Open(mut open)) => {
                    if open.offer(b.price, b.date_time) {
                        self.slot.set(Slot::Open(open))?;
                    }
                    Ok(())
                }
                Some(Slot::Closed(_)) => Ok(()),
                Some(Slot::Waiting(mut bids)) => {
                    bids.push((b.price, b.date_time));
                    self.slot.set(Slot::Waiting(bids))
                }
                None => {
                    self.slot.set(Slot::Waiting(vec![(b.price, b.date_time)]))?;
                    timers::register_event_time_timer(b.date_time)
                }
            },
            Event::Person(_) => Err(Error::new("q4-join takes auctions and bids, not people")),
        }
    }

    fn on_timer(&mut self, key: &[u8], timer: Timer, out: &mut Collector) -> Result<(), Error> {
        match self.slot.get()? {
            Some(Slot::Open(open)) if timer.timestamp >= open.expires => {
                if let Some(price) = open.best {
                    let auction = std::str::from_utf8(key)?
                        .parse()
                        .map_err(|_| Error::new("the key is not an auction id"))?;
                    let category = open.category.to_string();
                    let row = Final {
                        category: open.category,
                        auction,
                        price,
                    };
                    out.emit_json(Some(category.as_bytes()), &row, Some(open.expires))?;
                }
                let until = open.expires.saturating_add(self.retention_ms);
                self.slot.set(Slot::Closed(until))?;
                timers::register_event_time_timer(until)
            }
            Some(Slot::Closed(until)) if timer.timestamp >= until => self.slot.clear(),
            Some(Slot::Waiting(mut bids)) => {
                // An auction arriving now would be later than these bids.
                bids.retain(|&(_, at)| at > timer.timestamp);
                match bids.iter().map(|&(_, at)| at).min() {
                    Some(next) => {
                        self.slot.set(Slot::Waiting(bids))?;
                        timers::register_event_time_timer(next)
                    }
                    None => self.slot.clear(),
                }
            }
            _ => Ok(()),
        }
    }
}

sluice_guest::export_keyed_process!(Q4Join);
