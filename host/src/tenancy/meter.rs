//! What a tenant uses right now and in total: guest CPU, fuel, linear
//! memory, keyed state, live instances, and dropped log lines.
//!
//! A [`TenantMeter`] is shared by every guest instance and keyed operator of
//! a tenant's jobs. Instances add to it as they run and take back what they
//! held when they are dropped, so the gauges return to zero when a tenant's
//! jobs end (the load test checks exactly that). The meter also carries the
//! tenant's keyed-state ceiling, enforced where state grows: every keyed
//! state backend and timer service draws on a [`StateBudget`] (the job's
//! ceiling and its tenant's) through a [`StateAccount`], before it stores.

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

/// The keyed state and timers of one job, over all its subtasks, with the
/// job's ceiling (`limits.max_state_mb`).
#[derive(Debug, Default)]
pub struct JobStateMeter {
    /// Bytes reserved by the job's subtasks now.
    pub bytes: AtomicI64,
    /// Most the job may hold, bytes; none: unlimited.
    pub limit: Option<u64>,
}

/// Where one job's state is counted: the job's meter and, on a server, its
/// tenant's (whose `max_state_bytes` is the tenant's ceiling).
#[derive(Debug, Clone)]
pub struct StateBudget {
    job: Arc<JobStateMeter>,
    tenant: Option<Arc<TenantMeter>>,
}

/// Writing would take the job's or the tenant's state over its ceiling.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state size limit exceeded: the {scope}'s keyed state and timers would reach {used} bytes; its limit is {limit} bytes")]
pub struct StateLimitExceeded {
    /// "job" or "tenant".
    pub scope: &'static str,
    /// Bytes the scope would hold with this write.
    pub used: u64,
    /// The ceiling.
    pub limit: u64,
}

impl StateBudget {
    /// A budget for one job: `job_limit` bytes, and the tenant's ceiling.
    pub fn new(job_limit: Option<u64>, tenant: Option<Arc<TenantMeter>>) -> Self {
        StateBudget {
            job: Arc::new(JobStateMeter {
                bytes: AtomicI64::new(0),
                limit: job_limit,
            }),
            tenant,
        }
    }

    /// Bytes the job's subtasks hold now (in reservations).
    pub fn job_bytes(&self) -> i64 {
        self.job.bytes.load(Ordering::Relaxed)
    }

    /// Take `n` bytes from the job and the tenant, or neither.
    pub(crate) fn reserve(&self, n: u64) -> Result<(), StateLimitExceeded> {
        let d = i64::try_from(n).unwrap_or(i64::MAX);
        let job = self.job.bytes.fetch_add(d, Ordering::Relaxed).saturating_add(d);
        if let Some(limit) = self.job.limit
            && job > 0
            && job as u64 > limit
        {
            self.job.bytes.fetch_sub(d, Ordering::Relaxed);
            return Err(StateLimitExceeded {
                scope: "job",
                used: job as u64,
                limit,
            });
        }
        if let Some(t) = &self.tenant {
            let total = t.state_bytes.fetch_add(d, Ordering::Relaxed).saturating_add(d);
            if let Some(limit) = t.max_state_bytes
                && total > 0
                && total as u64 > limit
            {
                t.state_bytes.fetch_sub(d, Ordering::Relaxed);
                self.job.bytes.fetch_sub(d, Ordering::Relaxed);
                return Err(StateLimitExceeded {
                    scope: "tenant",
                    used: total as u64,
                    limit,
                });
            }
        }
        Ok(())
    }

    pub(crate) fn release(&self, n: u64) {
        let d = i64::try_from(n).unwrap_or(i64::MAX);
        self.job.bytes.fetch_sub(d, Ordering::Relaxed);
        if let Some(t) = &self.tenant {
            t.state_bytes.fetch_sub(d, Ordering::Relaxed);
        }
    }
}

/// One state holder's (a subtask's keyed state, or its timers) claim on a
/// [`StateBudget`]. It reserves in chunks of [`StateAccount::CHUNK`], so the
/// shared counters are touched once per chunk, not per write; a write that
/// needs more than is reserved reserves first and fails before anything is
/// stored. Dropping the account gives everything back.
#[derive(Debug, Default)]
pub struct StateAccount {
    budget: Option<StateBudget>,
    reserved: u64,
}

impl StateAccount {
    /// Bytes reserved at a time.
    pub const CHUNK: u64 = 256 << 10;

    /// An account drawing on `budget`.
    pub fn new(budget: StateBudget) -> Self {
        StateAccount {
            budget: Some(budget),
            reserved: 0,
        }
    }

    /// The budget this account draws on, if any.
    pub fn budget(&self) -> Option<&StateBudget> {
        self.budget.as_ref()
    }

    /// Make sure `bytes` are reserved, reserving more if needed; fails, with
    /// nothing changed, when that would cross the job's or tenant's ceiling.
    pub fn cover(&mut self, bytes: u64) -> Result<(), StateLimitExceeded> {
        if bytes <= self.reserved {
            return Ok(());
        }
        let Some(b) = &self.budget else {
            self.reserved = bytes;
            return Ok(());
        };
        let need = bytes - self.reserved;
        let chunk = need.div_ceil(Self::CHUNK).saturating_mul(Self::CHUNK);
        // A whole chunk first; near the ceiling, exactly what is needed.
        let got = match b.reserve(chunk) {
            Ok(()) => chunk,
            Err(_) => b.reserve(need).map(|()| need)?,
        };
        self.reserved += got;
        Ok(())
    }

    /// `bytes` are held now: give back what is reserved beyond them and a chunk.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = bytes.saturating_add(Self::CHUNK);
        if self.reserved > keep.saturating_add(Self::CHUNK) {
            if let Some(b) = &self.budget {
                b.release(self.reserved - keep);
            }
            self.reserved = keep;
        }
    }
}

impl Drop for StateAccount {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.release(self.reserved);
        }
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
    fn accounts_reserve_in_chunks_check_both_ceilings_and_give_back_on_drop() {
        let chunk = StateAccount::CHUNK;
        let tenant = TenantMeter::new(Some(3 * chunk));
        let budget = StateBudget::new(Some(2 * chunk), Some(tenant.clone()));
        let mut a = StateAccount::new(budget.clone());
        a.cover(10).unwrap();
        assert_eq!(budget.job_bytes(), chunk as i64, "one chunk for a small write");
        a.cover(chunk).unwrap();
        assert_eq!(budget.job_bytes(), chunk as i64, "covered already");
        // The job's ceiling: 2 chunks. Exactly up to it is fine, past it not.
        a.cover(2 * chunk).unwrap();
        let err = a.cover(2 * chunk + 1).unwrap_err();
        assert_eq!((err.scope, err.limit), ("job", 2 * chunk));
        assert_eq!(budget.job_bytes(), 2 * chunk as i64, "a refused write reserves nothing");
        assert!(err.to_string().contains("state size limit exceeded"), "{err}");
        // The tenant's ceiling, across jobs: 3 chunks.
        let other = StateBudget::new(None, Some(tenant.clone()));
        let mut b = StateAccount::new(other);
        b.cover(chunk).unwrap();
        let err = b.cover(chunk + 1).unwrap_err();
        assert_eq!((err.scope, err.used), ("tenant", 3 * chunk + 1));
        assert_eq!(tenant.state_bytes.load(Ordering::Relaxed), 3 * chunk as i64);
        // Shrinking keeps up to two chunks of slack (no churn at a boundary),
        // and gives back the rest.
        a.shrink_to(0);
        assert_eq!(budget.job_bytes(), 2 * chunk as i64);
        drop(a);
        drop(b);
        assert_eq!(budget.job_bytes(), 0);
        assert_eq!(tenant.state_bytes.load(Ordering::Relaxed), 0);
        let free = StateBudget::new(None, None);
        let mut c = StateAccount::new(free.clone());
        c.cover(5 * chunk).unwrap();
        c.shrink_to(10);
        assert_eq!(free.job_bytes(), (chunk + 10) as i64);
    }

    #[test]
    fn an_account_without_a_budget_never_refuses() {
        let mut a = StateAccount::default();
        a.cover(u64::MAX).unwrap();
    }
}
