//! Test guest: a keyed process that exercises every typed state.
//!
//! Each record's value (or its JSON `cmd` field) is a command for the record's key:
//! - `add:<x>`: append `x` to a list state and put `x -> len` in a map state;
//! - `fill:<n>`: append the numbers 0..n to the list (to force many pages);
//! - `dump`: emit `{"key", "list", "map", "count"}` for this key;
//! - `clear`: clear all three states;
//! - anything else is a record error.
//!
//! A value state counts every command seen for the key.

use sluice_guest::{Collector, Error, KeyedProcess, ListState, MapState, Record, ValueState};

struct Probe {
    list: ListState<String>,
    map: MapState<String, u64>,
    count: ValueState<u64>,
}

impl KeyedProcess for Probe {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Probe {
            list: ListState::new("list")?,
            map: MapState::new("map")?,
            count: ValueState::new("count")?,
        })
    }

    fn process(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let raw = record.value_str()?;
        let parsed: Option<serde_json::Value> = raw.starts_with('{').then(|| serde_json::from_str(raw)).transpose()?;
        let cmd = parsed.as_ref().and_then(|v| v.get("cmd")).and_then(|c| c.as_str()).unwrap_or(raw);
        let key = std::str::from_utf8(record.key.unwrap_or_default())?;
        let n = self.count.get()?.unwrap_or(0) + 1;
        if let Some(x) = cmd.strip_prefix("add:") {
            self.list.add(&x.to_string())?;
            self.map.insert(&x.to_string(), &self.list.len()?)?;
        } else if let Some(n) = cmd.strip_prefix("fill:") {
            let n: u64 = n.parse().map_err(|_| Error::new(format!("bad fill count {n:?}")))?;
            for i in 0..n {
                self.list.add(&i.to_string())?;
            }
        } else if cmd == "dump" {
            let list = self.list.get()?;
            let map = self.map.entries()?;
            out.emit_json(
                record.key,
                &serde_json::json!({ "key": key, "list": list, "map": map, "count": n }),
                None,
            )?;
        } else if cmd == "clear" {
            self.list.clear()?;
            self.map.clear()?;
            self.count.clear()?;
            return Ok(());
        } else {
            return Err(Error::new(format!("unknown command {cmd:?}")));
        }
        self.count.set(n)?;
        Ok(())
    }
}

sluice_guest::export_keyed_process!(Probe);
