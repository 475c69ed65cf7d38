//! Nexmark q2, selection: the bids on every 123rd auction, as
//! `{"auction", "price"}` (Flink's q2: `SELECT auction, price FROM bid WHERE
//! MOD(auction, 123) = 0`).

use serde::Serialize;
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Serialize)]
struct Row {
    auction: u64,
    price: u64,
}

struct Q2;

impl FlatMap for Q2 {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q2)
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        if let Some(bid) = Event::bid(record.value) {
            let b = bid?;
            if b.auction % 123 == 0 {
                out.emit_json(
                    None,
                    &Row {
                        auction: b.auction,
                        price: b.price,
                    },
                    record.timestamp,
                )?;
            }
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q2);
