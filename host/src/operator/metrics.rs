//! Counters of each node of a running job, shared by its tasks and read by
//! the API, the CLI and the cluster's heartbeats.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one node (all subtasks together).
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    /// The node's name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) late_dropped: AtomicU64,
    pub(crate) busy_ns: AtomicU64,
    pub(crate) backpressured_ns: AtomicU64,
    /// The output watermark of each subtask (`i64::MIN`: none yet).
    pub(crate) watermarks: Vec<AtomicI64>,
}

impl OperatorMetrics {
    /// Counters of a node with `parallelism` subtasks.
    pub fn new(name: &str, parallelism: u32) -> Self {
        OperatorMetrics {
            name: name.to_owned(),
            parallelism,
            watermarks: (0..parallelism).map(|_| AtomicI64::new(i64::MIN)).collect(),
            ..Default::default()
        }
    }
    /// Time its subtasks spent working (not waiting for input, not blocked
    /// on a full output), summed over subtasks. Nodes chained into one task
    /// share their task's figure, as in Flink.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }
    /// Time its subtasks were blocked because a downstream channel was full.
    pub fn backpressured(&self) -> Duration {
        Duration::from_nanos(self.backpressured_ns.load(Ordering::Relaxed))
    }
    /// The lowest output watermark over its subtasks, once every subtask
    /// has one.
    pub fn watermark(&self) -> Option<i64> {
        let min = self.watermarks.iter().map(|w| w.load(Ordering::Relaxed)).min()?;
        (min != i64::MIN).then_some(min)
    }
    pub(crate) fn set_watermark(&self, subtask: u32, watermark: i64) {
        if let Some(w) = self.watermarks.get(subtask as usize) {
            w.store(watermark, Ordering::Relaxed);
        }
    }
    /// Records received.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }
    /// Records emitted.
    pub fn records_out(&self) -> u64 {
        self.records_out.load(Ordering::Relaxed)
    }
    /// Records reported failed and skipped.
    pub fn records_failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
    /// Records that arrived after their windows' allowed lateness.
    pub fn records_late(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }
    /// Late records dropped because no edge reads the `late` output.
    pub fn records_late_dropped(&self) -> u64 {
        self.late_dropped.load(Ordering::Relaxed)
    }
    pub(crate) fn add_failed(&self, n: u64) {
        self.failed.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn add_late(&self, n: u64, dropped: bool) {
        self.late.fetch_add(n, Ordering::Relaxed);
        if dropped {
            self.late_dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The counters of one node at one moment, to add up across processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSample {
    /// Records received.
    pub records_in: u64,
    /// Records emitted.
    pub records_out: u64,
    /// Records reported failed.
    pub failed: u64,
    /// Late records.
    pub late: u64,
    /// Late records dropped.
    pub late_dropped: u64,
    /// Busy time (ns).
    pub busy_ns: u64,
    /// Backpressured time (ns).
    pub backpressured_ns: u64,
    /// Output watermark by subtask (`i64::MIN`: none).
    pub watermarks: Vec<i64>,
}

impl OperatorMetrics {
    /// Its counters now.
    pub fn sample(&self) -> MetricsSample {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSample {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            failed: get(&self.failed),
            late: get(&self.late),
            late_dropped: get(&self.late_dropped),
            busy_ns: get(&self.busy_ns),
            backpressured_ns: get(&self.backpressured_ns),
            watermarks: self.watermarks.iter().map(|w| w.load(Ordering::Relaxed)).collect(),
        }
    }

    /// Replace its counters by `s` (the sum over the processes that run
    /// its subtasks).
    pub fn set_sample(&self, s: &MetricsSample) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.records_in, s.records_in);
        set(&self.records_out, s.records_out);
        set(&self.failed, s.failed);
        set(&self.late, s.late);
        set(&self.late_dropped, s.late_dropped);
        set(&self.busy_ns, s.busy_ns);
        set(&self.backpressured_ns, s.backpressured_ns);
        for (w, v) in self.watermarks.iter().zip(&s.watermarks) {
            w.store(*v, Ordering::Relaxed);
        }
    }
}
