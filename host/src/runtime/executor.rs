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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use sluice_guest::batch::BatchWriter;

use super::channel::{GateEvent, InputGate, LocalInputGate, RecordBatch, StreamElement, local_channel};
use super::operator::{Emit, GuestOutputs, KeyedOperator, Operator, SinkOperator, StatelessOperator, WatermarkAssigner};
use super::partition::EdgeWriter;
use crate::connectors::generator::GeneratorConfig;
use crate::connectors::{ConnectorError, FileOptions, FileSource, Generator, JsonLinesSink, SinkWriter, SourceReader};
use crate::job::graph::{JobGraph, NodeId, NodeKind};
use crate::job::spec::{OutputTag, SinkKind, SourceKind, WatermarkSpec, WatermarkStrategy};
use crate::job::{JobError, OperatorKind, Partition};
use crate::state::{HeapKeyedState, KeyGroupRange};
use crate::tenancy::InstanceLimits;
use crate::time::watermarks::ValveOutput;
use crate::time::{Clock, IdleTracker, PeriodicWatermarks, SystemClock, WatermarkValve};
use crate::wasm::{GuestError, GuestInstance, WasmEngine, World};
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
}

impl OperatorMetrics {
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

/// How to run a job.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Processing time for guests.
    pub clock: Arc<dyn Clock>,
    /// Batches a channel holds before its producer blocks. Default 8.
    pub channel_capacity: usize,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            clock: Arc::new(SystemClock),
            channel_capacity: 8,
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
}

/// A running job.
pub struct JobHandle {
    threads: Vec<JoinHandle<()>>,
    cancel: Arc<AtomicBool>,
    error: Arc<Mutex<Option<TaskError>>>,
    /// Per node, in spec order.
    pub metrics: Vec<Arc<OperatorMetrics>>,
    started: Instant,
}

impl JobHandle {
    /// True when every task has ended.
    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(JoinHandle::is_finished)
    }

    /// Ask every task to stop; `wait` then reports the job as cancelled.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
        record(&self.error, TaskError::Cancelled);
    }

    /// Wait for the job to end.
    pub fn wait(self) -> Result<JobSummary, JobError> {
        for t in self.threads {
            if t.join().is_err() {
                record(&self.error, TaskError::Internal("a task panicked".into()));
            }
        }
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(JobError::Failed(e)),
            None => Ok(JobSummary {
                metrics: self.metrics,
                duration: self.started.elapsed(),
            }),
        }
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
}

/// The rest of a chain, seen from the operator before it.
struct Downstream<'a> {
    from: Option<&'a OperatorMetrics>,
    ops: &'a mut [OpSlot],
    writers: &'a mut [EdgeWriter],
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
                },
            ),
            None => {
                for w in self.writers.iter_mut() {
                    w.broadcast(StreamElement::Watermark(watermark))?;
                }
                Ok(())
            }
        }
    }
}

/// A channel into a subtask, with the input number (0 or 1) it feeds.
type InputChannel = (Receiver<StreamElement>, usize);

/// How long a task waits for input before it looks at the clock again.
const POLL: Duration = Duration::from_millis(10);

struct Task {
    input: Input,
    head_metrics: Option<Arc<OperatorMetrics>>,
    ops: Vec<OpSlot>,
    writers: Vec<EdgeWriter>,
    batch_size: usize,
    cancel: Arc<AtomicBool>,
    clock: Arc<dyn Clock>,
}

impl Task {
    fn downstream(&mut self) -> Downstream<'_> {
        Downstream {
            from: self.head_metrics.as_deref(),
            ops: &mut self.ops,
            writers: &mut self.writers,
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

    fn run(&mut self) -> Result<(), TaskError> {
        loop {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(TaskError::Cancelled);
            }
            match &mut self.input {
                Input::Source { reader, idle } => match reader.next_batch(self.batch_size)? {
                    Some(b) if b.len > 0 => {
                        let resumed = idle.on_records(self.clock.now_ms());
                        if resumed {
                            self.downstream().idle(false)?;
                        }
                        self.downstream().emit(b)?;
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
                },
                Input::Gate { gate, valve, input_of } => match gate.next(POLL).map_err(|_| TaskError::UpstreamClosed)? {
                    GateEvent::Element(i, StreamElement::Records(b)) => {
                        let (out, input) = (valve.on_records(i), input_of[i]);
                        self.valve(out)?;
                        self.downstream().push(input, b)?;
                    }
                    GateEvent::Element(i, StreamElement::Watermark(w)) => {
                        let out = valve.on_watermark(i, w);
                        self.valve(out)?;
                    }
                    GateEvent::Element(i, StreamElement::Idle(idle)) => {
                        let out = valve.on_idle(i, idle);
                        self.valve(out)?;
                    }
                    GateEvent::Element(i, StreamElement::EndOfData) => {
                        let out = valve.on_end(i);
                        self.valve(out)?;
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
        Ok(())
    }
}

/// Validate, load and start `graph`. Fails before anything runs if a
/// component is missing, of the wrong world, or fails to open.
pub fn run_job(graph: &JobGraph, engine: &Arc<WasmEngine>, options: RunOptions) -> Result<JobHandle, JobError> {
    let components = graph.load_components(engine)?;
    let spec = &graph.spec;
    let limits = InstanceLimits {
        memory_bytes: (spec.limits.memory_mb.saturating_mul(1 << 20)).min(usize::MAX as u64) as usize,
        call_timeout: Duration::from_millis(spec.limits.call_timeout_ms.max(1)),
        log_lines_per_sec: spec.limits.log_lines_per_sec,
    };
    let metrics: Vec<Arc<OperatorMetrics>> = graph
        .nodes
        .iter()
        .map(|n| {
            Arc::new(OperatorMetrics {
                name: n.name.clone(),
                parallelism: n.parallelism,
                ..Default::default()
            })
        })
        .collect();
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
                    let (tx, rx) = local_channel(options.channel_capacity.max(1));
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
    let guest = |n: NodeId, name: &str, world: World, s: u32, state: Option<HeapKeyedState>, config: &Option<serde_json::Value>| {
        let Some(component) = &components[n] else {
            return Err(JobError::Failed(TaskError::Internal(format!("component of `{name}` not loaded"))));
        };
        let config = config.as_ref().map_or_else(|| "{}".to_owned(), |c| c.to_string());
        GuestInstance::new(component, world, name, s, limits, options.clock.clone(), state, &config).map_err(|e| JobError::Failed(e.into()))
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
                Some(
                    GuestInstance::new(&loaded, World::Punctuated, node, s, limits, options.clock.clone(), None, &config)
                        .map_err(|e| JobError::Failed(e.into()))?,
                )
            }
            _ => None,
        };
        Ok(OpSlot {
            op: Box::new(WatermarkAssigner {
                periodic: PeriodicWatermarks::new(wm),
                punctuated,
                clock: options.clock.clone(),
                emitted: None,
            }),
            metrics: Arc::new(OperatorMetrics {
                name: format!("{node} (watermarks)"),
                parallelism: 1,
                ..Default::default()
            }),
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
                    Input::Source {
                        reader: open_source(graph, src, s)?,
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
                        writer: open_sink(graph, sink, s)?,
                        last_flush: Instant::now(),
                    }),
                    NodeKind::Operator(o, _) => {
                        let range = KeyGroupRange::for_subtask(spec.max_parallelism, node.parallelism, s);
                        let outputs = GuestOutputs::new(&o.name, s, spec.on_record_error, metrics[n].clone());
                        match o.kind {
                            OperatorKind::KeyedProcess => Box::new(KeyedOperator::new(
                                guest(n, &o.name, World::KeyedProcess, s, Some(HeapKeyedState::new(range)), &o.config)?,
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
                                        HeapKeyedState::new(range),
                                        options.clock.clone(),
                                        spec.max_parallelism,
                                        outputs,
                                    )
                                    .map_err(JobError::Failed)?,
                                )
                            }
                            _ => Box::new(StatelessOperator::new(
                                guest(n, &o.name, World::Stateless, s, None, &o.config)?,
                                outputs,
                            )),
                        }
                    }
                };
                ops.push(OpSlot {
                    op,
                    metrics: metrics[n].clone(),
                });
                if let NodeKind::Operator(o, _) = &node.kind
                    && let Some(wm) = &o.watermarks
                {
                    ops.push(assigner(wm, &o.name, s)?);
                }
            }
            let mut writers = Vec::new();
            for (ei, e) in graph.edges.iter().enumerate().filter(|(_, e)| e.from == tail) {
                let row = std::mem::take(&mut senders[ei][s as usize]);
                let targets = row.len();
                writers.push(EdgeWriter {
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
            tasks.push((
                name,
                Task {
                    input,
                    head_metrics,
                    ops,
                    writers,
                    batch_size: spec.batch_size,
                    cancel: cancel.clone(),
                    clock: options.clock.clone(),
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
    Ok(JobHandle {
        threads,
        cancel,
        error,
        metrics,
        started: Instant::now(),
    })
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
    })
}

fn open_sink(graph: &JobGraph, sink: &crate::job::SinkSpec, subtask: u32) -> Result<Box<dyn SinkWriter>, JobError> {
    Ok(match sink.kind {
        SinkKind::Stdout => Box::new(JsonLinesSink::stdout(sink.format)),
        SinkKind::File => {
            let mut path = graph.base_dir.join(sink.path.as_deref().unwrap_or_default());
            if sink.parallelism > 1 {
                path = path.join(format!("part-{subtask}.jsonl"));
            }
            Box::new(JsonLinesSink::file(&path, sink.format).map_err(|e| JobError::Failed(e.into()))?)
        }
    })
}
