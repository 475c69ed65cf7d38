//! Nexmark q4, second stage: the average final price per category. A keyed
//! process over `{"category", "auction", "price"}` (from `nexmark-q4-join`),
//! keyed by category, keeping the sum and count of final prices; every new
//! final price emits `{"category", "avg", "auctions"}`: an updating result,
//! whose last row per category (the most auctions) is Flink's q4 answer.

use serde::{Deserialize, Serialize};
use sluice_guest::{Collector, Error, KeyedProcess, Record, ValueState};

#[derive(Deserialize)]
struct Final {
    category: u64,
    price: u64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Default)]
struct Sum {
    total: u64,
    auctions: u64,
}

#[derive(Serialize)]
struct Average {
    category: u64,
    avg: f64,
    auctions: u64,
}

struct Q4Average {
    sum: ValueState<Sum>,
}

impl KeyedProcess for Q4Average {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Q4Average {
            sum: ValueState::new("sum")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let f: Final = serde_json::from_slice(record.value)?;
        let mut s = self.sum.get()?.unwrap_or_default();
        s.total += f.price;
        s.auctions += 1;
        self.sum.set(s)?;
        let row = Average {
            category: f.category,
            avg: s.total as f64 / s.auctions as f64,
            auctions: s.auctions,
        };
        out.emit_json(record.key, &row, record.timestamp)
    }
}

sluice_guest::export_keyed_process!(Q4Average);
