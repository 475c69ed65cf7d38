//! Nexmark q3, local item suggestion: who sells in category 10 in Oregon,
//! Idaho or California (Flink's q3: `SELECT P.name, P.city, P.state, A.id
//! FROM auction A JOIN person P ON A.seller = P.id WHERE A.category = 10 AND
//! P.state IN ('OR', 'ID', 'CA')`; this generator writes states in lower
//! case). One flat-map for the three steps around the host's join, chosen by
//! `{"step": …}`:
//!
//! - `persons`: people of those states, keyed by id, as `{"name", "city", "state"}`;
//! - `auctions`: auctions of category 10, keyed by seller, as `{"id"}`;
//! - `result`: a join pair `{"left": person, "right": auction}` as
//!   `{"name", "city", "state", "id"}`.

use serde::{Deserialize, Serialize};
use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Clone, Copy)]
enum Step {
    Persons,
    Auctions,
    Result,
}

#[derive(Serialize, Deserialize)]
struct Person<'a> {
    name: &'a str,
    city: &'a str,
    state: &'a str,
}

#[derive(Serialize, Deserialize)]
struct Auction {
    id: u64,
}

#[derive(Deserialize)]
struct Pair<'a> {
    #[serde(borrow)]
    left: Person<'a>,
    right: Auction,
}

#[derive(Serialize)]
struct Row<'a> {
    name: &'a str,
    city: &'a str,
    state: &'a str,
    id: u64,
}

struct Q3 {
    step: Step,
}

impl FlatMap for Q3 {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            step: String,
        }
        let c: Config = sluice_guest::parse_config(config)?;
        let step = match c.step.as_str() {
            "persons" => Step::Persons,
            "auctions" => Step::Auctions,
            "result" => Step::Result,
            other => return Err(Error::new(format!("`step` is persons, auctions or result, not `{other}`"))),
        };
        Ok(Q3 { step })
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        match self.step {
            Step::Persons => {
                if record.value.first() != Some(&0) {
                    return Ok(());
                }
                if let Event::Person(p) = Event::decode(record.value)?
                    && matches!(p.state, "or" | "id" | "ca")
                {
                    let person = Person {
                        name: p.name,
                        city: p.city,
                        state: p.state,
                    };
                    out.emit_json(Some(p.id.to_string().as_bytes()), &person, record.timestamp)?;
                }
            }
            Step::Auctions => {
                if record.value.first() != Some(&1) {
                    return Ok(());
                }
                if let Event::Auction(a) = Event::decode(record.value)?
                    && a.category == 10
                {
                    out.emit_json(Some(a.seller.to_string().as_bytes()), &Auction { id: a.id }, record.timestamp)?;
                }
            }
            Step::Result => {
                let p: Pair<'_> = serde_json::from_slice(record.value)?;
                let row = Row {
                    name: p.left.name,
                    city: p.left.city,
                    state: p.left.state,
                    id: p.right.id,
                };
                out.emit_json(None, &row, record.timestamp)?;
            }
        }
        Ok(())
    }
}

sluice_guest::export_flat_map!(Q3);
