//! The timer service: event-time and processing-time timers of a keyed
//! operator, kept by the host (so they are part of the operator's state).
//!
//! A timer is `(timestamp, key, namespace)`: the namespace tells timers of
//! one key apart (a window operator uses the encoded window; a keyed process
//! UDF the empty namespace). A key has at most one timer per domain,
//! timestamp and namespace. Due timers come out in timestamp order, then key
//! order, so firing is deterministic.

use std::collections::BTreeSet;

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
#[derive(Debug, Default, Clone)]
pub struct TimerService {
    event: BTreeSet<Timer>,
    processing: BTreeSet<Timer>,
}

impl TimerService {
    fn set(&mut self, domain: TimeDomain) -> &mut BTreeSet<Timer> {
        match domain {
            TimeDomain::EventTime => &mut self.event,
            TimeDomain::ProcessingTime => &mut self.processing,
        }
    }

    /// Register a timer; registering an existing one does nothing.
    pub fn register(&mut self, domain: TimeDomain, timer: Timer) {
        self.set(domain).insert(timer);
    }

    /// Delete a timer; deleting a missing one does nothing.
    pub fn delete(&mut self, domain: TimeDomain, timer: &Timer) {
        self.set(domain).remove(timer);
    }

    /// Remove and return the earliest timer at or before `time`, if any.
    pub fn pop_due(&mut self, domain: TimeDomain, time: i64) -> Option<Timer> {
        let set = self.set(domain);
        if set.first().is_some_and(|t| t.timestamp <= time) {
            set.pop_first()
        } else {
            None
        }
    }

    /// The earliest timer's timestamp.
    pub fn next(&self, domain: TimeDomain) -> Option<i64> {
        match domain {
            TimeDomain::EventTime => self.event.first(),
            TimeDomain::ProcessingTime => self.processing.first(),
        }
        .map(|t| t.timestamp)
    }

    /// Number of timers in a domain.
    pub fn len(&self, domain: TimeDomain) -> usize {
        match domain {
            TimeDomain::EventTime => self.event.len(),
            TimeDomain::ProcessingTime => self.processing.len(),
        }
    }

    /// True when no timer is registered.
    pub fn is_empty(&self) -> bool {
        self.event.is_empty() && self.processing.is_empty()
    }

    /// Every timer of a domain, in firing order (for snapshots).
    pub fn iter(&self, domain: TimeDomain) -> impl Iterator<Item = &Timer> {
        match domain {
            TimeDomain::EventTime => self.event.iter(),
            TimeDomain::ProcessingTime => self.processing.iter(),
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
    }
}
