//! A task: one subtask of a chain, running on its own thread. Its mailbox
//! loop reads a source or an input gate, drives the chain's operators, aligns
//! checkpoint barriers and writes to the output edges.
//!
//! ```text
//!  loop: cancelled? ─► barriers to inject (source tasks) ─► read input
//!        records ─► chain ─► edges     watermark/idle ─► valve ─► chain
//!        barrier ─► align (exactly-once) ─► snapshot ─► writer ─► forward
//!  end of input: finish operators, EndOfData downstream, final snapshot
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::channel::{GateEvent, InputGate, RecordBatch, StreamElement};
use super::iteration::HeadLoop;
use super::partition::EdgeWriter;
use crate::checkpoint::writer::WriteJob;
use crate::checkpoint::{Barrier, BarrierKind, NodeSnapshot, OperatorSnapshot, SnapshotWriter};
use crate::connectors::SourceReader;
use crate::operator::OperatorMetrics;
use crate::operator::TaskError;
use crate::operator::{Emit, Operator};
use crate::spec::OutputTag;
use crate::time::watermarks::ValveOutput;
use crate::time::{Clock, IdleTracker, WatermarkValve};

/// Final states of an attempt's finished tasks, by task index, kept by the
/// task's host for the checkpoints that follow.
pub(crate) type Finals = Arc<Mutex<HashMap<usize, Arc<Vec<NodeSnapshot>>>>>;

/// What a task tells its host when it ends.
pub(crate) enum TaskExit {
    /// Its input ended and its operators finished; with checkpoints, the
    /// last barrier it saw (its final state is in [`Finals`]).
    Finished {
        /// The last barrier.
        last_barrier: Option<u64>,
    },
    /// It failed.
    Failed(TaskError),
}

pub(crate) enum Input {
    Source {
        reader: Box<dyn SourceReader>,
        idle: IdleTracker,
    },
    Gate {
        gate: Box<dyn InputGate>,
        valve: WatermarkValve,
        /// Input number (0 or 1) of each channel.
        input_of: Vec<usize>,
    },
}

pub(crate) struct OpSlot {
    pub op: Box<dyn Operator>,
    pub metrics: Arc<OperatorMetrics>,
    /// The node it runs (none for helpers such as watermark assigners).
    pub node: Option<String>,
}

/// The rest of a chain, seen from the operator before it.
struct Downstream<'a> {
    from: Option<&'a OperatorMetrics>,
    ops: &'a mut [OpSlot],
    writers: &'a mut [EdgeWriter],
    gauges: &'a TaskGauges,
}

/// Where a task reports its time and output watermark: every node of its
/// chain.
pub(crate) struct TaskGauges {
    pub subtask: u32,
    pub nodes: Vec<Arc<OperatorMetrics>>,
    /// Nanoseconds the task's writers spent blocked on full channels.
    pub blocked_ns: Arc<AtomicU64>,
}

impl TaskGauges {
    fn watermark(&self, watermark: i64) {
        for n in &self.nodes {
            n.set_watermark(self.subtask, watermark);
        }
    }

    /// Account one unit of work that started at `started`, during which
    /// the writers were blocked for `blocked` ns in all.
    fn work(&self, started: Instant, blocked_before: u64) {
        let blocked = self.blocked_ns.load(Ordering::Relaxed).saturating_sub(blocked_before);
        let busy = (started.elapsed().as_nanos() as u64).saturating_sub(blocked);
        for n in &self.nodes {
            let c = n.at(self.subtask);
            c.busy_ns.fetch_add(busy, Ordering::Relaxed);
            c.backpressured_ns.fetch_add(blocked, Ordering::Relaxed);
        }
    }
}

impl Downstream<'_> {
    /// Pass a batch from input `input` to the first operator, or to the
    /// main-output edges at the end of the chain.
    fn push(&mut self, input: usize, batch: RecordBatch) -> Result<(), TaskError> {
        if let Some(m) = self.from {
            let c = m.at(self.gauges.subtask);
            c.records_out.fetch_add(batch.len as u64, Ordering::Relaxed);
            c.bytes_out.fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
        }
        if batch.len == 0 {
            return Ok(());
        }
        match self.ops.split_first_mut() {
            Some((first, rest)) => {
                let c = first.metrics.at(self.gauges.subtask);
                c.records_in.fetch_add(batch.len as u64, Ordering::Relaxed);
                c.bytes_in.fetch_add(batch.bytes.len() as u64, Ordering::Relaxed);
                first.op.process(
                    input,
                    batch,
                    &mut Downstream {
                        from: Some(&first.metrics),
                        ops: rest,
                        writers: self.writers,
                        gauges: self.gauges,
                    },
                )
            }
            None => write_to(self.writers, OutputTag::Main, batch),
        }
    }

    fn idle(&mut self, idle: bool) -> Result<(), TaskError> {
        for w in self.writers.iter_mut() {
            w.broadcast(StreamElement::Idle(idle))?;
        }
        Ok(())
    }
}

fn write_to(writers: &mut [EdgeWriter], tag: OutputTag, batch: RecordBatch) -> Result<(), TaskError> {
    let n = writers.iter().filter(|w| w.output == tag).count();
    let mut seen = 0;
    for w in writers.iter_mut().filter(|w| w.output == tag) {
        seen += 1;
        if seen == n {
            return w.write(batch);
        }
        w.write(batch.clone())?;
    }
    Ok(())
}

impl Emit for Downstream<'_> {
    fn emit(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        self.push(0, batch)
    }

    fn emit_late(&mut self, batch: RecordBatch) -> Result<(), TaskError> {
        // An operator with a `late` edge always ends its chain.
        if self.ops.is_empty() && batch.len > 0 {
            return write_to(self.writers, OutputTag::Late, batch);
        }
        Ok(())
    }

    fn has_late_output(&self) -> bool {
        self.ops.is_empty() && self.writers.iter().any(|w| w.output == OutputTag::Late)
    }

    fn watermark(&mut self, watermark: i64) -> Result<(), TaskError> {
        match self.ops.split_first_mut() {
            Some((first, rest)) => first.op.on_watermark(
                watermark,
                &mut Downstream {
                    from: Some(&first.metrics),
                    ops: rest,
                    writers: self.writers,
                    gauges: self.gauges,
                },
            ),
            None => {
                self.gauges.watermark(watermark);
                for w in self.writers.iter_mut() {
                    w.broadcast(StreamElement::Watermark(watermark))?;
                }
                Ok(())
            }
        }
    }
}

/// How long a task waits for input before it looks at the clock again.
pub(crate) const POLL: Duration = Duration::from_millis(10);

/// A task's part in checkpointing.
pub(crate) struct TaskCheckpoints {
    pub attempt: u32,
    /// Barriers to inject (source tasks).
    pub triggers: Option<Receiver<Barrier>>,
    pub writer: Sender<WriteJob>,
    /// Where the final state goes when the input ends.
    pub finals: Finals,
    pub last_barrier: u64,
    /// The barrier being aligned, and which channels delivered it.
    pub aligning: Option<(Barrier, Vec<bool>)>,
    /// Channels that ended.
    pub ended: Vec<bool>,
    /// A source after a stop-with-savepoint barrier: reads nothing more.
    pub stopped: bool,
}

/// Read every channel of a gate again after an alignment.
fn unblock_all(gate: &mut dyn InputGate, channels: usize) {
    for i in 0..channels {
        gate.set_blocked(i, false);
    }
}

/// Caps a source at `rate` records per second of wall time.
pub(crate) struct Throttle {
    pub rate: u64,
    pub start: Instant,
    pub emitted: u64,
}

impl Throttle {
    /// How many records may be read now (0: wait).
    fn permit(&self, batch: usize) -> usize {
        let allowed = (self.rate as f64 * self.start.elapsed().as_secs_f64()) as u64 + (self.rate / 100).max(1);
        allowed.saturating_sub(self.emitted).min(batch as u64) as usize
    }
}

pub(crate) struct Task {
    pub index: usize,
    pub subtask: u32,
    pub input: Input,
    /// The head source's name, for its position in checkpoints.
    pub source_node: Option<String>,
    pub head_metrics: Option<Arc<OperatorMetrics>>,
    pub ops: Vec<OpSlot>,
    pub writers: Vec<EdgeWriter>,
    pub batch_size: usize,
    pub cancel: Arc<AtomicBool>,
    pub clock: Arc<dyn Clock>,
    pub ckpt: Option<TaskCheckpoints>,
    pub throttle: Option<Throttle>,
    pub gauges: TaskGauges,
    /// The head of an iteration: its loop, rounds and feedback log.
    pub head: Option<HeadLoop>,
}

impl Task {
    fn downstream(&mut self) -> Downstream<'_> {
        Downstream {
            from: self.head_metrics.as_deref(),
            ops: &mut self.ops,
            writers: &mut self.writers,
            gauges: &self.gauges,
        }
    }

    /// Call `f` on each operator in chain order, with the rest of the
    /// chain as its output.
    fn each_op(&mut self, mut f: impl FnMut(&mut dyn Operator, &mut dyn Emit) -> Result<(), TaskError>) -> Result<(), TaskError> {
        for i in 0..self.ops.len() {
            let (done, rest) = self.ops.split_at_mut(i + 1);
            let slot = &mut done[i];
            f(
                slot.op.as_mut(),
                &mut Downstream {
                    from: Some(&slot.metrics),
                    ops: rest,
                    writers: &mut self.writers,
                    gauges: &self.gauges,
                },
            )?;
        }
        Ok(())
    }

    /// Give every operator of the chain the clock's time (also when it did
    /// not move: sinks flush on real time).
    fn tick(&mut self) -> Result<(), TaskError> {
        let now = self.clock.now_ms();
        self.each_op(|op, out| op.on_processing_time(now, out))
    }

    fn valve(&mut self, mut out: ValveOutput) -> Result<(), TaskError> {
        // An iteration's head holds the end of event time back until its
        // loop is empty.
        if let Some(h) = &mut self.head
            && !h.terminated
            && out.watermark == Some(i64::MAX)
        {
            h.held_max = true;
            out.watermark = None;
        }
        if let Some(idle) = out.idle {
            self.downstream().idle(idle)?;
        }
        if let Some(wm) = out.watermark {
            self.downstream().watermark(wm)?;
        }
        Ok(())
    }

    /// Copy the state of every node of the chain.
    fn snapshot(&mut self, checkpoint: u64, last: bool) -> Result<Vec<NodeSnapshot>, TaskError> {
        let mut parts = Vec::new();
        if let (Input::Source { reader, .. }, Some(name)) = (&mut self.input, &self.source_node) {
            let mut w = SnapshotWriter::new();
            w.operator_state("position", reader.snapshot_position(checkpoint));
            parts.push(NodeSnapshot {
                node: name.clone(),
                subtask: self.subtask,
                state: OperatorSnapshot {
                    payload: Some(w.finish()),
                    sink: None,
                },
            });
        }
        for slot in &mut self.ops {
            if let Some(node) = &slot.node
                && let Some(state) = slot.op.snapshot(checkpoint, last)?
            {
                parts.push(NodeSnapshot {
                    node: node.clone(),
                    subtask: self.subtask,
                    state,
                });
            }
        }
        Ok(parts)
    }

    /// Barrier `barrier` has arrived on every input: snapshot, hand the
    /// copy to the writer, pass the barrier on.
    fn checkpoint(&mut self, barrier: Barrier) -> Result<(), TaskError> {
        let parts = self.snapshot(barrier.id, false)?;
        let is_source = matches!(self.input, Input::Source { .. });
        if let Some(ck) = &mut self.ckpt {
            ck.last_barrier = barrier.id;
            match &mut self.head {
                // The snapshot is written once the barrier has come back
                // round the loop, with the records that were in flight.
                Some(h) => h.snapshot_taken(barrier, parts),
                None => {
                    let _ = ck.writer.send(WriteJob {
                        attempt: ck.attempt,
                        barrier,
                        task: self.index,
                        parts: Arc::new(parts),
                    });
                }
            }
            if is_source && barrier.kind == (BarrierKind::Savepoint { stop: true }) {
                ck.stopped = true;
            }
        }
        for w in &mut self.writers {
            w.broadcast(StreamElement::Barrier(barrier))?;
        }
        if self.head.is_some() {
            self.hold_early();
            self.finish_logs()?;
        }
        Ok(())
    }

    /// Hold the feedback channels that brought a barrier this head has not
    /// snapshotted yet: what follows it there is after the sender's
    /// snapshot.
    fn hold_early(&mut self) {
        let (Some(h), Some(ck), Input::Gate { gate, .. }) = (&self.head, &self.ckpt, &mut self.input) else {
            return;
        };
        for i in h.held_after(ck.last_barrier) {
            gate.set_blocked(i, true);
        }
    }

    /// Write the head's snapshots whose barrier has come back on every
    /// feedback channel.
    fn finish_logs(&mut self) -> Result<(), TaskError> {
        let Some(h) = &mut self.head else { return Ok(()) };
        let done = h.take_complete()?;
        if let Some(ck) = &self.ckpt {
            for (barrier, parts) in done {
                let _ = ck.writer.send(WriteJob {
                    attempt: ck.attempt,
                    barrier,
                    task: self.index,
                    parts: Arc::new(parts),
                });
            }
        }
        Ok(())
    }

    /// A barrier came back on feedback channel `i`.
    fn on_feedback_barrier(&mut self, i: usize, barrier: Barrier) -> Result<(), TaskError> {
        let Some(last) = self.ckpt.as_ref().map(|c| c.last_barrier) else {
            return Ok(());
        };
        let Some(h) = &mut self.head else { return Ok(()) };
        if h.pending.iter().any(|p| p.barrier.id == barrier.id) {
            h.arrived(i, Some(barrier.id));
            return self.finish_logs();
        }
        if barrier.id <= last {
            return Ok(());
        }
        if h.early[i].is_none_or(|b| b.id < barrier.id) {
            h.early[i] = Some(barrier);
        }
        if h.regular_open == 0 {
            // No regular input brings this barrier any more: take it now.
            return self.snapshot_early();
        }
        if barrier.aligned
            && let Input::Gate { gate, .. } = &mut self.input
        {
            gate.set_blocked(i, true);
        }
        Ok(())
    }

    /// Every regular input of a head has ended: snapshot a barrier that
    /// came back round the loop and that no regular input will bring.
    fn snapshot_early(&mut self) -> Result<(), TaskError> {
        let Some(last) = self.ckpt.as_ref().map(|c| c.last_barrier) else {
            return Ok(());
        };
        let Some(barrier) = self.head.as_ref().and_then(|h| h.newest_early(last)) else {
            return Ok(());
        };
        if let Some(ck) = &mut self.ckpt {
            ck.aligning = None;
        }
        if let Input::Gate { gate, .. } = &mut self.input {
            unblock_all(gate.as_mut(), self.head.as_ref().map_or(0, |h| h.is_feedback.len()));
        }
        self.checkpoint(barrier)
    }

    /// A batch on feedback channel `i`: logged for snapshots waiting for
    /// their barrier there, processed as input 1, then uncounted.
    fn feedback_records(&mut self, i: usize, batch: RecordBatch) -> Result<(), TaskError> {
        let Some(h) = &mut self.head else { return Ok(()) };
        h.log(i, &batch);
        let (round, lp) = (h.round_of[i], h.lp.clone());
        let (n, bytes) = (batch.len as u64, batch.bytes.len() as u64);
        let (started, blocked) = (Instant::now(), self.gauges.blocked_ns.load(Ordering::Relaxed));
        self.process_feedback(round, batch)?;
        lp.processed(n, bytes);
        self.gauges.work(started, blocked);
        Ok(())
    }

    /// Process records of round `round` (what they make goes round once more).
    fn process_feedback(&mut self, round: u32, batch: RecordBatch) -> Result<(), TaskError> {
        self.set_round(round.saturating_add(1));
        let done = self.downstream().push(1, batch);
        self.set_round(1);
        done
    }

    fn set_round(&mut self, round: u32) {
        for w in &mut self.writers {
            if let Some(f) = &mut w.feedback {
                f.round = round;
            }
        }
    }

    /// The records restored as in flight in the loop go first.
    fn replay_feedback(&mut self) -> Result<(), TaskError> {
        let Some(h) = &mut self.head else { return Ok(()) };
        let (replay, lp) = (std::mem::take(&mut h.replay), h.lp.clone());
        for (round, batch) in replay {
            let (n, bytes) = (batch.len as u64, batch.bytes.len() as u64);
            lp.admit(n, bytes)?;
            self.process_feedback(round, batch)?;
            lp.processed(n, bytes);
        }
        Ok(())
    }

    /// A regular input of a head ended.
    fn regular_ended(&mut self) -> Result<(), TaskError> {
        let Some(h) = &mut self.head else { return Ok(()) };
        h.regular_open = h.regular_open.saturating_sub(1);
        if h.regular_open == 0 {
            h.lp.inputs_ended();
            return self.snapshot_early();
        }
        Ok(())
    }

    /// Once the loop is empty: pass on the end of event time held back, and
    /// end the feedback channels (the gate ends when all have ended).
    fn poll_loop(&mut self) -> Result<(), TaskError> {
        let Some(h) = &mut self.head else { return Ok(()) };
        if h.terminated || h.regular_open > 0 || !h.lp.terminated() {
            return Ok(());
        }
        h.terminated = true;
        if std::mem::take(&mut h.held_max) {
            self.downstream().watermark(i64::MAX)?;
        }
        for w in &mut self.writers {
            w.end_feedback()?;
        }
        Ok(())
    }

    /// A barrier from channel `channel` of the input gate.
    fn on_barrier(&mut self, channel: usize, barrier: Barrier) -> Result<(), TaskError> {
        let Input::Gate { gate, .. } = &mut self.input else {
            return Ok(());
        };
        let Some(ck) = &mut self.ckpt else { return Ok(()) };
        if barrier.id <= ck.last_barrier {
            return Ok(());
        }
        match &ck.aligning {
            Some((b, _)) if b.id == barrier.id => {}
            Some((b, _)) if b.id > barrier.id => return Ok(()),
            _ => {
                // A newer barrier abandons an older alignment (its checkpoint was aborted).
                unblock_all(gate.as_mut(), ck.ended.len());
                ck.aligning = Some((barrier, vec![false; ck.ended.len()]));
                self.hold_early();
            }
        }
        let Input::Gate { gate, .. } = &mut self.input else {
            return Ok(());
        };
        let Some(ck) = &mut self.ckpt else { return Ok(()) };
        if let Some((_, arrived)) = &mut ck.aligning {
            arrived[channel] = true;
        }
        if barrier.aligned {
            gate.set_blocked(channel, true);
        }
        self.complete_alignment()
    }

    /// Snapshot once every channel has delivered the barrier or ended.
    fn complete_alignment(&mut self) -> Result<(), TaskError> {
        let Input::Gate { gate, .. } = &mut self.input else {
            return Ok(());
        };
        let Some(ck) = &mut self.ckpt else { return Ok(()) };
        let done = ck
            .aligning
            .as_ref()
            .is_some_and(|(_, arrived)| arrived.iter().zip(&ck.ended).all(|(a, e)| *a || *e));
        if !done {
            return Ok(());
        }
        let Some((barrier, _)) = ck.aligning.take() else { return Ok(()) };
        unblock_all(gate.as_mut(), ck.ended.len());
        self.checkpoint(barrier)
    }

    /// Barriers the coordinator asked a source task to inject.
    fn triggered(&mut self) -> Vec<Barrier> {
        match self.ckpt.as_ref().and_then(|c| c.triggers.as_ref()) {
            Some(rx) => rx.try_iter().collect(),
            None => Vec::new(),
        }
    }

    fn run(&mut self) -> Result<(), TaskError> {
        self.replay_feedback()?;
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            for b in self.triggered() {
                self.checkpoint(b)?;
            }
            let stopped = self.ckpt.as_ref().is_some_and(|c| c.stopped);
            match &mut self.input {
                Input::Source { .. } if stopped => std::thread::sleep(POLL),
                Input::Source { reader, idle } => {
                    let max = match &self.throttle {
                        Some(t) => t.permit(self.batch_size),
                        None => self.batch_size,
                    };
                    if max == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                        self.tick()?;
                        continue;
                    }
                    let (started, blocked) = (Instant::now(), self.gauges.blocked_ns.load(Ordering::Relaxed));
                    let batch = reader.next_batch(max)?;
                    let mark = if batch.is_some() { reader.watermark() } else { None };
                    if let (Some(lag), Some(m)) = (reader.lag(), &self.head_metrics) {
                        m.set_lag(self.subtask, lag);
                    }
                    match batch {
                        Some(b) if b.len > 0 => {
                            if let Some(t) = &mut self.throttle {
                                t.emitted += b.len as u64;
                            }
                            let resumed = idle.on_records(self.clock.now_ms());
                            if resumed {
                                self.downstream().idle(false)?;
                            }
                            self.downstream().emit(b)?;
                            if let Some(wm) = mark {
                                self.downstream().watermark(wm)?;
                            }
                            self.gauges.work(started, blocked);
                        }
                        Some(_) => {
                            let now = self.clock.now_ms();
                            let went_idle = idle.poll(now) | (reader.idle() && idle.mark_idle());
                            if let Some(wm) = mark {
                                self.downstream().watermark(wm)?;
                            }
                            if went_idle {
                                self.downstream().idle(true)?;
                            }
                            std::thread::sleep(POLL);
                        }
                        None => {
                            self.downstream().watermark(i64::MAX)?;
                            break;
                        }
                    }
                }
                Input::Gate { gate, valve, input_of } => match gate
                    .next(POLL)
                    .map_err(|_| gate.take_failure().unwrap_or(TaskError::UpstreamClosed))?
                {
                    GateEvent::Element(i, e) if self.head.as_ref().is_some_and(|h| h.is_feedback[i]) => match e {
                        StreamElement::Records(b) => self.feedback_records(i, b)?,
                        StreamElement::Round(r) => {
                            if let Some(h) = &mut self.head {
                                h.round_of[i] = r;
                            }
                        }
                        StreamElement::Barrier(b) => self.on_feedback_barrier(i, b)?,
                        StreamElement::EndOfData => {
                            if let Some(h) = &mut self.head {
                                h.ended[i] = true;
                                h.arrived(i, None);
                            }
                            self.finish_logs()?;
                        }
                        // Feedback edges carry no event time.
                        StreamElement::Watermark(_) | StreamElement::Idle(_) | StreamElement::KeysEnded => {}
                    },
                    GateEvent::Element(_, StreamElement::Round(_)) => {}
                    GateEvent::Element(i, StreamElement::Records(b)) => {
                        let (started, blocked) = (Instant::now(), self.gauges.blocked_ns.load(Ordering::Relaxed));
                        let (out, input) = (valve.on_records(i), input_of[i]);
                        self.valve(out)?;
                        self.downstream().push(input, b)?;
                        self.gauges.work(started, blocked);
                    }
                    GateEvent::Element(i, StreamElement::Watermark(w)) => {
                        let out = valve.on_watermark(i, w);
                        self.valve(out)?;
                    }
                    GateEvent::Element(i, StreamElement::Idle(idle)) => {
                        let out = valve.on_idle(i, idle);
                        self.valve(out)?;
                    }
                    GateEvent::Element(i, StreamElement::Barrier(b)) => self.on_barrier(i, b)?,
                    GateEvent::Element(_, StreamElement::KeysEnded) => {
                        let (started, blocked) = (Instant::now(), self.gauges.blocked_ns.load(Ordering::Relaxed));
                        self.each_op(|op, out| op.end_keys(out))?;
                        self.gauges.work(started, blocked);
                    }
                    GateEvent::Element(i, StreamElement::EndOfData) => {
                        let out = valve.on_end(i);
                        self.valve(out)?;
                        if let Some(ck) = &mut self.ckpt {
                            ck.ended[i] = true;
                        }
                        self.complete_alignment()?;
                        self.regular_ended()?;
                    }
                    GateEvent::Timeout => {}
                    GateEvent::Ended => break,
                },
            }
            self.poll_loop()?;
            self.tick()?;
        }
        self.each_op(|op, out| op.finish(out))?;
        for w in &mut self.writers {
            w.end()?;
        }
        if let Some(last_barrier) = self.ckpt.as_ref().map(|c| c.last_barrier) {
            let parts = self.snapshot(last_barrier + 1, true)?;
            if let Some(ck) = &self.ckpt {
                ck.finals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(self.index, Arc::new(parts));
            }
        }
        Ok(())
    }

    /// Run until the input ends, the task fails or the job is cancelled.
    pub fn run_to_end(&mut self) -> TaskExit {
        match self.run() {
            Ok(()) => TaskExit::Finished {
                last_barrier: self.ckpt.as_ref().map(|c| c.last_barrier),
            },
            Err(e) => TaskExit::Failed(e),
        }
    }
}
