//! The timer service: event-time and processing-time timers of a keyed
//! operator, kept by the host (so they are part of the operator's state).
//!
//! A timer is `(timestamp, key, namespace)`: the namespace tells timers of
//! one key apart (a window operator uses the encoded window; a keyed process
//! UDF the empty namespace). A key has at most one timer per domain,
//! timestamp and namespace. Due timers come out in timestamp order, and in
//! registration order within a timestamp, so firing is deterministic.

use std::collections::BTreeMap;

/// Which clock a timer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeDomain {
    /// The watermark.
    EventTime,
    /// The host's processing-time clock.
    ProcessingTime,
}

/// One timer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timer {
    /// When it fires (ms).
    pub timestamp: i64,
    /// The key it belongs to.
    pub key: Vec<u8>,
    /// Tells timers of one key apart.
    pub namespace: Vec<u8>,
}

/// The timers of one keyed operator subtask.
///
/// Timers are grouped by timestamp: many keys share one (every key's timer
/// at the end of the same window), so registering is a hash insert rather
/// than a comparison of keys in a sorted tree. Within one timestamp, timers
/// fire in registration order.
#[derive(Debug, Default, Clone)]
pub struct TimerService {
    event: Timers,
    processing: Timers,
}

type Bucket = indexmap_lite::Bucket;

#[derive(Debug, Default, Clone)]
struct Timers {
    by_time: BTreeMap<i64, Bucket>,
    len: usize,
}

impl Timers {
    fn register(&mut self, t: Timer) {
        if self.by_time.entry(t.timestamp).or_default().insert(t.key, t.namespace) {
            self.len += 1;
        }
    }

    fn delete(&mut self, t: &Timer) {
        if let Some(b) = self.by_time.get_mut(&t.timestamp)
            && b.remove(&t.key, &t.namespace)
        {
            self.len -= 1;
            if b.is_empty() {
                self.by_time.remove(&t.timestamp);
            }
        }
    }

    fn pop_due(&mut self, time: i64) -> Option<Timer> {
        let mut entry = self.by_time.first_entry()?;
        let timestamp = *entry.key();
        if timestamp > time {
            return None;
        }
        let (key, namespace) = entry.get_mut().pop_front()?;
        if entry.get().is_empty() {
            entry.remove();
        }
        self.len -= 1;
        Some(Timer { timestamp, key, namespace })
    }
}

impl TimerService {
    fn set(&mut self, domain: TimeDomain) -> &mut Timers {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    fn get(&self, domain: TimeDomain) -> &Timers {
        match domain {
            TimeDomain::EventTime => &self.event,
            TimeDomain::ProcessingTime => &self.processing,
        }
    }

    /// Register a timer; registering an existing one does nothing.
    pub fn register(&mut self, domain: TimeDomain, timer: Timer) {
        self.set(domain).register(timer);
    }

    /// Delete a timer; deleting a missing one does nothing.
    pub fn delete(&mut self, domain: TimeDomain, timer: &Timer) {
        self.set(domain).delete(timer);
    }

    /// Remove and return the earliest timer at or before `time`, if any.
    pub fn pop_due(&mut self, domain: TimeDomain, time: i64) -> Option<Timer> {
        self.set(domain).pop_due(time)
    }

    /// The earliest timer's timestamp.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        self.get(domain).by_time.keys().next().copied()
    }

    /// Number of timers in a domain.
    pub fn len(&self, domain: TimeDomain) -> usize {
        self.get(domain).len
    }

    /// True when no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.event.len == 0 && self.processing.len == 0
    }

    /// Every timer of a domain, in firing order (for snapshots).
    pub fn iter(&self, domain: TimeDomain) -> impl Iterator<Item = Timer> + '_ {
        self.get(domain).by_time.iter().flat_map(|(&timestamp, b)| {
            b.iter().map(move |(key, namespace)| Timer {
                timestamp,
                key: key.to_vec(),
                namespace: namespace.to_vec(),
            })
        })
    }
}

/// The timers of one timestamp: a set that remembers insertion order.
mod indexmap_lite {
    use std::collections::{HashMap, VecDeque};

    use xxhash_rust::xxh3::Xxh3Builder;

    type Id = (Vec<u8>, Vec<u8>);

    /// Insertion-ordered set of (key, namespace). Removal leaves a hole in
    /// the order queue, skipped when popping.
    #[derive(Debug, Default, Clone)]
    pub struct Bucket {
        seq: HashMap<Id, u64, Xxh3Builder>,
        order: VecDeque<(u64, Id)>,
        next: u64,
    }

    impl Bucket {
        /// Insert; false when present.
        pub fn insert(&mut self, key: Vec<u8>, namespace: Vec<u8>) -> bool {
            let id = (key, namespace);
            if self.seq.contains_key(&id) {
                return false;
            }
            self.seq.insert(id.clone(), self.next);
            self.order.push_back((self.next, id));
            self.next += 1;
            true
        }

        /// Remove; false when absent.
        pub fn remove(&mut self, key: &[u8], namespace: &[u8]) -> bool {
            // Looking up a tuple of Vecs needs owned keys.
            let removed = self.seq.remove(&(key.to_vec(), namespace.to_vec())).is_some();
            if self.order.len() > 2 * self.seq.len() + 16 {
                // Drop the holes, so deleting and re-registering cannot grow it.
                let seq = &self.seq;
                self.order.retain(|(n, id)| seq.get(id) == Some(n));
            }
            removed
        }

        /// The oldest present entry.
        pub fn pop_front(&mut self) -> Option<Id> {
            while let Some((n, id)) = self.order.pop_front() {
                if self.seq.get(&id) == Some(&n) {
                    self.seq.remove(&id);
                    return Some(id);
                }
            }
            None
        }

        pub fn is_empty(&self) -> bool {
            self.seq.is_empty()
        }

        /// Present entries in insertion order.
        pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
            self.order
                .iter()
                .filter(|(n, id)| self.seq.get(id) == Some(n))
                .map(|(_, (k, ns))| (&k[..], &ns[..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ts: i64, key: &str) -> Timer {
        Timer {
            timestamp: ts,
            key: key.as_bytes().to_vec(),
            namespace: Vec::new(),
        }
    }

    #[test]
    fn due_timers_come_out_in_timestamp_order_once() {
        let mut s = TimerService::default();
        for (ts, k) in [(30, "a"), (10, "b"), (20, "a"), (10, "b"), (40, "c")] {
            s.register(TimeDomain::EventTime, t(ts, k));
        }
        s.delete(TimeDomain::EventTime, &t(20, "a"));
        assert_eq!(s.len(TimeDomain::EventTime), 3);
        let mut fired = Vec::new();
        while let Some(x) = s.pop_due(TimeDomain::EventTime, 35) {
            fired.push(x.timestamp);
        }
        assert_eq!(fired, [10, 30]);
        assert_eq!(s.next(TimeDomain::EventTime), Some(40));
        assert!(s.pop_due(TimeDomain::ProcessingTime, i64::MAX).is_none());
        s.register(TimeDomain::EventTime, t(50, "z"));
        s.register(TimeDomain::EventTime, t(50, "y"));
        s.register(TimeDomain::EventTime, t(50, "x"));
        s.delete(TimeDomain::EventTime, &t(50, "y"));
        s.register(TimeDomain::EventTime, t(50, "y"));
        let order: Vec<String> = std::iter::from_fn(|| s.pop_due(TimeDomain::EventTime, 50))
            .map(|t| String::from_utf8(t.key).unwrap())
            .collect();
        assert_eq!(order, ["c", "z", "x", "y"], "timestamp order, then registration order");
    }
}
