//! Counters of each node of a running job, shared by its tasks and read by
//! the API, the CLI and the cluster's heartbeats.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Counters of one subtask of a node, written only by the task running it.
#[derive(Debug)]
pub(crate) struct SubtaskCounters {
    pub(crate) records_in: AtomicU64,
    pub(crate) records_out: AtomicU64,
    pub(crate) busy_ns: AtomicU64,
    pub(crate) backpressured_ns: AtomicU64,
    /// Its output watermark (`i64::MIN`: none yet).
    pub(crate) watermark: AtomicI64,
    /// Bytes of the records received and emitted (encoded): what a sink
    /// wrote, what a source read.
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// A source's lag behind its input (records; Kafka: end offsets minus
    /// committed offsets), -1: not known.
    pub(crate) lag: AtomicI64,
}

impl Default for SubtaskCounters {
    fn default() -> Self {
        SubtaskCounters {
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            backpressured_ns: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            lag: AtomicI64::new(-1),
        }
    }
}

/// Counters of one node: per subtask, and what its operators report
/// without knowing their subtask (failed and late records).
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    /// The node's name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    pub(crate) failed: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) late_dropped: AtomicU64,
    subtasks: Vec<SubtaskCounters>,
    /// Where a counter of no subtask goes (helpers with parallelism 0,
    /// benchmarks).
    spare: SubtaskCounters,
}

/// One subtask's counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubtaskSample {
    /// Records received.
    pub records_in: u64,
    /// Records emitted.
    pub records_out: u64,
    /// Busy time (ns).
    pub busy_ns: u64,
    /// Backpressured time (ns).
    pub backpressured_ns: u64,
    /// Output watermark (`i64::MIN`: none).
    pub watermark: i64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes emitted.
    pub bytes_out: u64,
    /// A source's lag in records (-1: not known).
    pub lag: i64,
}

impl Default for SubtaskSample {
    fn default() -> Self {
        SubtaskSample {
            records_in: 0,
            records_out: 0,
            busy_ns: 0,
            backpressured_ns: 0,
            watermark: i64::MIN,
            bytes_in: 0,
            bytes_out: 0,
            lag: -1,
        }
    }
}

impl OperatorMetrics {
    /// Counters of a node with `parallelism` subtasks.
    pub fn new(name: &str, parallelism: u32) -> Self {
        OperatorMetrics {
            name: name.to_owned(),
            parallelism,
            subtasks: (0..parallelism).map(|_| SubtaskCounters::default()).collect(),
            ..Default::default()
        }
    }

    /// The counters of subtask `subtask`.
    pub(crate) fn at(&self, subtask: u32) -> &SubtaskCounters {
        self.subtasks.get(subtask as usize).unwrap_or(&self.spare)
    }

    fn sum(&self, f: impl Fn(&SubtaskCounters) -> &AtomicU64) -> u64 {
        self.subtasks
            .iter()
            .chain(std::iter::once(&self.spare))
            .map(|s| f(s).load(Ordering::Relaxed))
            .sum()
    }

    /// Time its subtasks spent working (not waiting for input, not blocked
    /// on a full output), summed over subtasks. Nodes chained into one task
    /// share their task's figure, as in Flink.
    pub fn busy(&self) -> Duration {
        Duration::from_nanos(self.sum(|s| &s.busy_ns))
    }
    /// Time its subtasks were blocked because a downstream channel was full.
    pub fn backpressured(&self) -> Duration {
        Duration::from_nanos(self.sum(|s| &s.backpressured_ns))
    }
    /// The lowest output watermark over its subtasks, once every subtask
    /// has one.
    pub fn watermark(&self) -> Option<i64> {
        let min = self.subtasks.iter().map(|s| s.watermark.load(Ordering::Relaxed)).min()?;
        (min != i64::MIN).then_some(min)
    }
    pub(crate) fn set_watermark(&self, subtask: u32, watermark: i64) {
        if let Some(s) = self.subtasks.get(subtask as usize) {
            s.watermark.store(watermark, Ordering::Relaxed);
        }
    }
    /// Records received.
    pub fn records_in(&self) -> u64 {
        self.sum(|s| &s.records_in)
    }
    /// Records emitted.
    pub fn records_out(&self) -> u64 {
        self.sum(|s| &s.records_out)
    }
    /// Bytes of the records received (a sink: what it wrote).
    pub fn bytes_in(&self) -> u64 {
        self.sum(|s| &s.bytes_in)
    }
    /// Bytes of the records emitted (a source: what it read).
    pub fn bytes_out(&self) -> u64 {
        self.sum(|s| &s.bytes_out)
    }
    /// A source's lag in records, summed over the subtasks that know theirs.
    pub fn lag(&self) -> Option<u64> {
        let known: Vec<i64> = self
            .subtasks
            .iter()
            .map(|s| s.lag.load(Ordering::Relaxed))
            .filter(|l| *l >= 0)
            .collect();
        (!known.is_empty()).then(|| known.iter().map(|l| *l as u64).sum())
    }
    pub(crate) fn set_lag(&self, subtask: u32, lag: u64) {
        if let Some(s) = self.subtasks.get(subtask as usize) {
            s.lag.store(lag.min(i64::MAX as u64) as i64, Ordering::Relaxed);
        }
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

    /// Each subtask's counters now.
    pub fn subtasks(&self) -> Vec<SubtaskSample> {
        self.subtasks.iter().map(sample_of).collect()
    }
}

fn sample_of(s: &SubtaskCounters) -> SubtaskSample {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    SubtaskSample {
        records_in: get(&s.records_in),
        records_out: get(&s.records_out),
        busy_ns: get(&s.busy_ns),
        backpressured_ns: get(&s.backpressured_ns),
        watermark: s.watermark.load(Ordering::Relaxed),
        bytes_in: get(&s.bytes_in),
        bytes_out: get(&s.bytes_out),
        lag: s.lag.load(Ordering::Relaxed),
    }
}

/// The counters of one node at one moment, to add up across processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSample {
    /// Records reported failed.
    pub failed: u64,
    /// Late records.
    pub late: u64,
    /// Late records dropped.
    pub late_dropped: u64,
    /// By subtask.
    pub subtasks: Vec<SubtaskSample>,
}

impl MetricsSample {
    /// Add `other` (another process's counters of the same node): counts
    /// add up, a subtask's watermark is the one its process reports.
    pub fn add(&mut self, other: &MetricsSample) {
        self.failed += other.failed;
        self.late += other.late;
        self.late_dropped += other.late_dropped;
        if self.subtasks.len() < other.subtasks.len() {
            self.subtasks.resize(other.subtasks.len(), SubtaskSample::default());
        }
        for (s, o) in self.subtasks.iter_mut().zip(&other.subtasks) {
            s.records_in += o.records_in;
            s.records_out += o.records_out;
            s.busy_ns += o.busy_ns;
            s.backpressured_ns += o.backpressured_ns;
            s.watermark = s.watermark.max(o.watermark);
            s.bytes_in += o.bytes_in;
            s.bytes_out += o.bytes_out;
            // A subtask runs in one process: the one that knows its lag.
            s.lag = s.lag.max(o.lag);
        }
    }
}

impl OperatorMetrics {
    /// Its counters now.
    pub fn sample(&self) -> MetricsSample {
        MetricsSample {
            failed: self.failed.load(Ordering::Relaxed),
            late: self.late.load(Ordering::Relaxed),
            late_dropped: self.late_dropped.load(Ordering::Relaxed),
            subtasks: self.subtasks(),
        }
    }

    /// Replace its counters by `s` (the sum over the processes that run
    /// its subtasks).
    pub fn set_sample(&self, s: &MetricsSample) {
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&self.failed, s.failed);
        set(&self.late, s.late);
        set(&self.late_dropped, s.late_dropped);
        for (c, v) in self.subtasks.iter().zip(&s.subtasks) {
            set(&c.records_in, v.records_in);
            set(&c.records_out, v.records_out);
            set(&c.busy_ns, v.busy_ns);
            set(&c.backpressured_ns, v.backpressured_ns);
            c.watermark.store(v.watermark, Ordering::Relaxed);
            set(&c.bytes_in, v.bytes_in);
            set(&c.bytes_out, v.bytes_out);
            c.lag.store(v.lag, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtasks_count_apart_and_samples_add_up_across_processes() {
        let m = OperatorMetrics::new("count", 2);
        m.at(0).records_in.fetch_add(5, Ordering::Relaxed);
        m.at(1).records_in.fetch_add(7, Ordering::Relaxed);
        m.at(9).records_in.fetch_add(1, Ordering::Relaxed);
        m.set_watermark(1, 40);
        assert_eq!(m.records_in(), 13);
        assert_eq!(m.watermark(), None, "subtask 0 has none yet");
        let a = m.sample();
        let mut total = MetricsSample {
            subtasks: vec![SubtaskSample::default(); 2],
            ..Default::default()
        };
        total.add(&a);
        total.add(&MetricsSample {
            failed: 1,
            subtasks: vec![
                SubtaskSample {
                    records_in: 2,
                    watermark: 30,
                    ..Default::default()
                },
                SubtaskSample::default(),
            ],
            ..Default::default()
        });
        let sum = OperatorMetrics::new("count", 2);
        sum.set_sample(&total);
        assert_eq!(sum.subtasks()[0].records_in, 7);
        assert_eq!(sum.subtasks()[1].records_in, 7);
        assert_eq!(sum.records_failed(), 1);
        assert_eq!(sum.watermark(), Some(30));
    }
}
