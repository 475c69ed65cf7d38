//! Nexmark q1, currency conversion: every bid with its price converted from
//! dollars to euros (Flink's q1: `SELECT auction, bidder, 0.908 * price as
//! price, dateTime, extra FROM bid`), as
//! `{"auction", "bidder", "price", "date_time", "extra"}`.

use serde::Serialize;
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Serialize)]
struct Row<'a> {
    auction: u64,
    bidder: u64,
    price: f64,
    date_time: i64,
    extra: &'a str,
}

struct Q1;

impl FlatMap for Q1 {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q1)
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        if let Some(bid) = Event::bid(record.value) {
            let b = bid?;
            let row = Row {
                auction: b.auction,
                bidder: b.bidder,
                price: 0.908 * b.price as f64,
                date_time: b.date_time,
                extra: b.extra,
            };
            out.emit_json(None, &row, record.timestamp)?;
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q1);
