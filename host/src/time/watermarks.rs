//! Watermarks: generating them from timestamps, and combining them over the
//! input channels of a subtask.
//!
//! A watermark `w` says "no record with event time ≤ `w` will arrive". A
//! generator follows the highest timestamp seen and emits, periodically in
//! processing time, `max - bound - 1`. A [`WatermarkValve`] combines the
//! watermarks of a subtask's input channels: the subtask's watermark is the
//! minimum over its active channels and only moves forward; an idle channel
//! (its source said so) does not hold it back, and an ended one counts as
//! +∞.

use crate::spec::{WatermarkSpec, WatermarkStrategy};

/// Emits bounded-out-of-orderness (or monotonous) watermarks, periodically.
#[derive(Debug, Clone)]
pub struct PeriodicWatermarks {
    bound: i64,
    interval_ms: i64,
    max_timestamp: Option<i64>,
    last_emit_at: Option<i64>,
    emitted: Option<i64>,
}

impl PeriodicWatermarks {
    /// A generator for `spec`; `None` for a punctuated strategy (a UDF's).
    pub fn new(spec: &WatermarkSpec) -> Option<Self> {
        let bound = match spec.strategy {
            WatermarkStrategy::Monotonous => 0,
            WatermarkStrategy::Bounded => spec.max_out_of_orderness_ms.max(0),
            WatermarkStrategy::Punctuated => return None,
        };
        Some(PeriodicWatermarks {
            bound,
            interval_ms: spec.interval_ms.min(i64::MAX as u64) as i64,
            max_timestamp: None,
            last_emit_at: None,
            emitted: None,
        })
    }

    /// Note a record's timestamp.
    #[inline]
    pub fn on_timestamp(&mut self, ts: i64) {
        if self.max_timestamp.is_none_or(|m| ts > m) {
            self.max_timestamp = Some(ts);
        }
    }

    /// The watermark to emit now (`now` is processing time), if the interval
    /// has passed and it moved forward.
    pub fn poll(&mut self, now: i64) -> Option<i64> {
        if self.last_emit_at.is_some_and(|t| now.saturating_sub(t) < self.interval_ms) {
            return None;
        }
        let wm = self.max_timestamp?.saturating_sub(self.bound).saturating_sub(1);
        if self.emitted.is_some_and(|e| wm <= e) {
            return None;
        }
        self.last_emit_at = Some(now);
        self.emitted = Some(wm);
        Some(wm)
    }
}

/// Tracks whether a source has gone idle: no records for `timeout` ms of
/// processing time.
#[derive(Debug, Clone)]
pub struct IdleTracker {
    timeout: Option<i64>,
    last_active: Option<i64>,
    idle: bool,
}

impl IdleTracker {
    /// A tracker; `None` never goes idle.
    pub fn new(timeout_ms: Option<u64>) -> Self {
        IdleTracker {
            timeout: timeout_ms.map(|t| t.min(i64::MAX as u64) as i64),
            last_active: None,
            idle: false,
        }
    }

    /// Records arrived at `now`; true when this ends an idle period.
    pub fn on_records(&mut self, now: i64) -> bool {
        self.last_active = Some(now);
        std::mem::replace(&mut self.idle, false)
    }

    /// The source says it has nothing to read (a Kafka subtask without
    /// partitions): idle now; true when it was not before.
    pub fn mark_idle(&mut self) -> bool {
        !std::mem::replace(&mut self.idle, true)
    }

    /// True when the source just became idle at `now`.
    pub fn poll(&mut self, now: i64) -> bool {
        let Some(timeout) = self.timeout else { return false };
        let since = *self.last_active.get_or_insert(now);
        if !self.idle && now.saturating_sub(since) >= timeout {
            self.idle = true;
            return true;
        }
        false
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Channel {
    watermark: Option<i64>,
    idle: bool,
    ended: bool,
}

/// Combines the watermarks of a subtask's input channels.
#[derive(Debug, Clone)]
pub struct WatermarkValve {
    channels: Vec<Channel>,
    output: Option<i64>,
    idle: bool,
}

/// What changed at the output of a [`WatermarkValve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ValveOutput {
    /// The subtask's watermark advanced to this.
    pub watermark: Option<i64>,
    /// The subtask became idle (true) or active again (false).
    pub idle: Option<bool>,
}

impl WatermarkValve {
    /// A valve over `channels` inputs.
    pub fn new(channels: usize) -> Self {
        WatermarkValve {
            channels: vec![Channel::default(); channels],
            output: None,
            idle: false,
        }
    }

    /// The current combined watermark.
    pub fn watermark(&self) -> Option<i64> {
        self.output
    }

    /// Channel `i` delivered watermark `wm`.
    pub fn on_watermark(&mut self, i: usize, wm: i64) -> ValveOutput {
        let c = &mut self.channels[i];
        if c.watermark.is_none_or(|w| wm > w) {
            c.watermark = Some(wm);
        }
        let idle = self.set_idle(i, false);
        ValveOutput {
            watermark: self.advance(),
            idle,
        }
    }

    /// Records arrived on channel `i` (an idle channel is active again).
    #[inline]
    pub fn on_records(&mut self, i: usize) -> ValveOutput {
        if !self.channels[i].idle {
            return ValveOutput::default();
        }
        ValveOutput {
            idle: self.set_idle(i, false),
            watermark: None,
        }
    }

    /// Channel `i` became idle or active.
    pub fn on_idle(&mut self, i: usize, idle: bool) -> ValveOutput {
        let status = self.set_idle(i, idle);
        ValveOutput {
            watermark: self.advance(),
            idle: status,
        }
    }

    /// Channel `i` ended.
    pub fn on_end(&mut self, i: usize) -> ValveOutput {
        self.channels[i].ended = true;
        let status = self.status_change();
        ValveOutput {
            watermark: self.advance(),
            idle: status,
        }
    }

    fn set_idle(&mut self, i: usize, idle: bool) -> Option<bool> {
        self.channels[i].idle = idle;
        self.status_change()
    }

    fn status_change(&mut self) -> Option<bool> {
        let mut open = self.channels.iter().filter(|c| !c.ended).peekable();
        let idle = open.peek().is_some() && open.all(|c| c.idle);
        (idle != self.idle).then(|| {
            self.idle = idle;
            idle
        })
    }

    fn advance(&mut self) -> Option<i64> {
        let mut min: Option<i64> = None;
        let mut active = 0;
        for c in self.channels.iter().filter(|c| !c.ended && !c.idle) {
            active += 1;
            let w = c.watermark?;
            min = Some(min.map_or(w, |m| m.min(w)));
        }
        // With no active channel left, nothing holds event time back: the
        // highest watermark any channel reached holds (as in Flink).
        if active == 0 {
            min = self.channels.iter().filter_map(|c| c.watermark).max();
        }
        let m = min?;
        if self.output.is_none_or(|o| m > o) {
            self.output = Some(m);
            return Some(m);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(strategy: WatermarkStrategy, bound: i64, interval: u64) -> WatermarkSpec {
        WatermarkSpec {
            strategy,
            max_out_of_orderness_ms: bound,
            interval_ms: interval,
            idle_timeout_ms: None,
            component: None,
            config: None,
        }
    }

    #[test]
    fn bounded_watermarks_trail_the_maximum_and_respect_the_interval() {
        let mut g = PeriodicWatermarks::new(&spec(WatermarkStrategy::Bounded, 100, 50)).unwrap();
        assert_eq!(g.poll(0), None, "nothing seen yet");
        g.on_timestamp(1000);
        g.on_timestamp(900);
        assert_eq!(g.poll(0), Some(899));
        g.on_timestamp(2000);
        assert_eq!(g.poll(10), None, "interval not passed");
        assert_eq!(g.poll(50), Some(1899));
        assert_eq!(g.poll(200), None, "did not move");
    }

    #[test]
    fn valve_takes_the_minimum_of_active_channels_and_never_goes_back() {
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, 10).watermark, None, "channel 1 has none yet");
        assert_eq!(v.on_watermark(1, 5).watermark, Some(5));
        assert_eq!(v.on_watermark(1, 20).watermark, Some(10));
        assert_eq!(v.on_watermark(1, 3).watermark, None, "a channel never goes back");
        let out = v.on_idle(0, true);
        assert_eq!(out.watermark, Some(20), "an idle channel does not hold it back");
        assert_eq!(out.idle, None);
        assert_eq!(v.on_idle(1, true).idle, Some(true));
        assert_eq!(
            v.on_watermark(1, 30),
            ValveOutput {
                watermark: Some(30),
                idle: Some(false)
            }
        );
        assert_eq!(v.on_end(1).watermark, None);
        assert_eq!(v.on_watermark(0, 40).watermark, Some(40));
        let mut v = WatermarkValve::new(2);
        assert_eq!(v.on_watermark(0, i64::MAX).watermark, None);
        v.on_end(0);
        let out = v.on_idle(1, true);
        assert_eq!(out.watermark, Some(i64::MAX), "an ended input and an idle one hold nothing back");
    }

    #[test]
    fn idle_tracker_goes_idle_after_the_timeout_and_back() {
        let mut t = IdleTracker::new(Some(100));
        assert!(!t.poll(0));
        assert!(!t.poll(99));
        assert!(t.poll(100));
        assert!(!t.poll(200), "reported once");
        assert!(t.on_records(300));
        assert!(!t.poll(350));
    }
}
