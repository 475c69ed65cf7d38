//! `nexmark-select`: the events of some kinds from a Nexmark stream, keyed
//! for a keyed operator. A flat-map that keeps the events of the configured
//! kinds (their values unchanged, in the binary form of
//! `sluice_guest::nexmark`), each keyed by the decimal form of one of its
//! ids, or by the constant `all` for a global aggregate:
//!
//! | kind | key |
//! |---|---|
//! | `bid` | `auction`, `bidder`, `constant` |
//! | `auction` | `id`, `seller`, `category`, `constant` |
//! | `person` | `id`, `constant` |
//!
//! Configuration: kind → key, e.g. `{"bid": "auction"}`, or
//! `{"auction": "id", "bid": "auction"}` for auctions and their bids on one
//! stream, in the order they were generated.

use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record, json};

#[derive(Clone, Copy, PartialEq)]
enum KeyBy {
    Id,
    Auction,
    Bidder,
    Seller,
    Category,
    Constant,
}

struct Select {
    /// The key of each kind (person, auction, bid); none: dropped.
    keys: [Option<KeyBy>; 3],
    key: Vec<u8>,
}

impl FlatMap for Select {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            person: Option<String>,
            auction: Option<String>,
            bid: Option<String>,
        }
        let c: Config = sluice_guest::parse_config(config)?;
        let key = |kind: &str, key: Option<String>, allowed: &[(&str, KeyBy)]| -> Result<Option<KeyBy>, Error> {
            let Some(key) = key else { return Ok(None) };
            match allowed.iter().find(|(name, _)| *name == key) {
                Some(&(_, by)) => Ok(Some(by)),
                None => {
                    let names: Vec<&str> = allowed.iter().map(|(n, _)| *n).collect();
                    Err(Error::new(format!(
                        "config: a {kind} has no key `{key}`: one of {}",
                        names.join(", ")
                    )))
                }
            }
        };
        let constant = ("constant", KeyBy::Constant);
        let keys = [
            key("person", c.person, &[("id", KeyBy::Id), constant])?,
            key(
                "auction",
                c.auction,
                &[
                    ("id", KeyBy::Id),
                    ("seller", KeyBy::Seller),
                    ("category", KeyBy::Category),
                    constant,
                ],
            )?,
            key("bid", c.bid, &[("auction", KeyBy::Auction), ("bidder", KeyBy::Bidder), constant])?,
        ];
        if keys.iter().all(Option::is_none) {
            return Err(Error::new(
                "config: name at least one kind to keep, with its key, e.g. {\"bid\": \"auction\"}",
            ));
        }
        Ok(Select { keys, key: Vec::new() })
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let kind = record.value.first().copied().unwrap_or(u8::MAX);
        let Some(key_by) = self.keys.get(kind as usize).copied().flatten() else {
            return Ok(());
        };
        let id = match (Event::decode(record.value)?, key_by) {
            (_, KeyBy::Constant) => None,
            (Event::Bid(b), KeyBy::Auction) => Some(b.auction),
            (Event::Bid(b), KeyBy::Bidder) => Some(b.bidder),
            (Event::Auction(a), KeyBy::Id) => Some(a.id),
            (Event::Auction(a), KeyBy::Seller) => Some(a.seller),
            (Event::Auction(a), KeyBy::Category) => Some(a.category),
            (Event::Person(p), KeyBy::Id) => Some(p.id),
            _ => return Err(Error::new("the event does not have the configured key")),
        };
        self.key.clear();
        match id {
            Some(id) => json::write_u64(&mut self.key, id),
            None => self.key.extend_from_slice(b"all"),
        }
        out.emit(Some(&self.key), record.value, record.timestamp);
        Ok(())
    }
}

sluice_guest::export_flat_map!(Select);
