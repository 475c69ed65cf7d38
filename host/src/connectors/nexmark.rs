//! The Nexmark source: people, auctions and bids of an online auction, from
//! the `nexmark` crate's generator (RisingWave's port of the Beam / Flink
//! generator) with the standard defaults: person : auction : bid = 1 : 3 :
//! 46, average sizes 200 / 500 / 100 bytes, hot auctions, bidders and
//! sellers, 1,000 active people, 100 auctions in flight.
//!
//! Event `i` is a pure function of `i` (the generator seeds each event with
//! its number), and its event time is `start_time_ms + i * 1000 /
//! events_per_second`, so any parallelism produces the same events, and a
//! reference implementation can regenerate them. Subtask `s` of `p`
//! produces events `s, s + p, …`. Each record has the event time as its
//! timestamp, no key, and the event as its value in the binary form of
//! [`sluice_guest::nexmark`].

use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use sluice_guest::nexmark as nx;

use super::{ConnectorError, SourceReader, Strided};
use crate::types::RecordBatch;

/// Settings of a Nexmark source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NexmarkSettings {
    /// Events in all.
    pub count: u64,
    /// Events per event-time second (Nexmark's default: 10,000).
    pub events_per_second: u64,
    /// Event time of event 0 (ms).
    pub start_time_ms: i64,
}

impl NexmarkSettings {
    /// The generator's configuration: the standard defaults, at this rate
    /// and start time.
    pub fn config(&self) -> NexmarkConfig {
        let rate = usize::try_from(self.events_per_second.max(1)).unwrap_or(usize::MAX);
        NexmarkConfig {
            base_time: self.start_time_ms.max(0) as u64,
            first_rate: rate,
            next_rate: rate,
            ..NexmarkConfig::default()
        }
    }

    /// The events `first, first + step, …` below `count`, in the generator's
    /// own types (for reference implementations).
    pub fn events(&self, first: u64, step: u64) -> impl Iterator<Item = nexmark::event::Event> + use<> {
        let n = self.count.saturating_sub(first).div_ceil(step.max(1));
        EventGenerator::new(self.config())
            .with_offset(first)
            .with_step(step.max(1))
            .take(usize::try_from(n).unwrap_or(usize::MAX))
    }
}

/// Append `event` to `out` in the binary form of [`sluice_guest::nexmark`].
pub fn encode(event: &nexmark::event::Event, out: &mut Vec<u8>) {
    use nexmark::event::Event;
    match event {
        Event::Person(p) => nx::Person {
            id: p.id as u64,
            name: &p.name,
            email_address: &p.email_address,
            credit_card: &p.credit_card,
            city: &p.city,
            state: &p.state,
            date_time: p.date_time as i64,
            extra: &p.extra,
        }
        .encode(out),
        Event::Auction(a) => nx::Auction {
            id: a.id as u64,
            item_name: &a.item_name,
            description: &a.description,
            initial_bid: a.initial_bid as u64,
            reserve: a.reserve as u64,
            date_time: a.date_time as i64,
            expires: a.expires as i64,
            seller: a.seller as u64,
            category: a.category as u64,
            extra: &a.extra,
        }
        .encode(out),
        Event::Bid(b) => nx::Bid {
            auction: b.auction as u64,
            bidder: b.bidder as u64,
            price: b.price as u64,
            channel: &b.channel,
            url: &b.url,
            date_time: b.date_time as i64,
            extra: &b.extra,
        }
        .encode(out),
    }
}

/// One subtask of a Nexmark source.
pub struct NexmarkSource {
    settings: NexmarkSettings,
    generator: EventGenerator,
    records: Strided,
}

impl NexmarkSource {
    /// Subtask `subtask` of `parallelism`.
    pub fn new(settings: NexmarkSettings, subtask: u32, parallelism: u32) -> Self {
        let records = Strided::new("nexmark", subtask, parallelism, settings.count);
        NexmarkSource {
            generator: generator(&settings, &records),
            settings,
            records,
        }
    }
}

impl SourceReader for NexmarkSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        let generator = &mut self.generator;
        Ok(self.records.batch(max_records, 160, |_, w| {
            let event = generator.next().expect("the generator is endless");
            w.push_with(None, Some(event.timestamp() as i64), |value| encode(&event, value));
        }))
    }

    fn position(&self) -> Vec<u8> {
        self.records.position()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        self.records.seek(position)?;
        self.generator = generator(&self.settings, &self.records);
        Ok(())
    }
}

/// The generator of the events `records` will take, from the next one.
fn generator(settings: &NexmarkSettings, records: &Strided) -> EventGenerator {
    EventGenerator::new(settings.config())
        .with_offset(records.next())
        .with_step(records.step())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(settings: NexmarkSettings, parallelism: u32) -> Vec<(i64, Vec<u8>)> {
        let mut out = Vec::new();
        for s in 0..parallelism {
            let mut src = NexmarkSource::new(settings, s, parallelism);
            while let Some(b) = src.next_batch(100).unwrap() {
                out.extend(b.records().map(|r| (r.timestamp.unwrap(), r.value.to_vec())));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn events_are_the_same_at_any_parallelism_and_after_a_seek() {
        let settings = NexmarkSettings {
            count: 5000,
            events_per_second: 1000,
            start_time_ms: 1_000_000,
        };
        let one = all(settings, 1);
        assert_eq!(one.len(), 5000);
        assert_eq!(one, all(settings, 3));
        // 1 : 3 : 46, timestamps 1 ms apart from the start time.
        let kinds = |k: u8| one.iter().filter(|(_, v)| v[0] == k).count();
        assert_eq!((kinds(0), kinds(1), kinds(2)), (100, 300, 4600));
        assert_eq!((one[0].0, one[4999].0), (1_000_000, 1_004_999));
        for (_, v) in &one {
            nx::Event::decode(v).unwrap();
        }
        // Resume subtask 1 of 2 from a position: the same events follow.
        let mut a = NexmarkSource::new(settings, 1, 2);
        a.next_batch(10).unwrap();
        let pos = a.position();
        let rest_a = a.next_batch(50).unwrap().unwrap();
        let mut b = NexmarkSource::new(settings, 1, 2);
        b.seek(&pos).unwrap();
        assert_eq!(b.next_batch(50).unwrap().unwrap().bytes, rest_a.bytes);
        assert!(NexmarkSource::new(settings, 0, 3).seek(&pos).is_err());
    }
}
