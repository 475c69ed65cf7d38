//! Nexmark q8, monitor new users: people who opened an auction in the same
//! 10-second window in which they registered (Flink's q8: `SELECT P.id,
//! P.name, P.starttime` from people and sellers grouped by tumbling 10 s
//! windows, joined on id and window). One flat-map for the steps around the
//! host's built-in count (sellers per window) and window join, chosen by
//! `{"step": …}`:
//!
//! - `persons`: every person, keyed by id, as `{"id", "name"}`;
//! - `result`: a window-join pair `{"left": person, "right": …, "start"}` as
//!   `{"id", "name", "starttime"}`.

use serde::{Deserialize, Serialize};
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Clone, Copy)]
enum Step {
    Persons,
    Result,
}

#[derive(Serialize, Deserialize)]
struct Person<'a> {
    id: u64,
    name: &'a str,
}

#[derive(Deserialize)]
struct Pair<'a> {
    #[serde(borrow)]
    left: Person<'a>,
    start: i64,
}

#[derive(Serialize)]
struct Row<'a> {
    id: u64,
    name: &'a str,
    starttime: i64,
}

struct Q8 {
    step: Step,
}

impl FlatMap for Q8 {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            step: String,
        }
        let c: Config = sluice_guest::parse_config(config)?;
        let step = match c.step.as_str() {
            "persons" => Step::Persons,
            "result" => Step::Result,
            other => return Err(Error::new(format!("`step` is persons or result, not `{other}`"))),
        };
        Ok(Q8 { step })
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        match self.step {
            Step::Persons => {
                if record.value.first() != Some(&0) {
                    return Ok(());
                }
                if let Event::Person(p) = Event::decode(record.value)? {
                    out.emit_json(
                        Some(p.id.to_string().as_bytes()),
                        &Person { id: p.id, name: p.name },
                        record.timestamp,
                    )?;
                }
            }
            Step::Result => {
                let p: Pair<'_> = serde_json::from_slice(record.value)?;
                let row = Row {
                    id: p.left.id,
                    name: p.left.name,
                    starttime: p.start,
                };
                out.emit_json(None, &row, record.timestamp)?;
            }
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q8);
