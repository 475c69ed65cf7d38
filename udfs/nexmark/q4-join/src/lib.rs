//! Nexmark q4, first stage: each auction's final price. A two-input keyed
//! process over auctions (input 1) and bids (input 2), both keyed by auction
//! id (from `nexmark-select`), joining them as Flink's q4 does: the highest
//! price among the bids with `auction.date_time <= bid.date_time <=
//! auction.expires`. When the auction closes (an event-time timer at
//! `expires`) it emits `{"category", "auction", "price"}` keyed by category,
//! if any bid counted, and forgets the auction.
//!
//! A bid may arrive before its auction (the generator bids a little ahead of
//! the newest auction, and parallel sources interleave): it waits in a list
//! state, with a timer at its own time. Its auction cannot arrive later than
//! that (the auction is no later than the bid), so when the timer fires with
//! no auction, the waiting bids are dropped.

use serde::{Deserialize, Serialize};
use sluice_guest::nexmark::Event;
use sluice_guest::{CoKeyedProcess, Collector, Error, ListState, Record, Timer, ValueState, timers};

#[derive(Serialize, Deserialize, Clone, Copy)]
struct Open {
    category: u64,
    date_time: i64,
    expires: i64,
    /// The highest price of a bid that counts so far.
    best: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct Waiting {
    price: u64,
    date_time: i64,
}

#[derive(Serialize)]
struct Final {
    category: u64,
    auction: u64,
    price: u64,
}

struct Q4Join {
    auction: ValueState<Open>,
    waiting: ListState<Waiting>,
}

impl Open {
    fn offer(&mut self, price: u64, date_time: i64) {
        if (self.date_time..=self.expires).contains(&date_time) {
            self.best = Some(self.best.map_or(price, |b| b.max(price)));
        }
    }
}

impl CoKeyedProcess for Q4Join {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q4Join {
            auction: ValueState::new("auction")?,
            waiting: ListState::new("waiting-bids")?,
        })
    }

    fn process1(&mut self, record: Record<'_>, _out: &mut Collector) -> Result<(), Error> {
        let Event::Auction(a) = Event::decode(record.value)? else {
            return Err(Error::new("input 1 of q4-join takes auctions"));
        };
        let mut open = Open {
            category: a.category,
            date_time: a.date_time,
            expires: a.expires,
            best: None,
        };
        self.waiting.for_each(|w| {
            open.offer(w.price, w.date_time);
            Ok(())
        })?;
        self.waiting.clear()?;
        self.auction.set(open)?;
        timers::register_event_time_timer(a.expires)
    }

    fn process2(&mut self, record: Record<'_>, _out: &mut Collector) -> Result<(), Error> {
        let Some(bid) = Event::bid(record.value) else {
            return Err(Error::new("input 2 of q4-join takes bids"));
        };
        let b = bid?;
        match self.auction.get()? {
            Some(mut open) => {
                open.offer(b.price, b.date_time);
                self.auction.set(open)
            }
            None => {
                self.waiting.add(&Waiting {
                    price: b.price,
                    date_time: b.date_time,
                })?;
                timers::register_event_time_timer(b.date_time)
            }
        }
    }

    fn on_timer(&mut self, key: &[u8], timer: Timer, out: &mut Collector) -> Result<(), Error> {
        match self.auction.get()? {
            Some(open) if timer.timestamp >= open.expires => {
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
                self.auction.clear()
            }
            Some(_) => Ok(()),
            None => self.waiting.clear(),
        }
    }
}

sluice_guest::export_co_keyed_process!(Q4Join);
