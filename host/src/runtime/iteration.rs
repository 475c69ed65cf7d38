//! Iterations: a keyed-process operator (the head) whose feedback edge
//! takes some of its output back into its own input 1.
//!
//! ```text
//!   input 0 ──► head#0..p ──► results (edges without feedback)
//!                 ▲    │
//!                 └────┘ feedback edge: hash, unbounded channels,
//!                        records counted in the loop until processed
//! ```
//!
//! The subtasks of a head share one [`IterationLoop`]: the records sent
//! into feedback channels and not yet processed (counted before they are
//! sent, uncounted after the batch carrying them has been processed, so
//! the count is never zero while a record that could make more is under
//! way). The loop terminates when every subtask's regular inputs have
//! ended and the count is zero: nothing can enter the loop any more. The
//! heads then see the watermark they held back (the end of event time),
//! and end their feedback edges. Feedback channels are unbounded (a bounded
//! channel in a cycle can deadlock) but the records in the loop are capped
//! in bytes; they carry no watermarks (they are idle for the head's valve);
//! a `Round` element before a batch tells its round.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use sluice_guest::batch::BatchWriter;

use super::channel::RecordBatch;
use crate::checkpoint::format::append_operator_state;
use crate::checkpoint::{Barrier, NodeSnapshot};
use crate::job::plan::ExecutionPlan;
use crate::operator::TaskError;
use crate::state::{KeyGroup, KeyGroupRange};
use crate::tenancy::StateBudget;

/// Most bytes of records in one loop's feedback channels: past it the job
/// fails (naming the head) rather than the process running out of memory.
pub const MAX_FEEDBACK_BYTES: u64 = 512 << 20;

#[derive(Debug, Default)]
struct LoopState {
    records: u64,
    bytes: u64,
    ended: u32,
    terminated: bool,
    dropped_rounds: u64,
    dropped_late: u64,
}

/// The shared state of one iteration (one head operator) in one attempt.
#[derive(Debug)]
pub(crate) struct IterationLoop {
    head: String,
    parallelism: u32,
    max_bytes: u64,
    state: Mutex<LoopState>,
    /// Records in flight count as the job's (and tenant's) state.
    budget: Option<StateBudget>,
}

/// What became of records offered to a feedback edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Counted in the loop: send them.
    Send,
    /// The loop has terminated: drop them.
    Terminated,
}

impl IterationLoop {
    pub fn new(head: &str, parallelism: u32, max_bytes: u64, budget: Option<StateBudget>) -> Self {
        IterationLoop {
            head: head.to_owned(),
            parallelism,
            max_bytes,
            state: Mutex::new(LoopState::default()),
            budget,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, LoopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `records` records of `bytes` bytes are about to be sent on the
    /// feedback edge.
    pub fn admit(&self, records: u64, bytes: u64) -> Result<Admit, TaskError> {
        let mut s = self.state();
        if s.terminated {
            s.dropped_late += records;
            return Ok(Admit::Terminated);
        }
        if s.bytes.saturating_add(bytes) > self.max_bytes {
            return Err(TaskError::Internal(format!(
                "the feedback edge of iteration `{}` holds more than {} MiB of records in flight: \
                 its step sends records round faster than they are processed (cap the rounds with `max_rounds`, \
                 or send fewer records back)",
                self.head,
                self.max_bytes >> 20
            )));
        }
        if let Some(b) = &self.budget {
            b.reserve(bytes)
                .map_err(|e| TaskError::Internal(format!("the records in flight in iteration `{}` count as state: {e}", self.head)))?;
        }
        s.records += records;
        s.bytes += bytes;
        Ok(Admit::Send)
    }

    /// A batch of `records` feedback records (`bytes` bytes) has been
    /// processed, everything it made sent.
    pub fn processed(&self, records: u64, bytes: u64) {
        let mut s = self.state();
        s.records = s.records.saturating_sub(records);
        let bytes = bytes.min(s.bytes);
        s.bytes -= bytes;
        if let Some(b) = &self.budget {
            b.release(bytes);
        }
    }

    /// Records dropped at the round limit.
    pub fn dropped_at_limit(&self, records: u64) {
        self.state().dropped_rounds += records;
    }

    /// One head subtask has seen the end of all its regular inputs.
    pub fn inputs_ended(&self) {
        self.state().ended += 1;
    }

    /// Has the loop terminated? Decides it when every head subtask's
    /// regular inputs have ended and no record is in the loop.
    pub fn terminated(&self) -> bool {
        let mut s = self.state();
        if !s.terminated && s.ended >= self.parallelism && s.records == 0 {
            s.terminated = true;
            if s.dropped_rounds > 0 {
                tracing::info!(
                    iteration = %self.head,
                    "the loop is empty; {} records reached the round limit and were dropped",
                    s.dropped_rounds
                );
            }
        }
        s.terminated
    }

    /// Records dropped at the round limit, and records sent back after the
    /// loop terminated (by processing-time timers, say).
    #[cfg(test)]
    pub fn dropped(&self) -> (u64, u64) {
        let s = self.state();
        (s.dropped_rounds, s.dropped_late)
    }
}

/// A snapshot of a head subtask waiting for its barrier to come back
/// round the loop, with the feedback records that arrived meanwhile.
pub(crate) struct PendingLog {
    pub barrier: Barrier,
    pub parts: Vec<NodeSnapshot>,
    /// By channel: the barrier came back on it (or it is no feedback
    /// channel, or it ended).
    pub arrived: Vec<bool>,
    /// (round, records) in arrival order.
    pub log: Vec<(u32, RecordBatch)>,
}

/// What a head subtask keeps of its iteration.
pub(crate) struct HeadLoop {
    pub lp: Arc<IterationLoop>,
    /// The head's node name (its part of a snapshot carries the log).
    pub node: String,
    /// By channel: a feedback channel.
    pub is_feedback: Vec<bool>,
    /// By channel: the round of the batches that follow.
    pub round_of: Vec<u32>,
    /// By channel: the newest barrier that came back on it before this
    /// subtask took that snapshot (the channel is held until then).
    pub early: Vec<Option<Barrier>>,
    /// By channel: it ended.
    pub ended: Vec<bool>,
    /// Regular channels not yet ended.
    pub regular_open: usize,
    /// The end of event time, held back while the loop runs.
    pub held_max: bool,
    pub terminated: bool,
    pub pending: VecDeque<PendingLog>,
    /// Restored in-flight records, processed before anything else.
    pub replay: Vec<(u32, RecordBatch)>,
}

impl HeadLoop {
    /// A head over channels of which `is_feedback` are its feedback.
    pub fn new(lp: Arc<IterationLoop>, node: &str, is_feedback: Vec<bool>, replay: Vec<(u32, RecordBatch)>) -> Self {
        let n = is_feedback.len();
        HeadLoop {
            lp,
            node: node.to_owned(),
            regular_open: is_feedback.iter().filter(|f| !**f).count(),
            is_feedback,
            round_of: vec![1; n],
            early: vec![None; n],
            ended: vec![false; n],
            held_max: false,
            terminated: false,
            pending: VecDeque::new(),
            replay,
        }
    }

    /// A batch arrived on feedback channel `i`: log it for every snapshot
    /// whose barrier has not come back on `i`.
    pub fn log(&mut self, i: usize, batch: &RecordBatch) {
        let round = self.round_of[i];
        for p in self.pending.iter_mut().filter(|p| !p.arrived[i]) {
            p.log.push((round, batch.clone()));
        }
    }

    /// This subtask took the snapshot of `barrier`: wait for it to come
    /// back on every feedback channel that has not already delivered it.
    pub fn snapshot_taken(&mut self, barrier: Barrier, parts: Vec<NodeSnapshot>) {
        let arrived = (0..self.is_feedback.len())
            .map(|i| !self.is_feedback[i] || self.ended[i] || self.early[i].is_some_and(|b| b.id >= barrier.id))
            .collect();
        self.pending.push_back(PendingLog {
            barrier,
            parts,
            arrived,
            log: Vec::new(),
        });
    }

    /// Feedback channels to hold after snapshot `id`: those that already
    /// delivered a newer barrier.
    pub fn held_after(&self, id: u64) -> impl Iterator<Item = usize> + '_ {
        (0..self.early.len()).filter(move |&i| self.is_feedback[i] && self.early[i].is_some_and(|b| b.id > id && b.aligned))
    }

    /// The newest barrier that came back before this subtask's snapshot of
    /// it, if it is newer than `last` (the last snapshot taken).
    pub fn newest_early(&self, last: u64) -> Option<Barrier> {
        self.early.iter().flatten().filter(|b| b.id > last).max_by_key(|b| b.id).copied()
    }

    /// Barrier `id` came back on `i` (or `i` ended, `id` none): mark it.
    pub fn arrived(&mut self, i: usize, id: Option<u64>) {
        for p in &mut self.pending {
            if id.is_none_or(|id| p.barrier.id == id) {
                p.arrived[i] = true;
            }
        }
    }

    /// Snapshots complete: the barrier is back on every feedback channel.
    /// Their log is added to the head's part.
    pub fn take_complete(&mut self) -> Result<Vec<(Barrier, Vec<NodeSnapshot>)>, TaskError> {
        let mut done = Vec::new();
        while let Some(i) = self.pending.iter().position(|p| p.arrived.iter().all(|a| *a)) {
            let Some(mut p) = self.pending.remove(i) else { break };
            let log = encode_log(&p.log);
            if let Some(part) = p.parts.iter_mut().find(|n| n.node == self.node)
                && let Some(payload) = &mut part.state.payload
            {
                append_operator_state(payload, LOG_STATE, &log).map_err(|e| TaskError::Internal(e.to_string()))?;
            }
            done.push((p.barrier, p.parts));
        }
        Ok(done)
    }
}

/// The name of the log in a head's snapshot.
pub(crate) const LOG_STATE: &str = "feedback";

/// `(round u32, count u32, length u64, packed batch)*`.
fn encode_log(log: &[(u32, RecordBatch)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(log.iter().map(|(_, b)| b.bytes.len() + 16).sum());
    for (round, b) in log {
        out.extend_from_slice(&round.to_le_bytes());
        out.extend_from_slice(&(b.len as u32).to_le_bytes());
        out.extend_from_slice(&(b.bytes.len() as u64).to_le_bytes());
        out.extend_from_slice(&b.bytes);
    }
    out
}

/// The logged records of the restored snapshots `logs` whose key groups
/// are in `range`, by round: what was in flight in the loop.
pub(crate) fn restore_log(logs: &[&[u8]], range: KeyGroupRange, max_parallelism: u32) -> Result<Vec<(u32, RecordBatch)>, String> {
    let mut by_round: std::collections::BTreeMap<u32, BatchWriter> = Default::default();
    for log in logs {
        let mut at = 0usize;
        while at < log.len() {
            let head = log
                .get(at..at.saturating_add(16))
                .ok_or_else(|| format!("the feedback log is cut short at byte {at}"))?;
            let round = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
            let count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let len = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
            let len = usize::try_from(len)
                .ok()
                .filter(|&l| l <= log.len() - at - 16)
                .ok_or_else(|| format!("a batch of the feedback log at byte {at} claims {len} bytes, more than the log has"))?;
            let bytes = &log[at + 16..at + 16 + len];
            let batch = sluice_guest::batch::Batch::new(bytes);
            let seen = batch
                .validate()
                .map_err(|e| format!("a batch of the feedback log at byte {at} does not parse: {e}"))?;
            for r in batch.iter().map_while(Result::ok) {
                let Some(k) = r.key else {
                    return Err("a logged feedback record has no key".to_owned());
                };
                if range.contains(KeyGroup::of(k, max_parallelism)) {
                    by_round.entry(round).or_default().push_ref(&r);
                }
            }
            if seen != count {
                return Err(format!(
                    "a batch of the feedback log at byte {at} holds {seen} records, not {count}"
                ));
            }
            at += 16 + len;
        }
    }
    Ok(by_round
        .into_iter()
        .map(|(round, mut w)| {
            let len = w.len();
            (round, RecordBatch { bytes: w.take(), len })
        })
        .collect())
}

impl Drop for IterationLoop {
    /// Records still in flight when an attempt ends give their bytes back.
    fn drop(&mut self) {
        let bytes = self.state().bytes;
        if let Some(b) = &self.budget {
            b.release(bytes);
        }
    }
}

/// The iterations of one attempt, by head node name.
pub(crate) type Loops = HashMap<String, Arc<IterationLoop>>;

/// A loop for every head of `plan` (a node with a feedback edge), its
/// records in flight counted in `budget`.
pub(crate) fn loops_of(plan: &ExecutionPlan, budget: &StateBudget) -> Loops {
    let mut loops = Loops::new();
    for t in &plan.tasks {
        if t.outputs.iter().any(|o| o.feedback)
            && let Some(head) = t.operators.last()
        {
            loops.entry(head.name.clone()).or_insert_with(|| {
                Arc::new(IterationLoop::new(
                    &head.name,
                    head.parallelism,
                    MAX_FEEDBACK_BYTES,
                    Some(budget.clone()),
                ))
            });
        }
    }
    loops
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_terminates_once_every_head_ended_and_nothing_is_in_flight() {
        let budget = StateBudget::new(Some(60), None);
        let l = IterationLoop::new("cc", 2, 1000, Some(budget.clone()));
        assert_eq!(l.admit(3, 30).unwrap(), Admit::Send);
        l.inputs_ended();
        l.inputs_ended();
        assert!(!l.terminated(), "records are in flight");
        // Processing a batch sends more before it counts as processed.
        assert_eq!(l.admit(2, 20).unwrap(), Admit::Send);
        l.processed(3, 30);
        assert!(!l.terminated());
        assert_eq!(budget.job_bytes(), 20, "records in flight count as state");
        assert!(l.admit(1, 41).unwrap_err().to_string().contains("count as state"));
        l.processed(2, 20);
        assert!(l.terminated());
        assert_eq!(budget.job_bytes(), 0);
        assert_eq!(l.admit(1, 10).unwrap(), Admit::Terminated);
        assert_eq!(l.dropped(), (0, 1));
        let e = IterationLoop::new("cc", 1, 100, None).admit(1, 101).unwrap_err();
        assert!(e.to_string().contains("iteration `cc`"), "{e}");
    }

    #[test]
    fn a_loop_waits_for_every_head() {
        let l = IterationLoop::new("cc", 2, 1000, None);
        l.inputs_ended();
        assert!(!l.terminated(), "one head's input is still open");
        l.inputs_ended();
        assert!(l.terminated());
    }
}
