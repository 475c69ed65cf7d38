//! Nexmark q0, pass-through: every bid, as
//! `{"auction", "bidder", "price", "date_time", "extra"}` (Flink's q0:
//! `SELECT auction, bidder, price, dateTime, extra FROM bid`). It measures
//! what the engine costs with next to no work per event.

use serde::Serialize;
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Serialize)]
struct Row<'a> {
    auction: u64,
    bidder: u64,
    price: u64,
    date_time: i64,
    extra: &'a str,
}

struct Q0;

impl FlatMap for Q0 {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q0)
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        if let Some(bid) = Event::bid(record.value) {
            let b = bid?;
            let row = Row {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price,
                date_time: b.date_time,
                extra: b.extra,
            };
            out.emit_json(None, &row, record.timestamp)?;
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q0);
