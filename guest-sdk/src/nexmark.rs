//! The Nexmark events of the host's `nexmark` source, as record values.
//!
//! Nexmark models an online auction: people register ([`Person`]), open
//! auctions ([`Auction`]) and bid on them ([`Bid`]). The source writes each
//! event as one record value in a compact binary form, so a query pays
//! neither JSON encoding in the source nor parsing in the guest:
//!
//! ```text
//! kind     u8              0 person, 1 auction, 2 bid
//! person   id u64, name str, email_address str, credit_card str, city str,
//!          state str, date_time i64, extra str
//! auction  id u64, item_name str, description str, initial_bid u64,
//!          reserve u64, date_time i64, expires i64, seller u64,
//!          category u64, extra str
//! bid      auction u64, bidder u64, price u64, channel str, url str,
//!          date_time i64, extra str
//! ```
//!
//! Integers are little-endian; a `str` is a `u32` LE length and that many
//! bytes of UTF-8. [`Event::decode`] borrows from the value, without
//! copying; each struct's `encode` appends the same form.

/// A new person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Person<'a> {
    /// Unique id (from 1000).
    pub id: u64,
    /// First and last name.
    pub name: &'a str,
    /// Email address.
    pub email_address: &'a str,
    /// Card number.
    pub credit_card: &'a str,
    /// City.
    pub city: &'a str,
    /// US state (lowercase two-letter code).
    pub state: &'a str,
    /// Event time (ms).
    pub date_time: i64,
    /// Padding to the average event size.
    pub extra: &'a str,
}

/// A new auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auction<'a> {
    /// Unique id (from 1000).
    pub id: u64,
    /// Item name.
    pub item_name: &'a str,
    /// Item description.
    pub description: &'a str,
    /// Initial bid.
    pub initial_bid: u64,
    /// Reserve price.
    pub reserve: u64,
    /// Event time (ms).
    pub date_time: i64,
    /// When the auction closes (ms).
    pub expires: i64,
    /// The seller's person id.
    pub seller: u64,
    /// Category (from 10).
    pub category: u64,
    /// Padding to the average event size.
    pub extra: &'a str,
}

/// A bid on an auction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bid<'a> {
    /// The auction's id.
    pub auction: u64,
    /// The bidder's person id.
    pub bidder: u64,
    /// Price.
    pub price: u64,
    /// Where the bid came from.
    pub channel: &'a str,
    /// The bid's URL.
    pub url: &'a str,
    /// Event time (ms).
    pub date_time: i64,
    /// Padding to the average event size.
    pub extra: &'a str,
}

/// One Nexmark event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A new person.
    Person(Person<'a>),
    /// A new auction.
    Auction(Auction<'a>),
    /// A bid.
    Bid(Bid<'a>),
}

/// Why a value is not a Nexmark event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub &'static str);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a Nexmark event: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

const PERSON: u8 = 0;
const AUCTION: u8 = 1;
const BID: u8 = 2;

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    #[inline]
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    #[inline]
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(self.u64()? as i64)
    }

    #[inline]
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")) as usize;
        let bytes = self.take(n)?;
        if is_ascii(bytes) {
            // SAFETY: ASCII is valid UTF-8.
            return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
        }
        std::str::from_utf8(bytes).map_err(|_| DecodeError("a string is not UTF-8"))
    }
}

/// True when every byte is ASCII, eight at a time: the generator's strings
/// are ASCII, and on wasm32 (4-byte words) this is about twice as fast as
/// the standard library's check.
#[inline]
fn is_ascii(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    let mut high = 0u64;
    for c in &mut chunks {
        high |= u64::from_le_bytes(c.try_into().expect("8 bytes"));
    }
    high & 0x8080_8080_8080_8080 == 0 && chunks.remainder().iter().all(u8::is_ascii)
}

#[inline]
fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

#[inline]
fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl<'a> Event<'a> {
    /// Decode a record value written by the `nexmark` source.
    pub fn decode(value: &'a [u8]) -> Result<Self, DecodeError> {
        let (&kind, rest) = value.split_first().ok_or(DecodeError("empty"))?;
        let mut r = Reader { bytes: rest };
        let event = match kind {
            PERSON => Event::Person(Person {
                id: r.u64()?,
                name: r.str()?,
                email_address: r.str()?,
                credit_card: r.str()?,
                city: r.str()?,
                state: r.str()?,
                date_time: r.i64()?,
                extra: r.str()?,
            }),
            AUCTION => Event::Auction(Auction {
                id: r.u64()?,
                item_name: r.str()?,
                description: r.str()?,
                initial_bid: r.u64()?,
                reserve: r.u64()?,
                date_time: r.i64()?,
                expires: r.i64()?,
                seller: r.u64()?,
                category: r.u64()?,
                extra: r.str()?,
            }),
            BID => Event::Bid(Bid {
                auction: r.u64()?,
                bidder: r.u64()?,
                price: r.u64()?,
                channel: r.str()?,
                url: r.str()?,
                date_time: r.i64()?,
                extra: r.str()?,
            }),
            _ => return Err(DecodeError("unknown kind")),
        };
        if !r.bytes.is_empty() {
            return Err(DecodeError("trailing bytes"));
        }
        Ok(event)
    }

    /// The bid, if this is one, without decoding other kinds.
    #[inline]
    pub fn bid(value: &'a [u8]) -> Option<Result<Bid<'a>, DecodeError>> {
        (value.first() == Some(&BID)).then(|| match Event::decode(value)? {
            Event::Bid(b) => Ok(b),
            _ => unreachable!("the kind byte says bid"),
        })
    }

    /// Append the encoded event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Event::Person(p) => p.encode(out),
            Event::Auction(a) => a.encode(out),
            Event::Bid(b) => b.encode(out),
        }
    }

    /// The event time (ms).
    pub fn date_time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

impl Person<'_> {
    /// Append the encoded event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(PERSON);
        put_u64(out, self.id);
        for s in [self.name, self.email_address, self.credit_card, self.city, self.state] {
            put_str(out, s);
        }
        put_u64(out, self.date_time as u64);
        put_str(out, self.extra);
    }
}

impl Auction<'_> {
    /// Append the encoded event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(AUCTION);
        put_u64(out, self.id);
        put_str(out, self.item_name);
        put_str(out, self.description);
        for v in [
            self.initial_bid,
            self.reserve,
            self.date_time as u64,
            self.expires as u64,
            self.seller,
            self.category,
        ] {
            put_u64(out, v);
        }
        put_str(out, self.extra);
    }
}

impl Bid<'_> {
    /// Append the encoded event to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(BID);
        for v in [self.auction, self.bidder, self.price] {
            put_u64(out, v);
        }
        put_str(out, self.channel);
        put_str(out, self.url);
        put_u64(out, self.date_time as u64);
        put_str(out, self.extra);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_and_bad_values_are_named() {
        let events = [
            Event::Person(Person {
                id: 1000,
                name: "vicky noris",
                email_address: "a@b.com",
                credit_card: "1 2 3 4",
                city: "boise",
                state: "id",
                date_time: 17,
                extra: "xyz",
            }),
            Event::Auction(Auction {
                id: 1001,
                item_name: "n",
                description: "d",
                initial_bid: 5,
                reserve: 9,
                date_time: 18,
                expires: 99,
                seller: 1000,
                category: 11,
                extra: "",
            }),
            Event::Bid(Bid {
                auction: 1001,
                bidder: 1000,
                price: 77,
                channel: "Google",
                url: "https://x/y",
                date_time: -3,
                extra: "é",
            }),
        ];
        for e in events {
            let mut buf = Vec::new();
            e.encode(&mut buf);
            assert_eq!(Event::decode(&buf), Ok(e));
            assert_eq!(
                Event::bid(&buf).map(|b| b.map(Event::Bid)),
                matches!(e, Event::Bid(_)).then_some(Ok(e))
            );
            assert_eq!(Event::decode(&buf[..buf.len() - 1]), Err(DecodeError("truncated")));
            buf.push(0);
            assert_eq!(Event::decode(&buf), Err(DecodeError("trailing bytes")));
        }
        assert_eq!(Event::decode(&[]), Err(DecodeError("empty")));
        assert_eq!(Event::decode(&[7]), Err(DecodeError("unknown kind")));
    }

    #[test]
    fn strings_are_checked_on_both_paths() {
        let long_ascii = "a".repeat(21);
        let long_utf8 = format!("{long_ascii}é and more");
        for (extra, ok) in [(&long_ascii[..], true), (&long_utf8[..], true), ("", true)] {
            let mut buf = Vec::new();
            let bid = Bid {
                auction: 1,
                bidder: 2,
                price: 3,
                channel: "c",
                url: "u",
                date_time: 4,
                extra,
            };
            Event::Bid(bid).encode(&mut buf);
            assert_eq!(Event::decode(&buf).is_ok(), ok);
            // Break the last byte of `extra`: a high bit in an ASCII run (in
            // the eight-byte chunks or in the tail), or a bad continuation.
            if !extra.is_empty() {
                for back in [1, 18] {
                    let mut bad = buf.clone();
                    let at = bad.len() - back;
                    bad[at] = 0x80;
                    assert_eq!(Event::decode(&bad), Err(DecodeError("a string is not UTF-8")));
                }
            }
        }
    }
}
