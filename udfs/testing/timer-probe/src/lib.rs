//! Test guest: a keyed process that registers and deletes timers.
//!
//! Config: `{"domain": "event-time" | "processing-time", "delay": ms}`
//! (defaults: event time, 1000 ms).
//!
//! - A record whose value is `cancel` deletes the timer registered last for
//!   its key (if any).
//! - A record whose value (or JSON `cmd` field) is `many:<n>` registers `n`
//!   timers, one per millisecond after `delay` (a timer flood in one call).
//! - Any other record registers a timer at `delay` after its timestamp (event
//!   time; a record without a timestamp is a record error) or after the
//!   host's processing time, and remembers it (in a value state) as the last
//!   one of its key.
//!
//! Records emit nothing. A timer that fires emits
//! `{"key": k, "timer": t, "domain": d, "watermark": w | null}`, keyed by the
//! key, at the timer's timestamp.

use sluice_guest::{Collector, Error, KeyedProcess, Record, TimeDomain, Timer, ValueState, time, timers};

#[derive(serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    domain: TimeDomain,
    delay: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: TimeDomain::EventTime,
            delay: 1000,
        }
    }
}

struct Probe {
    config: Config,
    /// The timestamp of the timer registered last for the key.
    last: ValueState<i64>,
}

#[derive(serde::Serialize)]
struct Fired<'a> {
    key: &'a str,
    timer: i64,
    domain: TimeDomain,
    watermark: Option<i64>,
}

impl KeyedProcess for Probe {
    fn open(config: &str) -> Result<Self, Error> {
        Ok(Probe {
            config: serde_json::from_str(config)?,
            last: ValueState::new("last-timer")?,
        })
    }

    fn process(&mut self, record: Record<'_>, _out: &mut Collector) -> Result<(), Error> {
        let domain = self.config.domain;
        if record.value == b"cancel" {
            if let Some(ts) = self.last.get()? {
                timers::delete(domain, ts)?;
                self.last.clear()?;
            }
            return Ok(());
        }
        let cmd: Option<serde_json::Value> = record.value.starts_with(b"{").then(|| serde_json::from_slice(record.value)).transpose()?;
        let many = match cmd.as_ref().and_then(|c| c.get("cmd")).and_then(|c| c.as_str()) {
            Some(c) => c.strip_prefix("many:").map(str::to_owned),
            None => std::str::from_utf8(record.value).ok().and_then(|v| v.strip_prefix("many:")).map(str::to_owned),
        };
        if let Some(n) = many {
            let n: i64 = n.parse().map_err(|_| Error::new("bad timer count"))?;
            let base = time::processing_time().saturating_add(self.config.delay);
            for i in 0..n {
                timers::register(domain, base.saturating_add(i))?;
            }
            return Ok(());
        }
        let base = match domain {
            TimeDomain::EventTime => record
                .timestamp
                .ok_or_else(|| Error::new("an event-time timer needs a record with a timestamp"))?,
            TimeDomain::ProcessingTime => time::processing_time(),
        };
        let at = base
            .checked_add(self.config.delay)
            .ok_or_else(|| Error::new(format!("timer {base} + {} overflows", self.config.delay)))?;
        timers::register(domain, at)?;
        self.last.set(at)
    }

    fn on_timer(&mut self, key: &[u8], timer: Timer, out: &mut Collector) -> Result<(), Error> {
        if timer.domain == self.config.domain && self.last.get()? == Some(timer.timestamp) {
            self.last.clear()?;
        }
        let fired = Fired {
            key: std::str::from_utf8(key)?,
            timer: timer.timestamp,
            domain: timer.domain,
            watermark: time::watermark(),
        };
        out.emit_json(Some(key), &fired, Some(timer.timestamp))
    }
}

sluice_guest::export_keyed_process!(Probe);
