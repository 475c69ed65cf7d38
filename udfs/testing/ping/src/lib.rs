//! Test guest: sends every record round an iteration forever, counting its
//! hops, so only the feedback edge's `max_rounds` ends the loop.
//!
//! Input 0: any keyed record; emits `{"kind": "hop", "hops": 0}` with the
//! record's key. Input 1 (the feedback edge): a hop record with `hops = n`;
//! emits `{"kind": "hop", "hops": n + 1}`. Every emitted record goes both to
//! the feedback edge and to the output.

use sluice_guest::{CoKeyedProcess, Collector, Error, Record};

#[derive(serde::Serialize, serde::Deserialize)]
struct Hop {
    kind: String,
    hops: u32,
}

fn hop(record: &Record<'_>, hops: u32, out: &mut Collector) -> Result<(), Error> {
    let h = Hop { kind: "hop".into(), hops };
    out.emit_json(record.key, &h, record.timestamp)
}

struct Ping;

impl CoKeyedProcess for Ping {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Ping)
    }

    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        hop(&record, 0, out)
    }

    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let h: Hop = serde_json::from_slice(record.value)?;
        hop(&record, h.hops + 1, out)
    }
}

sluice_guest::export_co_keyed_process!(Ping);
