//! Test guest: sends every record round an iteration forever, counting its
//! hops, so only the feedback edge's `max_rounds` ends the loop.
//!
//! Input 0: any keyed record; emits `{"kind": "hop", "hops": 0}` with the
//! record's key and registers an event-time timer at the end of time.
//! Input 1 (the feedback edge): a hop record with `hops = n`; emits
//! `{"kind": "hop", "hops": n + 1}` and counts it in the key's state. Every
//! emitted record goes both to the feedback edge and to the output. The
//! timer, which fires only once the loop is empty, emits
//! `{"kind": "end", "hops": c}` with `c` the key's count of hop records
//! received (and this too goes to the feedback edge, after the loop has
//! ended: it must be dropped).

use sluice_guest::{CoKeyedProcess, Collector, Error, Record, Timer, ValueState, timers};

#[derive(serde::Serialize, serde::Deserialize)]
struct Hop {
    kind: String,
    hops: u32,
}

fn emit(key: Option<&[u8]>, kind: &str, hops: u32, ts: Option<i64>, out: &mut Collector) -> Result<(), Error> {
    let h = Hop { kind: kind.into(), hops };
    out.emit_json(key, &h, ts)
}

struct Ping {
    received: ValueState<u32>,
}

impl CoKeyedProcess for Ping {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Ping {
            received: ValueState::new("received")?,
        })
    }

    fn process1(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        timers::register_event_time_timer(i64::MAX)?;
        emit(record.key, "hop", 0, record.timestamp, out)
    }

    fn process2(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let h: Hop = serde_json::from_slice(record.value)?;
        self.received.set(self.received.get()?.unwrap_or(0) + 1)?;
        emit(record.key, "hop", h.hops + 1, record.timestamp, out)
    }

    fn on_timer(&mut self, key: &[u8], _timer: Timer, out: &mut Collector) -> Result<(), Error> {
        let n = self.received.get()?.unwrap_or(0);
        emit(Some(key), "end", n, None, out)
    }
}

sluice_guest::export_co_keyed_process!(Ping);
