//! Test guest: a full-window function that emits every element of a fired
//! window, as `{"key": k, "start": s, "end": e, "values": [v, ...]}` (values
//! in the order the host gave them), keyed by the window's key, at the
//! window's last millisecond. An element that is not UTF-8 fails the window.

use sluice_guest::{Collector, Error, Record, Window, WindowProcess};

struct Collect;

#[derive(serde::Serialize)]
struct Fired<'a> {
    key: &'a str,
    start: i64,
    end: i64,
    values: Vec<&'a str>,
}

impl WindowProcess for Collect {
    fn open(_config: &str) -> Result<Self, Error> {
        Ok(Collect)
    }

    fn process(&mut self, key: &[u8], window: Window, elements: &[Record<'_>], out: &mut Collector) -> Result<(), Error> {
        let fired = Fired {
            key: std::str::from_utf8(key)?,
            start: window.start,
            end: window.end,
            values: elements.iter().map(Record::value_str).collect::<Result<_, _>>()?,
        };
        out.emit_json(Some(key), &fired, Some(window.max_timestamp()))
    }
}

sluice_guest::export_window_process!(Collect);
