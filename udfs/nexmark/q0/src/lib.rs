//! Nexmark q0, pass-through: every bid, as
//! `{"auction", "bidder", "price", "date_time", "extra"}` (Flink's q0:
//! `SELECT auction, bidder, price, dateTime, extra FROM bid`). It measures
//! what the engine costs with next to no work per event. The row is written
//! with `sluice_guest::json` (the bytes serde_json would write), which
//! escapes the padding string eight bytes at a time.

use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record, json};

struct Q0;

impl FlatMap for Q0 {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q0)
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        if let Some(bid) = Event::bid(record.value) {
            let b = bid?;
            out.emit_with(None, record.timestamp, |row| {
                row.extend_from_slice(b"{\"auction\":");
                json::write_u64(row, b.auction);
                row.extend_from_slice(b",\"bidder\":");
                json::write_u64(row, b.bidder);
                row.extend_from_slice(b",\"price\":");
                json::write_u64(row, b.price);
                row.extend_from_slice(b",\"date_time\":");
                json::write_i64(row, b.date_time);
                row.extend_from_slice(b",\"extra\":");
                json::write_str(row, b.extra);
                row.push(b'}');
            });
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q0);
