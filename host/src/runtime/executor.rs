//! The executor: turns a validated job into running tasks and waits for them.
//!
//! ```text
//!  run_job: load components (world check) ─► create channels for every
//!  non-chained edge ─► per chain and subtask: instantiate guests, open them
//!  ─► spawn one thread per task ─► JobHandle
//!
//!  task:  read input (source or input gate) ─► chain of operators ─► edges
//!         on end of all inputs: finish operators, send EndOfData downstream
//!         on error: record it (first error wins), cancel the job, drop channels
//! ```
//!
//! A failing task drops its channels, so its neighbours see closed channels
//! and end too; sources also watch the job's cancel flag. The first error is
//! the job's error; the knock-on "channel closed" errors are not.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use sluice_guest::batch::BatchWriter;

use super::channel::{GateEvent, InputGate, LocalInputGate, LocalReceiver, RecordBatch, StreamElement, local_channel};
use super::operator::{Emit, GuestOutputs, KeyedOperator, Operator, SinkOperator, StatelessOperator, WatermarkAssigner};
use super::partition::EdgeWriter;
use crate::checkpoint::coordinator::{
    CheckpointStats, Coordinator, CoordinatorEvent, OperatorInfo, Report, RestartPolicy, WriteJob, commit_sinks, spawn_writer,
};
use crate::checkpoint::{
    Barrier, BarrierKind, CheckpointStorage, ExpectedState, LoadedCheckpoint, NodeSnapshot, OperatorSnapshot, RestoreLimits,
    SnapshotWriter, load_path,
};
use crate::connectors::generator::GeneratorConfig;
use crate::connectors::{
    ConnectorError, FileOptions, FileSource, Generator, JsonLinesSink, NexmarkSettings, NexmarkSource, SinkWriter, SourceReader,
    TransactionalFileSink, file_sink,
};
use crate::job::graph::{JobGraph, NodeId, NodeKind};
use crate::job::spec::{OutputTag, RestartSpec, SinkKind, SourceKind, WatermarkSpec, WatermarkStrategy};
use crate::job::{JobError, OperatorKind, Partition};
use crate::runtime::join::{JoinConfig, JoinOperator};
use crate::state::{HeapKeyedState, KeyGroupRange};
use crate::tenancy::{GuestLogBuffer, InstanceLimits, StateBudget, TenantMeter};
use crate::time::watermarks::ValveOutput;
use crate::time::{Clock, IdleTracker, PeriodicWatermarks, SystemClock, WatermarkValve};
use crate::wasm::{GuestEnv, GuestError, GuestInstance, LoadedComponent, WasmEngine, World};
use crate::window::{Builtin, WindowConfig, WindowFunction, WindowOperator};

/// Why a task failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// A guest trapped, ran out of time or memory, or misbehaved.
    #[error(transparent)]
    Guest(#[from] GuestError),
    /// A UDF reported a record as failed and the job's policy is `fail`.
    #[error("operator `{operator}` subtask {subtask} failed on record {record:?}: {message}")]
    RecordFailed {
        /// The operator.
        operator: String,
        /// Its subtask.
        subtask: u32,
        /// A preview of the record's value.
        record: String,
        /// The UDF's message.
        message: String,
    },
    /// A record without a key on a hash edge.
    #[error(
        "a record without a key (value {value:?}) reached the hash-partitioned input of `{target}`: keyed operators need keyed records"
    )]
    MissingKey {
        /// The downstream node.
        target: String,
        /// A preview of the record's value.
        value: String,
    },
    /// A source or sink failed.
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    /// A downstream task is gone (it failed).
    #[error("downstream `{0}` is gone")]
    DownstreamClosed(String),
    /// An upstream task is gone (it failed).
    #[error("an upstream task is gone")]
    UpstreamClosed,
    /// The job was cancelled.
    #[error("the job was cancelled")]
    Cancelled,
    /// A bug in the host.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TaskError {
    /// True for errors that are only a consequence of another task's failure.
    fn is_knock_on(&self) -> bool {
        matches!(
            self,
            TaskError::DownstreamClosed(_) | TaskError::UpstreamClosed | TaskError::Cancelled
        )
    }
}

/// Counters of one node (all subtasks together).
#[derive(Debug, Default)]
pub struct OperatorMetrics {
    /// The node's name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    records_in: AtomicU64,
    records_out: AtomicU64,
    failed: AtomicU64,
    late: AtomicU64,
    late_dropped: AtomicU64,
    busy_ns: AtomicU64,
    backpressured_ns: AtomicU64,
    /// The output watermark of each subtask (`i64::MIN`: none yet).
    watermarks: Vec<AtomicI64>,
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
    fn set_watermark(&self, subtask: u32, watermark: i64) {
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

/// Where to restore a job from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restore {
    /// The newest complete checkpoint in the job's checkpoint directory
    /// (start from the beginning when there is none).
    Latest,
    /// A checkpoint or savepoint directory.
    Path(PathBuf),
}

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Processing time for guests.
    pub clock: Arc<dyn Clock>,
    /// Batches a channel holds before its producer blocks. Default 8.
    pub channel_capacity: usize,
    /// Bytes of record batches a channel holds beyond its first batch
    /// before its producer blocks. Default 32 MiB.
    pub channel_bytes: usize,
    /// Resume from a checkpoint or savepoint.
    pub restore: Option<Restore>,
    /// Restore even when the checkpoint has state of operators the job no
    /// longer has (that state is dropped).
    pub allow_non_restored_state: bool,
    /// The tenant's meter (guest CPU, memory, state, instances) and its
    /// state ceiling; none outside a server.
    pub meter: Option<Arc<TenantMeter>>,
    /// Where guest log lines are kept for the API; none: `tracing` only.
    pub logs: Option<Arc<GuestLogBuffer>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            channel_capacity: 8,
            channel_bytes: 32 << 20,
            restore: None,
            allow_non_restored_state: false,
            meter: None,
            logs: None,
        }
    }
}

/// What a finished job did.
#[derive(Debug)]
pub struct JobSummary {
    /// Per node, in spec order.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    /// Wall time.
    pub duration: Duration,
    /// Restarts after failures.
    pub restarts: u32,
    /// Checkpoints and savepoints completed.
    pub checkpoints: u64,
    /// The savepoint the job stopped with, if it was stopped with one.
    pub savepoint: Option<PathBuf>,
}

/// A running job.
pub struct JobHandle {
    supervisor: Option<JoinHandle<Result<Option<PathBuf>, JobError>>>,
    cancel: Arc<AtomicBool>,
    /// Per node, in spec order.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    /// Checkpoint figures.
    pub checkpoints: Arc<CheckpointStats>,
    /// Restarts so far.
    pub restarts: Arc<AtomicU32>,
    restarting: Arc<AtomicBool>,
    /// The newest failures that restarted the job (oldest first, at most
    /// [`MAX_EXCEPTIONS`]), with the Unix time in ms they happened.
    pub exceptions: Arc<Mutex<VecDeque<(i64, String)>>>,
    started: Instant,
}

/// Failures a job handle remembers.
pub const MAX_EXCEPTIONS: usize = 10;

impl JobHandle {
    /// True when the job has ended.
    pub fn is_finished(&self) -> bool {
        self.supervisor.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Ask every task to stop; `wait` then reports the job as cancelled.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// A flag that cancels the job when set (for whoever does not own the
    /// handle, such as an API waiting on another thread).
    pub fn cancel_token(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// True while the job waits to restart after a failure (a flag shared
    /// with the supervisor; see [`restarting_flag`](Self::restarting_flag)).
    pub fn is_restarting(&self) -> bool {
        self.restarting.load(Ordering::Relaxed)
    }

    /// The shared flag behind [`is_restarting`](Self::is_restarting).
    pub fn restarting_flag(&self) -> Arc<AtomicBool> {
        self.restarting.clone()
    }

    /// Wait for the job to end.
    pub fn wait(mut self) -> Result<JobSummary, JobError> {
        let result = match self.supervisor.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            _ => Err(JobError::Failed(TaskError::Internal("the job supervisor panicked".into()))),
        };
        result.map(|savepoint| JobSummary {
            metrics: self.metrics,
            duration: self.started.elapsed(),
            restarts: self.restarts.load(Ordering::Relaxed),
            checkpoints: self.checkpoints.completed.load(Ordering::Relaxed),
            savepoint,
        })
    }
}

fn record(slot: &Mutex<Option<TaskError>>, e: TaskError) {
    let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
    match &*s {
        None => *s = Some(e),
        Some(prev) if prev.is_knock_on() && !e.is_knock_on() => *s = Some(e),
        _ => {}
    }
}

enum Input {
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

struct OpSlot {
    op: Box<dyn Operator>,
    metrics: Arc<OperatorMetrics>,
    /// The node it runs (none for helpers such as watermark assigners).
    node: Option<String>,
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
struct TaskGauges {
    subtask: u32,
    nodes: Vec<Arc<OperatorMetrics>>,
    /// Nanoseconds the task's writers spent blocked on full channels.
    blocked_ns: Arc<AtomicU64>,
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
            n.busy_ns.fetch_add(busy, Ordering::Relaxed);
            n.backpressured_ns.fetch_add(blocked, Ordering::Relaxed);
        }
    }
}

impl Downstream<'_> {
    /// Pass a batch from input `input` to the first operator, or to the
    /// main-output edges at the end of the chain.
    fn push(&mut self, input: usize, batch: RecordBatch) -> Result<(), TaskError> {
        if let Some(m) = self.from {
            m.records_out.fetch_add(batch.len as u64, Ordering::Relaxed);
        }
        if batch.len == 0 {
            return Ok(());
        }
        match self.ops.split_first_mut() {
            Some((first, rest)) => {
                first.metrics.records_in.fetch_add(batch.len as u64, Ordering::Relaxed);
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

/// A channel into a subtask, with the input number (0 or 1) it feeds.
type InputChannel = (LocalReceiver, usize);

/// How long a task waits for input before it looks at the clock again.
const POLL: Duration = Duration::from_millis(10);

/// A task's part in checkpointing.
struct TaskCheckpoints {
    attempt: u32,
    /// Barriers to inject (source tasks).
    triggers: Option<Receiver<Barrier>>,
    writer: Sender<WriteJob>,
    reports: Sender<Report>,
    last_barrier: u64,
    /// The barrier being aligned, and which channels delivered it.
    aligning: Option<(Barrier, Vec<bool>)>,
    /// Channels that ended.
    ended: Vec<bool>,
    /// A source after a stop-with-savepoint barrier: reads nothing more.
    stopped: bool,
}

/// Read every channel of a gate again after an alignment.
fn unblock_all(gate: &mut dyn InputGate, channels: usize) {
    for i in 0..channels {
        gate.set_blocked(i, false);
    }
}

/// Caps a source at `rate` records per second of wall time.
struct Throttle {
    rate: u64,
    start: Instant,
    emitted: u64,
}

impl Throttle {
    /// How many records may be read now (0: wait).
    fn permit(&self, batch: usize) -> usize {
        let allowed = (self.rate as f64 * self.start.elapsed().as_secs_f64()) as u64 + (self.rate / 100).max(1);
        allowed.saturating_sub(self.emitted).min(batch as u64) as usize
    }
}

struct Task {
    index: usize,
    subtask: u32,
    input: Input,
    /// The head source's name, for its position in checkpoints.
    source_node: Option<String>,
    head_metrics: Option<Arc<OperatorMetrics>>,
    ops: Vec<OpSlot>,
    writers: Vec<EdgeWriter>,
    batch_size: usize,
    cancel: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
    ckpt: Option<TaskCheckpoints>,
    throttle: Option<Throttle>,
    gauges: TaskGauges,
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

    fn valve(&mut self, out: ValveOutput) -> Result<(), TaskError> {
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
        if let (Input::Source { reader, .. }, Some(name)) = (&self.input, &self.source_node) {
            let mut w = SnapshotWriter::new();
            w.operator_state("position", reader.position());
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
            let _ = ck.writer.send(WriteJob {
                attempt: ck.attempt,
                barrier,
                task: self.index,
                parts: Arc::new(parts),
            });
            if is_source && barrier.kind == (BarrierKind::Savepoint { stop: true }) {
                ck.stopped = true;
            }
        }
        for w in &mut self.writers {
            w.broadcast(StreamElement::Barrier(barrier))?;
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
            }
        }
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
                    match reader.next_batch(max)? {
                        Some(b) if b.len > 0 => {
                            if let Some(t) = &mut self.throttle {
                                t.emitted += b.len as u64;
                            }
                            let resumed = idle.on_records(self.clock.now_ms());
                            if resumed {
                                self.downstream().idle(false)?;
                            }
                            self.downstream().emit(b)?;
                            self.gauges.work(started, blocked);
                        }
                        Some(_) => {
                            let went_idle = idle.poll(self.clock.now_ms());
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
                Input::Gate { gate, valve, input_of } => match gate.next(POLL).map_err(|_| TaskError::UpstreamClosed)? {
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
                    GateEvent::Element(i, StreamElement::EndOfData) => {
                        let out = valve.on_end(i);
                        self.valve(out)?;
                        if let Some(ck) = &mut self.ckpt {
                            ck.ended[i] = true;
                        }
                        self.complete_alignment()?;
                    }
                    GateEvent::Timeout => {}
                    GateEvent::Ended => break,
                },
            }
            self.tick()?;
        }
        self.each_op(|op, out| op.finish(out))?;
        for w in &mut self.writers {
            w.end()?;
        }
        if let Some(last_barrier) = self.ckpt.as_ref().map(|c| c.last_barrier) {
            let parts = self.snapshot(last_barrier + 1, true)?;
            if let Some(ck) = &self.ckpt {
                let _ = ck.reports.send(Report::Finished {
                    attempt: ck.attempt,
                    task: self.index,
                    last_barrier,
                    parts: Arc::new(parts),
                });
            }
        }
        Ok(())
    }
}

/// Everything an attempt is built from.
struct JobContext {
    graph: JobGraph,
    components: Vec<Option<Arc<LoadedComponent>>>,
    engine: Arc<WasmEngine>,
    options: RunOptions,
    metrics: Vec<Arc<OperatorMetrics>>,
    /// Where every subtask's keyed state and timers are counted: the job's
    /// `limits.max_state_mb` and the tenant's ceiling.
    state_budget: StateBudget,
}

/// One run of the job's tasks: the first, or one after a restart.
struct Attempt {
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    error: Arc<Mutex<Option<TaskError>>>,
}

impl Attempt {
    /// The first real (not knock-on) error, if a task failed.
    fn failed(&self) -> bool {
        self.error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|e| !e.is_knock_on())
    }

    /// Stop every task and wait for them; the attempt's error, if any.
    fn shutdown(self) -> Option<TaskError> {
        self.cancel.store(true, Ordering::SeqCst);
        for t in self.threads {
            if t.join().is_err() {
                record(&self.error, TaskError::Internal("a task panicked".into()));
            }
        }
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Checkpointing plumbing handed to an attempt's tasks.
struct AttemptCheckpoints {
    writer: Sender<WriteJob>,
    reports: Sender<Report>,
    completed: Arc<AtomicU64>,
}

/// Validate, load and start `graph`. Fails before anything runs if a
/// component is missing, of the wrong world, or fails to open, or if the
/// checkpoint to restore does not fit the job.
pub fn run_job(graph: &JobGraph, engine: &Arc<WasmEngine>, options: RunOptions) -> Result<JobHandle, JobError> {
    let components = graph.load_components(engine)?;
    let spec = &graph.spec;
    let metrics: Vec<Arc<OperatorMetrics>> = graph
        .nodes
        .iter()
        .map(|n| Arc::new(OperatorMetrics::new(&n.name, n.parallelism)))
        .collect();
    let storage = match &spec.checkpoints {
        Some(c) => Some(Arc::new(
            CheckpointStorage::open(&graph.base_dir.join(&c.dir)).map_err(|e| JobError::Restore(e.to_string()))?,
        )),
        None => None,
    };
    let restored: Option<Arc<LoadedCheckpoint>> = match (&options.restore, &storage) {
        (None, _) => None,
        (Some(Restore::Path(p)), _) => Some(Arc::new(
            load_path(p, &expected_state(graph, false), &RestoreLimits::default()).map_err(|e| JobError::Restore(e.to_string()))?,
        )),
        (Some(Restore::Latest), None) => {
            return Err(JobError::Restore(
                "`--restore latest` needs `[checkpoints]` in the job spec: they say where checkpoints are".into(),
            ));
        }
        (Some(Restore::Latest), Some(st)) => {
            let c = st.load_latest(0, &expected_state(graph, true));
            let refused = st.complete_checkpoints().len();
            if c.is_none() && refused > 0 {
                // Starting over would clear committed output the job may not
                // reproduce (a changed job, a source that cannot replay).
                return Err(JobError::Restore(format!(
                    "{}: none of its {refused} complete checkpoints can be restored (the warnings above say why); \
                     run without `--restore` to start the job from the beginning",
                    st.path().display()
                )));
            }
            if c.is_none() {
                tracing::warn!(dir = %st.path().display(), "no complete checkpoint to restore; starting from the beginning");
            }
            c.map(Arc::new)
        }
    };
    if let Some(c) = &restored {
        check_restore(graph, c, options.allow_non_restored_state)?;
        tracing::info!(checkpoint = c.meta.checkpoint, path = %c.path.display(), "restoring");
    }
    let stats = Arc::new(CheckpointStats::default());
    let mut coordinator = match (&spec.checkpoints, storage) {
        (Some(cfg), Some(st)) => Some(Coordinator::new(
            st,
            cfg.clone(),
            spec.name.clone(),
            spec.max_parallelism,
            operator_infos(graph, &components),
            sink_dirs(graph),
            restored.as_ref().map(|c| c.meta.checkpoint),
            stats.clone(),
        )),
        _ => None,
    };
    if coordinator.is_some() {
        prepare_sinks(graph, restored.as_deref())?;
    }
    let state_budget = StateBudget::new(spec.limits.max_state_mb.map(|mb| mb.saturating_mul(1 << 20)), options.meter.clone());
    let ctx = JobContext {
        graph: graph.clone(),
        components,
        engine: engine.clone(),
        options,
        metrics: metrics.clone(),
        state_budget,
    };
    let (reports_tx, reports_rx) = crossbeam_channel::unbounded();
    let first = start_attempt(&ctx, 0, restored.as_deref(), coordinator.as_mut(), &reports_tx)?;
    let default_restart = if spec.checkpoints.is_some() {
        RestartSpec::FixedDelay {
            attempts: 3,
            delay_ms: 1000,
        }
    } else {
        RestartSpec::None
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let restarts = Arc::new(AtomicU32::new(0));
    let restarting = Arc::new(AtomicBool::new(false));
    let exceptions = Arc::new(Mutex::new(VecDeque::new()));
    let supervisor = Supervisor {
        exceptions: exceptions.clone(),
        restarting: restarting.clone(),
        policy: RestartPolicy::new(spec.restart.clone().unwrap_or(default_restart)),
        ctx,
        coordinator,
        reports_rx,
        reports_tx,
        initial: restored,
        cancel: cancel.clone(),
        restarts: restarts.clone(),
    };
    let thread = std::thread::Builder::new()
        .name(format!("{}-supervisor", spec.name))
        .spawn(move || supervisor.run(first))
        .map_err(|e| JobError::Failed(TaskError::Internal(format!("spawning the job supervisor: {e}"))))?;
    Ok(JobHandle {
        supervisor: Some(thread),
        cancel,
        metrics,
        checkpoints: stats,
        restarts,
        restarting,
        exceptions,
        started: Instant::now(),
    })
}

/// How an attempt ended.
enum AttemptEnd {
    Finished,
    Stopped(PathBuf),
    Cancelled,
    Failed(TaskError),
}

/// Watches attempts, runs the checkpoint coordinator, restarts on failure.
struct Supervisor {
    ctx: JobContext,
    coordinator: Option<Coordinator>,
    reports_rx: Receiver<Report>,
    reports_tx: Sender<Report>,
    policy: RestartPolicy,
    initial: Option<Arc<LoadedCheckpoint>>,
    cancel: Arc<AtomicBool>,
    restarts: Arc<AtomicU32>,
    restarting: Arc<AtomicBool>,
    exceptions: Arc<Mutex<VecDeque<(i64, String)>>>,
}

impl Supervisor {
    fn run(mut self, first: Attempt) -> Result<Option<PathBuf>, JobError> {
        let mut attempt = first;
        let mut number = 0;
        loop {
            let end = self.watch(&attempt);
            let error = attempt.shutdown();
            if let Some(c) = &mut self.coordinator {
                c.end_attempt();
            }
            let error = match end {
                AttemptEnd::Finished => match error {
                    None => {
                        if let Some(c) = &mut self.coordinator {
                            c.finish()
                                .map_err(|e| JobError::Failed(TaskError::Internal(format!("final checkpoint: {e}"))))?;
                        }
                        return Ok(None);
                    }
                    Some(e) => e,
                },
                AttemptEnd::Stopped(path) => return Ok(Some(path)),
                AttemptEnd::Cancelled => return Err(JobError::Failed(TaskError::Cancelled)),
                AttemptEnd::Failed(e) => error.filter(|e| !e.is_knock_on()).unwrap_or(e),
            };
            let delay = match &self.coordinator {
                Some(_) => self.policy.on_failure(),
                None => None,
            };
            let Some(delay) = delay else {
                return Err(JobError::Failed(error));
            };
            number += 1;
            {
                let mut ex = self.exceptions.lock().unwrap_or_else(|p| p.into_inner());
                if ex.len() == MAX_EXCEPTIONS {
                    ex.pop_front();
                }
                ex.push_back((self.ctx.options.clock.now_ms(), error.to_string()));
            }
            self.restarts.store(number, Ordering::Relaxed);
            self.restarting.store(true, Ordering::Relaxed);
            tracing::warn!(error = %error, restart = number, "job failed; restarting from the latest checkpoint in {} ms", delay.as_millis());
            let until = Instant::now() + delay;
            while Instant::now() < until {
                if self.cancel.load(Ordering::SeqCst) {
                    return Err(JobError::Failed(TaskError::Cancelled));
                }
                std::thread::sleep(POLL);
            }
            let Some(coord) = &mut self.coordinator else {
                return Err(JobError::Failed(error));
            };
            let restore = coord
                .storage
                .load_latest(coord.first_id, &expected_state(&self.ctx.graph, true))
                .map(Arc::new)
                .or_else(|| self.initial.clone());
            match &restore {
                Some(c) => tracing::info!(checkpoint = c.meta.checkpoint, "restoring"),
                None => tracing::info!("no checkpoint yet; starting from the beginning"),
            }
            coord
                .completed
                .store(restore.as_ref().map_or(0, |c| c.meta.checkpoint), Ordering::SeqCst);
            prepare_sinks(&self.ctx.graph, restore.as_deref())?;
            attempt = start_attempt(&self.ctx, number, restore.as_deref(), self.coordinator.as_mut(), &self.reports_tx)?;
            self.restarting.store(false, Ordering::Relaxed);
        }
    }

    /// Run the coordinator until the attempt ends.
    fn watch(&mut self, attempt: &Attempt) -> AttemptEnd {
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return AttemptEnd::Cancelled;
            }
            if attempt.failed() {
                return AttemptEnd::Failed(TaskError::Internal("a task failed".into()));
            }
            let finished = attempt.threads.iter().all(JoinHandle::is_finished);
            match &mut self.coordinator {
                Some(c) => {
                    let first = self.reports_rx.recv_timeout(POLL).ok();
                    for r in first.into_iter().chain(std::iter::from_fn(|| self.reports_rx.try_recv().ok())) {
                        match c.on_report(r) {
                            Some(CoordinatorEvent::Stopped(path)) => return AttemptEnd::Stopped(path),
                            Some(CoordinatorEvent::Failed(e)) => return AttemptEnd::Failed(TaskError::Internal(e)),
                            None => {}
                        }
                    }
                    if !finished {
                        c.tick();
                    }
                    if let Some(e) = c.take_failure() {
                        return AttemptEnd::Failed(TaskError::Internal(e));
                    }
                }
                None => std::thread::sleep(POLL),
            }
            if finished {
                return AttemptEnd::Finished;
            }
        }
    }
}

/// Build and start the tasks of one attempt.
fn start_attempt(
    ctx: &JobContext,
    attempt: u32,
    restore: Option<&LoadedCheckpoint>,
    coordinator: Option<&mut Coordinator>,
    reports: &Sender<Report>,
) -> Result<Attempt, JobError> {
    let graph = &ctx.graph;
    let spec = &graph.spec;
    let engine = &ctx.engine;
    let components = &ctx.components;
    let metrics = &ctx.metrics;
    let limits = InstanceLimits {
        memory_bytes: (spec.limits.memory_mb.saturating_mul(1 << 20)).min(usize::MAX as u64) as usize,
        call_timeout: Duration::from_millis(spec.limits.call_timeout_ms.max(1)),
        log_lines_per_sec: spec.limits.log_lines_per_sec,
        fuel_per_call: spec.limits.fuel_per_call,
        max_record_bytes: spec.limits.max_record_bytes,
        max_output_bytes: spec.limits.max_output_bytes_per_call,
        max_output_records: spec.limits.max_output_records_per_call,
    };
    let env = GuestEnv {
        limits,
        clock: ctx.options.clock.clone(),
        meter: ctx.options.meter.clone(),
        logs: ctx.options.logs.clone(),
    };
    let plumbing = match &coordinator {
        Some(c) => Some(AttemptCheckpoints {
            writer: spawn_writer(c.storage.clone(), reports.clone())
                .map_err(|e| JobError::Failed(TaskError::Internal(format!("spawning the checkpoint writer: {e}"))))?,
            reports: reports.clone(),
            completed: c.completed.clone(),
        }),
        None => None,
    };
    let ck = plumbing.as_ref();
    let chains = graph.chains();

    // Channels of every edge that crosses tasks: receivers (with the input
    // number they feed) by (node, subtask), senders by (edge, upstream
    // subtask, target).
    let mut receivers: Vec<Vec<Vec<InputChannel>>> = graph
        .nodes
        .iter()
        .map(|n| (0..n.parallelism).map(|_| Vec::new()).collect())
        .collect();
    let mut senders: Vec<Vec<Vec<Box<dyn super::ElementSender>>>> = Vec::new();
    let is_chained = |from: NodeId, to: NodeId| chains.iter().any(|c| c.nodes.windows(2).any(|w| w[0] == from && w[1] == to));
    for e in &graph.edges {
        let (pu, pd) = (graph.nodes[e.from].parallelism, graph.nodes[e.to].parallelism);
        let mut per_up = Vec::new();
        if !is_chained(e.from, e.to) {
            for a in 0..pu {
                let mut row = Vec::new();
                for b in 0..pd {
                    if e.partition == Partition::Forward && a != b {
                        continue;
                    }
                    let (tx, rx) = local_channel(ctx.options.channel_capacity.max(1), ctx.options.channel_bytes);
                    row.push(tx);
                    receivers[e.to][b as usize].push((rx, e.input as usize));
                }
                per_up.push(row);
            }
        }
        senders.push(per_up);
    }

    let cancel = Arc::new(AtomicBool::new(false));
    let error = Arc::new(Mutex::new(None));
    let mut tasks = Vec::new();
    let mut triggers: Vec<Option<Sender<Barrier>>> = Vec::new();
    let guest = |n: NodeId, name: &str, world: World, s: u32, state: Option<HeapKeyedState>, config: &Option<serde_json::Value>| {
        let Some(component) = &components[n] else {
            return Err(JobError::Failed(TaskError::Internal(format!("component of `{name}` not loaded"))));
        };
        let config = config.as_ref().map_or_else(|| "{}".to_owned(), |c| c.to_string());
        let mut g = GuestInstance::new(component, world, name, s, &env, state, &config).map_err(|e| JobError::Failed(e.into()))?;
        g.set_attempt(attempt);
        Ok(g)
    };
    let assigner = |wm: &WatermarkSpec, node: &str, s: u32| -> Result<OpSlot, JobError> {
        let punctuated = match &wm.component {
            Some(path) if wm.strategy == WatermarkStrategy::Punctuated => {
                let bytes = std::fs::read(graph.base_dir.join(path)).map_err(|e| JobError::MissingComponent {
                    operator: node.to_owned(),
                    path: graph.base_dir.join(path),
                    reason: e.to_string(),
                })?;
                let loaded = engine.load(&bytes).map_err(|source| JobError::Component {
                    operator: node.to_owned(),
                    source,
                })?;
                let config = wm.config.as_ref().map_or_else(|| "{}".to_owned(), |c| c.to_string());
                let mut g =
                    GuestInstance::new(&loaded, World::Punctuated, node, s, &env, None, &config).map_err(|e| JobError::Failed(e.into()))?;
                g.set_attempt(attempt);
                Some(g)
            }
            _ => None,
        };
        Ok(OpSlot {
            op: Box::new(WatermarkAssigner {
                periodic: PeriodicWatermarks::new(wm),
                punctuated,
                clock: ctx.options.clock.clone(),
                emitted: None,
            }),
            metrics: Arc::new(OperatorMetrics::new(&format!("{node} (watermarks)"), 0)),
            node: None,
        })
    };
    for chain in &chains {
        let head = chain.nodes[0];
        let tail = *chain.nodes.last().unwrap_or(&head);
        let parallelism = graph.nodes[head].parallelism;
        for s in 0..parallelism {
            let mut ops = Vec::new();
            let input = match &graph.nodes[head].kind {
                NodeKind::Source(src) => {
                    if let Some(wm) = &src.watermarks {
                        ops.push(assigner(wm, &src.name, s)?);
                    }
                    let mut reader = open_source(graph, src, s)?;
                    if let Some(snaps) = restore.and_then(|r| r.states.get(&src.name)) {
                        let position = snaps.get(s as usize).and_then(|snap| snap.operator_state("position"));
                        match position {
                            Some(p) => reader.seek(p).map_err(|e| JobError::Restore(e.to_string()))?,
                            None => {
                                return Err(JobError::Restore(format!(
                                    "the checkpoint has no position for subtask {s} of source `{}`",
                                    src.name
                                )));
                            }
                        }
                    }
                    Input::Source {
                        reader,
                        idle: IdleTracker::new(src.watermarks.as_ref().and_then(|w| w.idle_timeout_ms)),
                    }
                }
                _ => {
                    let (rx, input_of): (Vec<_>, Vec<_>) = std::mem::take(&mut receivers[head][s as usize]).into_iter().unzip();
                    Input::Gate {
                        valve: WatermarkValve::new(rx.len()),
                        gate: Box::new(LocalInputGate::new(rx)),
                        input_of,
                    }
                }
            };
            for &n in &chain.nodes {
                let node = &graph.nodes[n];
                let op: Box<dyn Operator> = match &node.kind {
                    NodeKind::Source(_) => continue,
                    NodeKind::Sink(sink) => Box::new(SinkOperator {
                        writer: open_sink(graph, sink, s, ck.map(|c| c.completed.clone()))?,
                        last_flush: Instant::now(),
                    }),
                    NodeKind::Operator(o, _) => {
                        let range = KeyGroupRange::for_subtask(spec.max_parallelism, node.parallelism, s);
                        let keyed_state = || HeapKeyedState::with_budget(range, Some(ctx.state_budget.clone()));
                        let outputs = GuestOutputs::new(&o.name, s, spec.on_record_error, metrics[n].clone());
                        match o.kind {
                            OperatorKind::KeyedProcess => Box::new(KeyedOperator::new(
                                guest(n, &o.name, World::KeyedProcess, s, Some(keyed_state()), &o.config)?,
                                outputs,
                                spec.max_parallelism,
                            )),
                            OperatorKind::Window => {
                                let window = o.window.as_ref().ok_or_else(|| JobError::Invalid {
                                    node: o.name.clone(),
                                    message: "a window operator needs a `window` table".into(),
                                })?;
                                let cfg = WindowConfig::from_spec(window).map_err(|message| JobError::Invalid {
                                    node: o.name.clone(),
                                    message,
                                })?;
                                let function = match (&components[n], window.aggregate) {
                                    (Some(c), _) if c.info.world == Some(World::WindowProcess) => {
                                        WindowFunction::Process(guest(n, &o.name, World::WindowProcess, s, None, &o.config)?)
                                    }
                                    (Some(_), _) => {
                                        WindowFunction::Aggregate(guest(n, &o.name, World::WindowAggregate, s, None, &o.config)?)
                                    }
                                    (None, Some(kind)) => WindowFunction::Builtin(Builtin {
                                        kind,
                                        field: window.field.clone(),
                                    }),
                                    (None, None) => {
                                        return Err(JobError::Invalid {
                                            node: o.name.clone(),
                                            message: "a window needs a `component` or a built-in `aggregate`".into(),
                                        });
                                    }
                                };
                                Box::new(
                                    WindowOperator::new(
                                        cfg,
                                        function,
                                        keyed_state(),
                                        ctx.options.clock.clone(),
                                        spec.max_parallelism,
                                        outputs,
                                    )
                                    .map_err(JobError::Failed)?,
                                )
                            }
                            OperatorKind::Join => {
                                let cfg = match &o.join {
                                    Some(j) => Some(JoinConfig::from_spec(j).map_err(|message| JobError::Invalid {
                                        node: o.name.clone(),
                                        message,
                                    })?),
                                    None => None,
                                };
                                Box::new(JoinOperator::new(cfg, keyed_state(), spec.max_parallelism, outputs).map_err(JobError::Failed)?)
                            }
                            _ => Box::new(StatelessOperator::new(
                                guest(n, &o.name, World::Stateless, s, None, &o.config)?,
                                outputs,
                            )),
                        }
                    }
                };
                let mut op = op;
                if let Some(snaps) = restore.and_then(|r| r.states.get(&node.name)) {
                    op.restore(snaps).map_err(JobError::Failed)?;
                }
                ops.push(OpSlot {
                    op,
                    metrics: metrics[n].clone(),
                    node: Some(node.name.clone()),
                });
                if let NodeKind::Operator(o, _) = &node.kind
                    && let Some(wm) = &o.watermarks
                {
                    ops.push(assigner(wm, &o.name, s)?);
                }
            }
            let mut writers = Vec::new();
            let blocked_ns = Arc::new(AtomicU64::new(0));
            for (ei, e) in graph.edges.iter().enumerate().filter(|(_, e)| e.from == tail) {
                let row = std::mem::take(&mut senders[ei][s as usize]);
                let targets = row.len();
                writers.push(EdgeWriter {
                    blocked_ns: blocked_ns.clone(),
                    partition: e.partition,
                    senders: row,
                    own_index: 0,
                    max_parallelism: spec.max_parallelism,
                    next: s as usize,
                    buffers: (0..targets).map(|_| BatchWriter::new()).collect(),
                    target: graph.nodes[e.to].name.clone(),
                    output: e.output,
                });
            }
            let head_metrics = matches!(graph.nodes[head].kind, NodeKind::Source(_)).then(|| metrics[head].clone());
            let name = format!(
                "{}#{s}",
                chain
                    .nodes
                    .iter()
                    .map(|&n| graph.nodes[n].name.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            );
            let head_source = match &graph.nodes[head].kind {
                NodeKind::Source(src) => Some(src),
                _ => None,
            };
            let channels = match &input {
                Input::Gate { input_of, .. } => input_of.len(),
                Input::Source { .. } => 0,
            };
            let task_ckpt = ck.map(|c| {
                let rx = head_source.map(|_| {
                    let (tx, rx) = crossbeam_channel::unbounded();
                    triggers.push(Some(tx));
                    rx
                });
                if rx.is_none() {
                    triggers.push(None);
                }
                TaskCheckpoints {
                    attempt,
                    triggers: rx,
                    writer: c.writer.clone(),
                    reports: c.reports.clone(),
                    last_barrier: 0,
                    aligning: None,
                    ended: vec![false; channels],
                    stopped: false,
                }
            });
            tasks.push((
                name,
                Task {
                    index: tasks.len(),
                    subtask: s,
                    input,
                    source_node: head_source.map(|src| src.name.clone()),
                    head_metrics,
                    ops,
                    writers,
                    batch_size: spec.batch_size,
                    cancel: cancel.clone(),
                    clock: ctx.options.clock.clone(),
                    ckpt: task_ckpt,
                    throttle: head_source.and_then(|src| src.records_per_second).map(|rate| Throttle {
                        rate,
                        start: Instant::now(),
                        emitted: 0,
                    }),
                    gauges: TaskGauges {
                        subtask: s,
                        nodes: chain.nodes.iter().map(|&n| metrics[n].clone()).collect(),
                        blocked_ns,
                    },
                },
            ));
        }
    }

    let mut threads = Vec::new();
    for (name, mut task) in tasks {
        let (task_error, task_cancel, task_name) = (error.clone(), cancel.clone(), name.clone());
        let spawned = std::thread::Builder::new().name(name.clone()).spawn(move || {
            let (error, cancel) = (task_error, task_cancel);
            let span = tracing::info_span!("task", task = %task_name);
            let _g = span.enter();
            if let Err(e) = task.run() {
                if !e.is_knock_on() {
                    tracing::error!(error = %e, "task failed");
                    cancel.store(true, Ordering::SeqCst);
                }
                record(&error, e);
            }
            drop(task);
        });
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                cancel.store(true, Ordering::SeqCst);
                record(&error, TaskError::Internal(format!("spawning task {name}: {e}")));
            }
        }
    }
    if let (Some(c), Some(p)) = (coordinator, plumbing) {
        c.start_attempt(attempt, triggers, p.writer);
    }
    Ok(Attempt { threads, cancel, error })
}

/// The kind of state an operator keeps in checkpoints, if any.
fn state_kind(node: &crate::job::graph::Node) -> Option<&'static str> {
    match &node.kind {
        NodeKind::Source(_) => Some("source"),
        NodeKind::Operator(o, _) if o.kind == OperatorKind::KeyedProcess => Some("keyed-process"),
        NodeKind::Operator(o, _) if o.kind == OperatorKind::Window => Some("window"),
        NodeKind::Operator(o, _) if o.kind == OperatorKind::Join => Some("join"),
        _ => None,
    }
}

/// The operators whose state a checkpoint to restore must hold; all of
/// them (`require_all`) for the job's own checkpoints.
fn expected_state(graph: &JobGraph, require_all: bool) -> ExpectedState {
    ExpectedState {
        operators: graph
            .nodes
            .iter()
            .filter(|n| state_kind(n).is_some())
            .map(|n| n.name.clone())
            .collect(),
        require_all,
    }
}

fn operator_infos(graph: &JobGraph, components: &[Option<Arc<LoadedComponent>>]) -> HashMap<String, OperatorInfo> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let kind = state_kind(n)?;
            Some((
                n.name.clone(),
                OperatorInfo {
                    kind: kind.into(),
                    parallelism: n.parallelism,
                    component: components[i].as_ref().map(|c| c.digest.to_string()),
                },
            ))
        })
        .collect()
}

/// Directories of the job's file sinks.
fn sink_dirs(graph: &JobGraph) -> HashMap<String, PathBuf> {
    graph
        .nodes
        .iter()
        .filter_map(|n| match &n.kind {
            NodeKind::Sink(s) if s.kind == SinkKind::File => {
                Some((n.name.clone(), graph.base_dir.join(s.path.as_deref().unwrap_or_default())))
            }
            _ => None,
        })
        .collect()
}

/// Before an attempt of a checkpointed job: commit the output the restored
/// checkpoint sealed, discard every other uncommitted file, and on a fresh
/// start remove earlier runs' output.
fn prepare_sinks(graph: &JobGraph, restore: Option<&LoadedCheckpoint>) -> Result<(), JobError> {
    let dirs = sink_dirs(graph);
    if let Some(c) = restore {
        commit_sinks(&c.meta, &dirs).map_err(JobError::Restore)?;
        for (name, dir) in &dirs {
            let keep = c.meta.sinks.iter().find(|s| &s.name == name).map_or(&[][..], |s| &s.pending[..]);
            file_sink::rollback(dir, c.meta.checkpoint, keep).map_err(|e| JobError::Restore(e.to_string()))?;
        }
    }
    for dir in dirs.values() {
        file_sink::clean(dir, &[], restore.is_none()).map_err(|e| JobError::Restore(e.to_string()))?;
    }
    Ok(())
}

/// Does the checkpoint fit the job? Operators are matched by name; a
/// keyed operator may change its parallelism (key groups are reassigned), a
/// source may not.
fn check_restore(graph: &JobGraph, c: &LoadedCheckpoint, allow_non_restored: bool) -> Result<(), JobError> {
    let spec = &graph.spec;
    let err = |m: String| JobError::Restore(format!("{}: {m}", c.path.display()));
    if c.meta.max_parallelism != spec.max_parallelism {
        return Err(err(format!(
            "it was taken with max_parallelism {}, the job has {}: key groups would not match",
            c.meta.max_parallelism, spec.max_parallelism
        )));
    }
    for op in &c.meta.operators {
        match graph.nodes.iter().find(|n| n.name == op.name) {
            None if allow_non_restored => {
                tracing::warn!(operator = %op.name, "dropping the state of an operator the job no longer has");
            }
            None => {
                return Err(err(format!(
                    "it has state of operator `{}`, which the job does not have; pass --allow-non-restored-state to drop that state",
                    op.name
                )));
            }
            Some(n) => {
                let kind = state_kind(n).unwrap_or("stateless operator");
                if kind != op.kind {
                    return Err(err(format!("`{}` was a {} and is now a {kind}", op.name, op.kind)));
                }
                if kind == "source" && n.parallelism != op.parallelism {
                    return Err(err(format!(
                        "source `{}` had parallelism {} and now has {}: source positions cannot be redistributed",
                        op.name, op.parallelism, n.parallelism
                    )));
                }
                if op.files.len() as u32 != op.parallelism {
                    return Err(err(format!(
                        "`{}` has {} state files for parallelism {}",
                        op.name,
                        op.files.len(),
                        op.parallelism
                    )));
                }
            }
        }
    }
    Ok(())
}

fn open_source(graph: &JobGraph, src: &crate::job::SourceSpec, subtask: u32) -> Result<Box<dyn SourceReader>, JobError> {
    Ok(match src.kind {
        SourceKind::File => {
            let path = graph.base_dir.join(src.path.as_deref().unwrap_or_default());
            Box::new(
                FileSource::open(
                    &path,
                    FileOptions {
                        format: src.format.unwrap_or_default(),
                        key_field: src.key_field.clone(),
                        timestamp_field: src.timestamp_field.clone(),
                        columns: src.columns.clone().unwrap_or_default(),
                        follow: src.follow,
                    },
                )
                .map_err(|e| JobError::Failed(e.into()))?,
            )
        }
        SourceKind::Generator => Box::new(Generator::new(
            GeneratorConfig {
                count: src.count.unwrap_or(0),
                keys: src.keys,
                distribution: src.distribution.unwrap_or_default(),
                value_size: src.value_size.unwrap_or(100),
                seed: src.seed.unwrap_or(42),
                events_per_second: src.events_per_second,
                start_time_ms: src.start_time_ms.unwrap_or(0),
            },
            subtask,
            src.parallelism,
        )),
        SourceKind::Nexmark => Box::new(NexmarkSource::new(
            NexmarkSettings {
                count: src.count.unwrap_or(0),
                events_per_second: src.events_per_second.unwrap_or(10_000),
                start_time_ms: src.start_time_ms.unwrap_or(0),
            },
            subtask,
            src.parallelism,
        )),
    })
}

fn open_sink(
    graph: &JobGraph,
    sink: &crate::job::SinkSpec,
    subtask: u32,
    completed: Option<Arc<AtomicU64>>,
) -> Result<Box<dyn SinkWriter>, JobError> {
    Ok(match (sink.kind, completed) {
        (SinkKind::Stdout, _) => Box::new(JsonLinesSink::stdout(sink.format)),
        (SinkKind::Discard, _) => Box::new(crate::connectors::DiscardSink),
        (SinkKind::File, Some(completed)) => {
            let dir = graph.base_dir.join(sink.path.as_deref().unwrap_or_default());
            Box::new(TransactionalFileSink::new(&dir, subtask, sink.format, completed).map_err(|e| JobError::Failed(e.into()))?)
        }
        (SinkKind::File, None) => {
            let mut path = graph.base_dir.join(sink.path.as_deref().unwrap_or_default());
            if sink.parallelism > 1 {
                path = path.join(format!("part-{subtask}.jsonl"));
            }
            Box::new(JsonLinesSink::file(&path, sink.format).map_err(|e| JobError::Failed(e.into()))?)
        }
    })
}
