//! Restart strategies (Flink's): how long the JobMaster waits before it
//! restarts a failed job from its latest checkpoint, or that it gives up.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::spec::RestartSpec;

/// A restart strategy with its history.
pub struct RestartPolicy {
    spec: RestartSpec,
    restarts: u32,
    failures: VecDeque<Instant>,
    /// Exponential delay: the next wait, and when the last failure was.
    next_delay: Option<Duration>,
    last_failure: Option<Instant>,
}

impl RestartPolicy {
    /// The strategy `spec`.
    pub fn new(spec: RestartSpec) -> Self {
        RestartPolicy {
            spec,
            restarts: 0,
            failures: VecDeque::new(),
            next_delay: None,
            last_failure: None,
        }
    }

    /// After a failure: the delay before restarting, or none to fail the job.
    pub fn on_failure(&mut self) -> Option<Duration> {
        let now = Instant::now();
        match &self.spec {
            RestartSpec::None => None,
            RestartSpec::FixedDelay { attempts, delay_ms } => (self.restarts < *attempts).then(|| {
                self.restarts += 1;
                Duration::from_millis(*delay_ms)
            }),
            RestartSpec::FailureRate {
                max_failures,
                interval_ms,
                delay_ms,
            } => {
                let window = Duration::from_millis(*interval_ms);
                self.failures.push_back(now);
                while self.failures.front().is_some_and(|t| now.duration_since(*t) > window) {
                    self.failures.pop_front();
                }
                (self.failures.len() as u32 <= *max_failures).then(|| {
                    self.restarts += 1;
                    Duration::from_millis(*delay_ms)
                })
            }
            RestartSpec::ExponentialDelay {
                initial_ms,
                max_ms,
                multiplier,
                reset_ms,
                attempts,
            } => {
                if attempts.is_some_and(|a| self.restarts >= a) {
                    return None;
                }
                let initial = Duration::from_millis(*initial_ms);
                let max = Duration::from_millis((*max_ms).max(*initial_ms));
                let quiet = self
                    .last_failure
                    .is_some_and(|t| now.duration_since(t) >= Duration::from_millis(*reset_ms));
                let delay = match self.next_delay {
                    Some(d) if !quiet => d,
                    _ => initial,
                };
                self.last_failure = Some(now);
                let grown = delay.as_secs_f64() * multiplier.max(1.0);
                self.next_delay = Some(Duration::from_secs_f64(grown.min(max.as_secs_f64())));
                self.restarts += 1;
                Some(delay.min(max))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_strategies_count_failures() {
        let mut fixed = RestartPolicy::new(RestartSpec::FixedDelay { attempts: 2, delay_ms: 5 });
        assert_eq!(fixed.on_failure(), Some(Duration::from_millis(5)));
        assert!(fixed.on_failure().is_some());
        assert_eq!(fixed.on_failure(), None);
        let mut rate = RestartPolicy::new(RestartSpec::FailureRate {
            max_failures: 2,
            interval_ms: 60_000,
            delay_ms: 0,
        });
        assert!(rate.on_failure().is_some());
        assert!(rate.on_failure().is_some());
        assert_eq!(rate.on_failure(), None);
        let mut none = RestartPolicy::new(RestartSpec::None);
        assert_eq!(none.on_failure(), None);
    }

    #[test]
    fn exponential_delay_doubles_up_to_its_maximum() {
        let mut exp = RestartPolicy::new(RestartSpec::ExponentialDelay {
            initial_ms: 1000,
            max_ms: 5000,
            multiplier: 2.0,
            reset_ms: 3_600_000,
            attempts: Some(5),
        });
        let delays: Vec<u64> = std::iter::from_fn(|| exp.on_failure()).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [1000, 2000, 4000, 5000, 5000]);
    }
}
