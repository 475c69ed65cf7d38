//! `nexmark-select`: the events of one kind from a Nexmark stream, keyed for
//! a keyed operator. A flat-map that keeps the events of `kind` (their values
//! unchanged, in the binary form of `sluice_guest::nexmark`), keyed by the
//! decimal form of one of their ids, or by the constant `all` for a global
//! aggregate:
//!
//! | `kind` | `key` |
//! |---|---|
//! | `bid` | `auction` (default), `bidder`, `constant` |
//! | `auction` | `id` (default), `seller`, `category`, `constant` |
//! | `person` | `id` (default), `constant` |
//!
//! Configuration: `{"kind": "bid", "key": "auction"}`.

use std::io::Write;

use sluice_guest::nexmark::Event;
use sluice_guest::{Collector, Error, FlatMap, Record};

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Person,
    Auction,
    Bid,
}

#[derive(Clone, Copy)]
enum KeyBy {
    Id,
    Auction,
    Bidder,
    Seller,
    Category,
    Constant,
}

struct Select {
    kind: Kind,
    key_by: KeyBy,
    key: Vec<u8>,
}

impl FlatMap for Select {
    fn open(config: &str) -> Result<Self, Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Config {
            kind: String,
            key: Option<String>,
        }
        let c: Config = serde_json::from_str(config).map_err(|e| Error::new(format!("config: {e}")))?;
        let (kind, key_by) = match (c.kind.as_str(), c.key.as_deref()) {
            ("bid", None | Some("auction")) => (Kind::Bid, KeyBy::Auction),
            ("bid", Some("bidder")) => (Kind::Bid, KeyBy::Bidder),
            ("auction", None | Some("id")) => (Kind::Auction, KeyBy::Id),
            ("auction", Some("seller")) => (Kind::Auction, KeyBy::Seller),
            ("auction", Some("category")) => (Kind::Auction, KeyBy::Category),
            ("person", None | Some("id")) => (Kind::Person, KeyBy::Id),
            ("bid" | "auction" | "person", Some("constant")) => {
                let kind = match c.kind.as_str() {
                    "bid" => Kind::Bid,
                    "auction" => Kind::Auction,
                    _ => Kind::Person,
                };
                (kind, KeyBy::Constant)
            }
            (k @ ("bid" | "auction" | "person"), Some(other)) => {
                return Err(Error::new(format!("a {k} has no key `{other}`")));
            }
            (other, _) => return Err(Error::new(format!("`kind` is bid, auction or person, not `{other}`"))),
        };
        Ok(Select {
            kind,
            key_by,
            key: Vec::new(),
        })
    }

    fn flat_map(&mut self, record: Record<'_>, out: &mut Collector) -> Result<(), Error> {
        let wanted = match record.value.first() {
            Some(0) => Kind::Person,
            Some(1) => Kind::Auction,
            _ => Kind::Bid,
        };
        if wanted != self.kind {
            return Ok(());
        }
        let id = match (Event::decode(record.value)?, self.key_by) {
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
            // Writing into a Vec cannot fail.
            Some(id) => {
                let _ = write!(self.key, "{id}");
            }
            None => self.key.extend_from_slice(b"all"),
        }
        out.emit(Some(&self.key), record.value, record.timestamp);
        Ok(())
    }
}

sluice_guest::export_flat_map!(Select);
