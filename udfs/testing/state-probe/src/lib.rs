//! Test guest: a keyed process that exercises every typed state.
//!
//! Each record's value (or its JSON `cmd` field) is a command for the record's key:
//! - `add:<x>`: append `x` to a list state and put `x -> len` in a map state;
//! - `fill:<n>`: append the numbers 0..n to the list (to force many pages);
//! - `pad:<n>`: append `n` bytes to a string value state (big values, to
//!   make the host page value reads and the SDK write back early);
//! - `dump`: emit `{"key", "list", "map", "count", "pad"}` for this key (`pad`:
//!   the string's length, its bytes checked);
//! - `clear`: clear all three states;
//! - anything else is a record error.
//!
//! A value state counts every command seen for the key.

use sluice_guest::{Collector, Error, KeyedProcess, ListState, MapState, Record, ValueState};

struct Probe {
    list: ListState<String>,
    map: MapState<String, u64>,
    count: ValueState<u64>,
    pad: ValueState<String>,
}

impl KeyedProcess for Probe {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Probe {
            list: ListState::new("list")?,
            map: MapState::new("map")?,
            count: ValueState::new("count")?,
            pad: ValueState::new("pad")?,
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
        } else if let Some(n) = cmd.strip_prefix("pad:") {
            let n: usize = n.parse().map_err(|_| Error::new(format!("bad pad length {n:?}")))?;
            let mut pad = self.pad.get()?.unwrap_or_default();
            // The key's own letter, so a value served for the wrong key shows.
            let c = key.chars().last().unwrap_or('x');
            pad.extend(std::iter::repeat_n(c, n));
            self.pad.set(pad)?;
        } else if cmd == "dump" {
            let list = self.list.get()?;
            let map = self.map.entries()?;
            let pad = self.pad.get()?.unwrap_or_default();
            let c = key.chars().last().unwrap_or('x');
            if pad.chars().any(|p| p != c) {
                return Err(Error::new(format!("key {key}: the padding holds another key's bytes")));
            }
            out.emit_json(
                record.key,
                &serde_json::json!({ "key": key, "list": list, "map": map, "count": n, "pad": pad.len() }),
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
