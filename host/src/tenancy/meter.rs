//! What a tenant uses right now and in total: guest CPU, fuel, linear
//! memory, keyed state, live instances, and dropped log lines.
//!
//! A [`TenantMeter`] is shared by every guest instance and keyed operator of
//! a tenant's jobs. Instances add to it as they run and take back what they
//! held when they are dropped, so the gauges return to zero when a tenant's
//! jobs end (the load test checks exactly that). The meter also carries the
//! one quota that is enforced where state grows: the tenant's keyed-state
//! ceiling ([`StateGauge`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A `kB` field of this process's `/proc/self/status` (`VmRSS`, `VmHWM`…),
/// in KiB; none where there is no such file or field.
pub fn process_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Usage counters of one tenant.
#[derive(Debug, Default)]
pub struct TenantMeter {
    /// Nanoseconds spent inside guest calls (total).
    pub guest_cpu_ns: AtomicU64,
    /// Fuel consumed by guests (total; only with fuel metering on).
    pub fuel: AtomicU64,
    /// Guest linear memory held now, bytes.
    pub memory_bytes: AtomicI64,
    /// Keyed state held now, bytes.
    pub state_bytes: AtomicI64,
    /// Guest instances alive now.
    pub instances: AtomicI64,
    /// Guest log lines dropped by the rate limit (total).
    pub log_lines_dropped: AtomicU64,
    /// Most keyed state the tenant may hold, bytes; none: unlimited.
    pub max_state_bytes: Option<u64>,
}

impl TenantMeter {
    /// A meter whose keyed state may not exceed `max_state_bytes`.
    pub fn new(max_state_bytes: Option<u64>) -> Arc<Self> {
        Arc::new(TenantMeter {
            max_state_bytes,
            ..Default::default()
        })
    }

    /// Add `delta` bytes of linear memory.
    pub fn add_memory(&self, delta: i64) {
        self.memory_bytes.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Publishes the size of one subtask's keyed state to its tenant's meter
/// and checks the tenant's ceiling. Dropping it takes the size back.
#[derive(Debug)]
pub struct StateGauge {
    meter: Arc<TenantMeter>,
    published: i64,
}

/// The tenant's keyed state would exceed its quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state size limit exceeded: the tenant's keyed state reached {used} bytes; its limit is {limit} bytes")]
pub struct StateLimitExceeded {
    /// Bytes held by the tenant with this subtask's newest size.
    pub used: u64,
    /// The quota.
    pub limit: u64,
}

impl StateGauge {
    /// A gauge publishing into `meter`.
    pub fn new(meter: Arc<TenantMeter>) -> Self {
        StateGauge { meter, published: 0 }
    }

    /// Record that the subtask now holds `bytes` of keyed state; fails when
    /// the tenant as a whole is over its ceiling and this subtask grew.
    pub fn publish(&mut self, bytes: usize) -> Result<(), StateLimitExceeded> {
        let now = i64::try_from(bytes).unwrap_or(i64::MAX);
        let delta = now - self.published;
        if delta == 0 {
            return Ok(());
        }
        self.published = now;
        let total = self.meter.state_bytes.fetch_add(delta, Ordering::Relaxed) + delta;
        match self.meter.max_state_bytes {
            Some(limit) if delta > 0 && total > 0 && total as u64 > limit => Err(StateLimitExceeded { used: total as u64, limit }),
            _ => Ok(()),
        }
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        self.meter.state_bytes.fetch_sub(self.published, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_memory() {
        let rss = process_status_kb("VmRSS").expect("Linux has /proc/self/status");
        assert!(rss > 0 && process_status_kb("VmHWM").unwrap() >= rss);
        assert_eq!(process_status_kb("NoSuchField"), None);
    }

    #[test]
    fn state_gauges_sum_check_the_ceiling_and_give_back_on_drop() {
        let meter = TenantMeter::new(Some(100));
        let mut a = StateGauge::new(meter.clone());
        let mut b = StateGauge::new(meter.clone());
        a.publish(60).unwrap();
        b.publish(30).unwrap();
        assert_eq!(meter.state_bytes.load(Ordering::Relaxed), 90);
        let err = b.publish(50).unwrap_err();
        assert_eq!(err, StateLimitExceeded { used: 110, limit: 100 });
        // Shrinking below the ceiling is always allowed.
        b.publish(10).unwrap();
        drop(a);
        drop(b);
        assert_eq!(meter.state_bytes.load(Ordering::Relaxed), 0);
    }
}
