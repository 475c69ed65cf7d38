//! Per-instance resource policy: the memory cap, the call deadline, the fuel
//! budget and the guest-log rate limit.
//!
//! Policy lives here; the mechanism (wasmtime's `ResourceLimiter`, the epoch
//! deadline) is wired in `wasm/`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TenantMeter;

/// Limits applied to every guest instance of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimits {
    /// Largest linear memory (all memories together) in bytes. Default 256 MiB.
    pub memory_bytes: usize,
    /// Longest a single call into the guest may run. Default 10 s.
    pub call_timeout: Duration,
    /// Guest log lines allowed per second per instance (a burst of the same
    /// size is allowed). Default 100.
    pub log_lines_per_sec: u32,
    /// Fuel a single call may burn, when the engine meters fuel. Default:
    /// unlimited.
    pub fuel_per_call: Option<u64>,
    /// Largest record (key and value) a call may emit, bytes. Default 16 MiB.
    pub max_record_bytes: usize,
    /// Most bytes of records one call may emit. Default 64 MiB.
    pub max_output_bytes: usize,
    /// Most records one call may emit. Default 4 Mi.
    pub max_output_records: usize,
}

/// Default of [`InstanceLimits::max_record_bytes`] (and of a job's
/// `limits.max_record_bytes`).
pub const DEFAULT_MAX_RECORD_BYTES: usize = 16 << 20;
/// Default of [`InstanceLimits::max_output_bytes`].
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 << 20;
/// Default of [`InstanceLimits::max_output_records`].
pub const DEFAULT_MAX_OUTPUT_RECORDS: usize = 4 << 20;

impl Default for InstanceLimits {
    fn default() -> Self {
        InstanceLimits {
            memory_bytes: 256 << 20,
            call_timeout: Duration::from_secs(10),
            log_lines_per_sec: 100,
            fuel_per_call: None,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            max_output_records: DEFAULT_MAX_OUTPUT_RECORDS,
        }
    }
}

/// Caps linear-memory growth of one store and remembers whether the cap was
/// hit, so a trap can be reported as "memory limit" rather than a bare trap.
/// With a tenant meter, the memory it grants is counted there until the
/// limiter (the store) is dropped.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    used: usize,
    /// Table elements of every table of the store together.
    table_elements: usize,
    meter: Option<Arc<TenantMeter>>,
    /// The size a guest asked for beyond the cap, if it ever did.
    pub exceeded: Option<usize>,
}

impl MemoryLimiter {
    /// A limiter allowing `max_bytes` of linear memory, counted in `meter`.
    pub fn new(max_bytes: usize, meter: Option<Arc<TenantMeter>>) -> Self {
        MemoryLimiter {
            max_bytes,
            used: 0,
            table_elements: 0,
            meter,
            exceeded: None,
        }
    }
}

impl Drop for MemoryLimiter {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.add_memory(-(self.used as i64));
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.used - current.min(self.used) + desired;
        if after > self.max_bytes {
            self.exceeded = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit exceeded: the guest asked for {desired} bytes of linear memory; the limit is {} bytes",
                self.max_bytes
            ));
        }
        if let Some(m) = &self.meter {
            m.add_memory(after as i64 - self.used as i64);
        }
        self.used = after;
        Ok(true)
    }

    /// Tables live in host memory outside the linear-memory cap, so all of
    /// a store's tables together may hold at most [`MAX_TABLE_ELEMENTS`].
    fn table_growing(&mut self, current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let after = self.table_elements.saturating_sub(current).saturating_add(desired);
        if after > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_elements = after;
        Ok(true)
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

/// Most table elements of one guest instance, over all its tables (about
/// 8 bytes each in host memory).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;
/// Most tables of one guest instance.
pub const MAX_TABLES: usize = 100;

/// A token bucket for guest log lines.
#[derive(Debug)]
pub struct LogRateLimiter {
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// Lines dropped since the last report.
    pub dropped: u64,
}

impl LogRateLimiter {
    /// Allow `per_sec` lines per second, with a burst of as many.
    pub fn new(per_sec: u32) -> Self {
        LogRateLimiter {
            per_sec: f64::from(per_sec),
            tokens: f64::from(per_sec),
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// True when a line may be written now; otherwise it is counted as dropped.
    pub fn allow(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_sec;
        self.tokens = (self.tokens + refill).min(self.per_sec.max(1.0));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::ResourceLimiter;

    #[test]
    fn memory_cap_refuses_and_remembers() {
        let meter = TenantMeter::new(None);
        let mut l = MemoryLimiter::new(1 << 20, Some(meter.clone()));
        assert!(l.memory_growing(0, 1 << 19, None).unwrap());
        assert!(l.memory_growing(1 << 19, 1 << 20, None).unwrap());
        let err = l.memory_growing(1 << 20, 2 << 20, None).unwrap_err();
        assert!(err.to_string().contains("memory limit"), "{err}");
        assert_eq!(l.exceeded, Some(2 << 20));
        assert_eq!(meter.memory_bytes.load(std::sync::atomic::Ordering::Relaxed), 1 << 20);
        drop(l);
        assert_eq!(meter.memory_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);
    }

    #[test]
    fn tables_together_are_capped() {
        let mut l = MemoryLimiter::new(1 << 20, None);
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS / 2, None).unwrap());
        assert!(!l.table_growing(0, 1, None).unwrap(), "a third table over the cap");
        // Growing one table counts only the growth.
        assert!(!l.table_growing(MAX_TABLE_ELEMENTS / 2, MAX_TABLE_ELEMENTS / 2 + 1, None).unwrap());
        assert_eq!(l.tables(), MAX_TABLES);
    }

    #[test]
    fn log_flood_is_cut_to_the_rate() {
        let mut l = LogRateLimiter::new(10);
        let allowed = (0..1000).filter(|_| l.allow()).count();
        assert!((10..=11).contains(&allowed), "{allowed}");
        assert!(l.dropped >= 989);
    }
}
