//! The timer service: event-time and processing-time timers of a keyed
//! operator, kept by the host (so they are part of the operator's state).
//!
//! A timer is `(timestamp, key, namespace)`: the namespace tells timers of
//! one key apart (a window operator uses the encoded window; a keyed process
//! UDF the empty namespace). A key has at most one timer per domain,
//! timestamp and namespace. Due timers come out in timestamp order, and in
//! registration order within a timestamp, so firing is deterministic.

use std::collections::BTreeMap;

use crate::tenancy::{StateAccount, StateBudget, StateLimitExceeded};

/// Bytes counted per timer beyond twice its key and namespace (a large
/// bucket holds them twice): its queue slot, map entry and allocations.
pub const TIMER_OVERHEAD: usize = 96;

/// What one timer is charged to its operator's state budget.
fn timer_cost(t: &Timer) -> u64 {
    (2 * (t.key.len() + t.namespace.len()) + TIMER_OVERHEAD) as u64
}

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
///
/// Timers count against the operator's state budget like its keyed state:
/// [`TimerService::try_register`] fails, registering nothing, when a new
/// timer would cross the job's or tenant's ceiling.
#[derive(Debug, Default)]
pub struct TimerService {
    event: Timers,
    processing: Timers,
    bytes: u64,
    account: StateAccount,
}

type Bucket = indexmap_lite::Bucket;

#[derive(Debug, Default, Clone)]
struct Timers {
    by_time: BTreeMap<i64, Bucket>,
    len: usize,
}

impl Timers {
    /// Insert; false when present.
    fn register(&mut self, t: Timer) -> bool {
        let inserted = self.by_time.entry(t.timestamp).or_default().insert(t.key, t.namespace);
        self.len += usize::from(inserted);
        inserted
    }

    /// Remove; false when missing.
    fn delete(&mut self, t: &Timer) -> bool {
        if let Some(b) = self.by_time.get_mut(&t.timestamp)
            && b.remove(&t.key, &t.namespace)
        {
            self.len -= 1;
            if b.is_empty() {
                self.by_time.remove(&t.timestamp);
            }
            return true;
        }
        false
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

    /// Timers charged to `budget` (the operator's keyed-state budget).
    pub fn with_budget(budget: Option<StateBudget>) -> Self {
        TimerService {
            account: budget.map(StateAccount::new).unwrap_or_default(),
            ..Default::default()
        }
    }

    /// Register a timer, charging it to the budget first: fails, with
    /// nothing registered, when it would cross the job's or tenant's
    /// ceiling. Registering an existing one does nothing.
    pub fn try_register(&mut self, domain: TimeDomain, timer: Timer) -> Result<(), StateLimitExceeded> {
        let cost = timer_cost(&timer);
        if let Err(e) = self.account.cover(self.bytes.saturating_add(cost)) {
            // Registering an existing timer adds nothing: never refused.
            let present = self
                .get(domain)
                .by_time
                .get(&timer.timestamp)
                .is_some_and(|b| b.contains(&timer.key, &timer.namespace));
            return if present { Ok(()) } else { Err(e) };
        }
        if self.set(domain).register(timer) {
            self.bytes += cost;
        }
        Ok(())
    }

    /// Register a timer without checking the budget (restoring timers a
    /// checkpoint holds); it is counted, so later registrations see it.
    /// Registering an existing one does nothing.
    pub fn register(&mut self, domain: TimeDomain, timer: Timer) {
        let cost = timer_cost(&timer);
        if self.set(domain).register(timer) {
            self.bytes += cost;
        }
    }

    /// Delete a timer; deleting a missing one does nothing.
    pub fn delete(&mut self, domain: TimeDomain, timer: &Timer) {
        if self.set(domain).delete(timer) {
            self.release(timer_cost(timer));
        }
    }

    /// Remove and return the earliest timer at or before `time`, if any.
    pub fn pop_due(&mut self, domain: TimeDomain, time: i64) -> Option<Timer> {
        let t = self.set(domain).pop_due(time)?;
        self.release(timer_cost(&t));
        Some(t)
    }

    fn release(&mut self, cost: u64) {
        self.bytes = self.bytes.saturating_sub(cost);
        self.account.shrink_to(self.bytes);
    }

    /// Drop every timer (batch mode, once the keys in hand are done).
    pub fn clear(&mut self) {
        self.event = Timers::default();
        self.processing = Timers::default();
        self.bytes = 0;
        self.account.shrink_to(0);
    }

    /// Bytes the timers are charged.
    pub fn size_bytes(&self) -> u64 {
        self.bytes
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
    use std::collections::VecDeque;
    use std::hash::BuildHasher;

    use hashbrown::HashTable;

    use crate::state::KeyHasher;

    type Id = (Vec<u8>, Vec<u8>);

    /// Insertion-ordered set of (key, namespace). Most timestamps hold one
    /// timer or a few (an auction's expiry, a session's end), kept in a
    /// small queue searched in place; past [`SMALL`] timers (every key's
    /// window ending at one time) a hash table indexes the queue by
    /// sequence number, so each id is stored once; a removal leaves a hole,
    /// skipped when popping.
    #[derive(Debug, Default, Clone)]
    pub enum Bucket {
        #[default]
        Empty,
        One(Id),
        Small(VecDeque<Id>),
        Large(Box<Large>),
    }

    #[derive(Debug, Default, Clone)]
    pub struct Large {
        /// Entries in insertion order; `None` where one was removed.
        order: VecDeque<Option<Id>>,
        /// The sequence number of `order[0]`.
        base: u64,
        /// The sequence numbers of present entries, by the hash of their id.
        index: HashTable<u64>,
        hasher: KeyHasher,
        len: usize,
    }

    impl Large {
        fn hash(&self, key: &[u8], namespace: &[u8]) -> u64 {
            self.hasher.hash_one((key, namespace))
        }

        fn at(&self, seq: u64) -> Option<&Id> {
            let i = usize::try_from(seq.checked_sub(self.base)?).ok()?;
            self.order.get(i)?.as_ref()
        }

        fn find(&self, hash: u64, key: &[u8], namespace: &[u8]) -> Option<u64> {
            self.index
                .find(hash, |&seq| self.at(seq).is_some_and(|(k, ns)| k == key && ns == namespace))
                .copied()
        }

        fn insert(&mut self, id: Id) -> bool {
            let hash = self.hash(&id.0, &id.1);
            if self.find(hash, &id.0, &id.1).is_some() {
                return false;
            }
            let seq = self.base + self.order.len() as u64;
            self.order.push_back(Some(id));
            let Large {
                order,
                base,
                index,
                hasher,
                ..
            } = self;
            index.insert_unique(hash, seq, |&s| {
                let i = (s - *base) as usize;
                order[i].as_ref().map_or(0, |(k, ns)| hasher.hash_one((&k[..], &ns[..])))
            });
            self.len += 1;
            true
        }

        fn remove(&mut self, key: &[u8], namespace: &[u8]) -> bool {
            let hash = self.hash(key, namespace);
            let Some(seq) = self.find(hash, key, namespace) else {
                return false;
            };
            if let Ok(e) = self.index.find_entry(hash, |&s| s == seq) {
                e.remove();
            }
            self.order[(seq - self.base) as usize] = None;
            self.len -= 1;
            if self.order.len() > 2 * self.len + 16 {
                // Drop the holes, so deleting and re-registering cannot grow it.
                let ids: Vec<Id> = std::mem::take(&mut self.order).into_iter().flatten().collect();
                let mut fresh = Large {
                    hasher: self.hasher.clone(),
                    ..Default::default()
                };
                for id in ids {
                    fresh.insert(id);
                }
                *self = fresh;
            }
            true
        }

        fn pop_front(&mut self) -> Option<Id> {
            while let Some(slot) = self.order.pop_front() {
                let seq = self.base;
                self.base += 1;
                if let Some(id) = slot {
                    let hash = self.hash(&id.0, &id.1);
                    if let Ok(e) = self.index.find_entry(hash, |&s| s == seq) {
                        e.remove();
                    }
                    self.len -= 1;
                    return Some(id);
                }
            }
            None
        }
    }

    /// Most timers a bucket searches without a map.
    const SMALL: usize = 16;

    impl Bucket {
        /// Insert; false when present.
        pub fn insert(&mut self, key: Vec<u8>, namespace: Vec<u8>) -> bool {
            let id = (key, namespace);
            match self {
                Bucket::Empty => *self = Bucket::One(id),
                Bucket::One(first) if *first == id => return false,
                Bucket::One(_) => {
                    let Bucket::One(first) = std::mem::take(self) else { unreachable!() };
                    *self = Bucket::Small(VecDeque::from([first, id]));
                }
                Bucket::Small(ids) if ids.contains(&id) => return false,
                Bucket::Small(ids) if ids.len() < SMALL => ids.push_back(id),
                Bucket::Small(ids) => {
                    let mut large = Large::default();
                    for old in std::mem::take(ids) {
                        large.insert(old);
                    }
                    large.insert(id);
                    *self = Bucket::Large(Box::new(large));
                }
                Bucket::Large(large) => return large.insert(id),
            }
            true
        }

        /// True when present.
        pub fn contains(&self, key: &[u8], namespace: &[u8]) -> bool {
            let is = |(k, ns): &Id| k == key && ns == namespace;
            match self {
                Bucket::Empty => false,
                Bucket::One(id) => is(id),
                Bucket::Small(ids) => ids.iter().any(is),
                Bucket::Large(large) => large.find(large.hash(key, namespace), key, namespace).is_some(),
            }
        }

        /// Remove; false when absent.
        pub fn remove(&mut self, key: &[u8], namespace: &[u8]) -> bool {
            let is = |(k, ns): &Id| k == key && ns == namespace;
            match self {
                Bucket::Empty => false,
                Bucket::One(id) => {
                    let found = is(id);
                    if found {
                        *self = Bucket::Empty;
                    }
                    found
                }
                Bucket::Small(ids) => match ids.iter().position(is) {
                    Some(i) => {
                        ids.remove(i);
                        true
                    }
                    None => false,
                },
                Bucket::Large(large) => large.remove(key, namespace),
            }
        }

        /// The oldest present entry.
        pub fn pop_front(&mut self) -> Option<Id> {
            match self {
                Bucket::Empty => None,
                Bucket::One(_) => match std::mem::take(self) {
                    Bucket::One(id) => Some(id),
                    _ => unreachable!(),
                },
                Bucket::Small(ids) => ids.pop_front(),
                Bucket::Large(large) => large.pop_front(),
            }
        }

        pub fn is_empty(&self) -> bool {
            match self {
                Bucket::Empty => true,
                Bucket::One(_) => false,
                Bucket::Small(ids) => ids.is_empty(),
                Bucket::Large(large) => large.len == 0,
            }
        }

        /// Present entries in insertion order.
        pub fn iter(&self) -> Box<dyn Iterator<Item = (&[u8], &[u8])> + '_> {
            fn pair((k, ns): &Id) -> (&[u8], &[u8]) {
                (k, ns)
            }
            match self {
                Bucket::Empty => Box::new(std::iter::empty()),
                Bucket::One(id) => Box::new(std::iter::once(pair(id))),
                Bucket::Small(ids) => Box::new(ids.iter().map(pair)),
                Bucket::Large(large) => Box::new(large.order.iter().flatten().map(pair)),
            }
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

    #[test]
    fn buckets_of_any_size_keep_registration_order() {
        for n in [1, 2, 3, 16, 17, 40] {
            let mut s = TimerService::default();
            let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
            for k in &keys {
                s.register(TimeDomain::EventTime, t(7, k));
                s.register(TimeDomain::EventTime, t(7, k));
            }
            assert_eq!(s.len(TimeDomain::EventTime), n);
            // Delete every third, then register the first of those again: it
            // goes last.
            let deleted: Vec<&String> = keys.iter().step_by(3).collect();
            for k in &deleted {
                s.delete(TimeDomain::EventTime, &t(7, k));
            }
            s.register(TimeDomain::EventTime, t(7, deleted[0]));
            let mut expected: Vec<&String> = keys.iter().enumerate().filter(|(i, _)| i % 3 != 0).map(|(_, k)| k).collect();
            expected.push(deleted[0]);
            let listed: Vec<Vec<u8>> = s.iter(TimeDomain::EventTime).map(|t| t.key).collect();
            let fired: Vec<Vec<u8>> = std::iter::from_fn(|| s.pop_due(TimeDomain::EventTime, 7)).map(|t| t.key).collect();
            let expected: Vec<Vec<u8>> = expected.iter().map(|k| k.as_bytes().to_vec()).collect();
            assert_eq!(fired, expected, "{n} timers");
            assert_eq!(listed, expected, "{n} timers");
            assert!(s.is_empty());
        }
    }

    #[test]
    fn timers_are_charged_to_the_budget_and_refused_past_it() {
        let limit = StateAccount::CHUNK;
        let budget = StateBudget::new(Some(limit), None);
        let mut timers = TimerService::with_budget(Some(budget.clone()));
        let mut n = 0i64;
        let err = loop {
            match timers.try_register(TimeDomain::EventTime, t(n, "key")) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 100_000, "the budget never refused");
        };
        assert_eq!(err.limit, limit);
        let cost = (2 * 3 + TIMER_OVERHEAD) as u64;
        assert_eq!(n as u64, limit / cost);
        assert_eq!(timers.len(TimeDomain::EventTime), n as usize, "the refused timer is not registered");
        // Registering an existing timer costs nothing more.
        timers.try_register(TimeDomain::EventTime, t(0, "key")).unwrap();
        // Firing gives room back.
        assert!(timers.pop_due(TimeDomain::EventTime, 0).is_some());
        timers.try_register(TimeDomain::ProcessingTime, t(5, "key")).unwrap();
        assert_eq!(timers.size_bytes(), n as u64 * cost);
        drop(timers);
        assert_eq!(budget.job_bytes(), 0);
    }
}
