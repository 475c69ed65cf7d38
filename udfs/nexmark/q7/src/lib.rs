//! Nexmark q7, highest bid: an incremental window aggregate over the bids of
//! one tumbling window (all under one key, from `nexmark-bids` with
//! `{"key": "constant"}`), keeping the highest price and the bids that
//! offered it; when the window fires it emits each of them as
//! `{"auction", "price", "bidder", "date_time", "extra"}` (Flink's q7
//! columns).

use serde::{Deserialize, Serialize};
use sluice_guest::nexmark::Event;
use sluice_guest::{Aggregate, Collector, Error, Json, Record, Window};

#[derive(Serialize, Deserialize, Clone)]
struct Row {
    auction: u64,
    price: u64,
    bidder: u64,
    date_time: i64,
    extra: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Highest {
    price: u64,
    bids: Vec<Row>,
}

struct Q7;

impl Aggregate for Q7 {
    type Acc = Json<Highest>;

    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q7)
    }

    fn create(&mut self) -> Json<Highest> {
        Json(Highest::default())
    }

    fn add(&mut self, acc: &mut Json<Highest>, record: &Record<'_>) -> Result<(), Error> {
        let Some(bid) = Event::bid(record.value) else {
            return Err(Error::new("q7 takes bids only"));
        };
        let b = bid?;
        let h = &mut acc.0;
        if b.price < h.price {
            return Ok(());
        }
        if b.price > h.price || h.bids.is_empty() {
            h.price = b.price;
            h.bids.clear();
        }
        h.bids.push(Row {
            auction: b.auction,
            price: b.price,
            bidder: b.bidder,
            date_time: b.date_time,
            extra: b.extra.to_owned(),
        });
        Ok(())
    }

    fn merge(&mut self, acc: &mut Json<Highest>, other: Json<Highest>) {
        let (a, o) = (&mut acc.0, other.0);
        if o.bids.is_empty() || o.price < a.price {
            return;
        }
        if o.price > a.price || a.bids.is_empty() {
            *a = o;
        } else {
            a.bids.extend(o.bids);
        }
    }

    fn result(&mut self, key: &[u8], window: Window, acc: Json<Highest>, out: &mut Collector) -> Result<(), Error> {
        for row in &acc.0.bids {
            out.emit_json(Some(key), row, Some(window.max_timestamp()))?;
        }
        Ok(())
    }
}

sluice_guest::export_aggregate!(Q7);
