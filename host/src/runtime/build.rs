//! Building a task from its descriptor: the only way the runtime makes
//! tasks, in-process or on a TaskManager.
//!
//! ```text
//! TaskDescriptor ─► input: open the source (seek to its restored position)
//!                          | an input gate from the shuffle environment
//!                ─► each operator of the chain: components by digest,
//!                   guests instantiated, state read from its handles
//!                ─► output edges: senders from the shuffle environment
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use sluice_guest::batch::BatchWriter;

use super::iteration::HeadLoop;
use super::partition::{EdgeWriter, FeedbackWriter};
use super::shuffle::ShuffleEnvironment;
use super::task::{Finals, Input, OpSlot, Task, TaskCheckpoints, TaskGauges, Throttle};
use crate::checkpoint::writer::WriteJob;
use crate::checkpoint::{Barrier, DecodedSnapshot, RestoreLimits, read_operator_state};
use crate::connectors::generator::GeneratorConfig;
use crate::connectors::kafka_source::KafkaSource;
use crate::connectors::nats_source::NatsSource;
use crate::connectors::{
    FileOptions, FileSource, Generator, JsonLinesSink, NexmarkSettings, NexmarkSource, SinkWriter, SourceReader, TransactionalFileSink,
    file_sink, kafka_sink, nats_sink, postgres_sink, spool,
};
use crate::job::plan::{ExecutionPlan, OperatorBody, OperatorDescriptor, RestoreHandles, TaskDescriptor};
use crate::job::{JobError, OperatorKind};
use crate::operator::OperatorMetrics;
use crate::operator::TaskError;
use crate::operator::join::{JoinConfig, JoinOperator};
use crate::operator::{GuestOutputs, KeyedOperator, Operator, SinkOperator, StatelessOperator, WatermarkAssigner};
use crate::operator::{WindowFunction, WindowOperator};
use crate::spec::{Delivery, ExecutionMode, SinkKind, SinkSpec, SourceKind, SourceSpec, WatermarkSpec, WatermarkStrategy};
use crate::state::HeapKeyedState;
use crate::tenancy::{InstanceLimits, StateBudget};
use crate::time::{Clock, IdleTracker, PeriodicWatermarks, WatermarkValve};
use crate::wasm::{GuestEnv, GuestInstance, LoadedComponent, World};
use crate::window::{Builtin, WindowConfig};

/// Finds a component by digest (loaded, or fetched and compiled).
pub trait ComponentResolver: Sync {
    /// The component with `digest`.
    fn component(&self, digest: &str) -> Result<Arc<LoadedComponent>, String>;
}

impl ComponentResolver for HashMap<String, Arc<LoadedComponent>> {
    fn component(&self, digest: &str) -> Result<Arc<LoadedComponent>, String> {
        self.get(digest).cloned().ok_or_else(|| format!("component {digest} is not loaded"))
    }
}

/// The checkpointing plumbing of an attempt's tasks in one process.
pub(crate) struct AttemptCheckpoints {
    /// The writer thread.
    pub writer: Sender<WriteJob>,
    /// Final states of finished tasks.
    pub finals: Finals,
    /// The newest completed checkpoint, for transactional sinks.
    pub completed: Arc<AtomicU64>,
}

/// Everything tasks of one attempt are built with, besides their descriptor.
pub(crate) struct TaskEnvironment<'a> {
    /// The plan.
    pub plan: &'a ExecutionPlan,
    /// The attempt.
    pub attempt: u32,
    /// Components by digest.
    pub components: &'a dyn ComponentResolver,
    /// Channels.
    pub shuffle: &'a dyn ShuffleEnvironment,
    /// Processing time.
    pub clock: Arc<dyn Clock>,
    /// Guest limits, meter and logs.
    pub guest: GuestEnv,
    /// Counters by node.
    pub metrics: &'a [Arc<OperatorMetrics>],
    /// Where keyed state and timers are counted.
    pub state_budget: StateBudget,
    /// State to restore.
    pub restore: Option<&'a RestoreHandles>,
    /// Bounds on what a restore reads.
    pub restore_limits: RestoreLimits,
    /// Checkpointing, when the job is checkpointed.
    pub checkpoints: Option<&'a AttemptCheckpoints>,
    /// The attempt's cancel flag.
    pub cancel: Arc<AtomicBool>,
    /// The attempt's iterations, by head.
    pub loops: &'a super::iteration::Loops,
}

/// The guest limits of a plan.
pub(crate) fn instance_limits(plan: &ExecutionPlan) -> InstanceLimits {
    let l = &plan.limits;
    InstanceLimits {
        memory_bytes: (l.memory_mb.saturating_mul(1 << 20)).min(usize::MAX as u64) as usize,
        call_timeout: Duration::from_millis(l.call_timeout_ms.max(1)),
        log_lines_per_sec: l.log_lines_per_sec,
        fuel_per_call: l.fuel_per_call,
        max_record_bytes: l.max_record_bytes,
        max_output_bytes: l.max_output_bytes_per_call,
        max_output_records: l.max_output_records_per_call,
    }
}

fn restore_error(e: impl std::fmt::Display) -> JobError {
    JobError::Restore(e.to_string())
}

impl TaskEnvironment<'_> {
    fn component(&self, operator: &str, digest: &str) -> Result<Arc<LoadedComponent>, JobError> {
        self.components.component(digest).map_err(|message| JobError::Invalid {
            node: operator.to_owned(),
            message,
        })
    }

    fn guest(
        &self,
        name: &str,
        digest: Option<&str>,
        world: World,
        subtask: u32,
        state: Option<HeapKeyedState>,
        config: &Option<serde_json::Value>,
    ) -> Result<GuestInstance, JobError> {
        let Some(digest) = digest else {
            return Err(JobError::Failed(TaskError::Internal(format!("`{name}` has no component"))));
        };
        let component = self.component(name, digest)?;
        let config = config.as_ref().map_or_else(|| "{}".to_owned(), |c| c.to_string());
        let mut g =
            GuestInstance::new(&component, world, name, subtask, &self.guest, state, &config).map_err(|e| JobError::Failed(e.into()))?;
        g.set_attempt(self.attempt);
        Ok(g)
    }

    fn assigner(&self, wm: &WatermarkSpec, component: Option<&str>, node: &str, subtask: u32) -> Result<OpSlot, JobError> {
        let punctuated = match component {
            Some(digest) if wm.strategy == WatermarkStrategy::Punctuated => {
                Some(self.guest(node, Some(digest), World::Punctuated, subtask, None, &wm.config)?)
            }
            _ => None,
        };
        Ok(OpSlot {
            op: Box::new(WatermarkAssigner {
                periodic: PeriodicWatermarks::new(wm),
                punctuated,
                clock: self.clock.clone(),
                emitted: None,
            }),
            metrics: Arc::new(OperatorMetrics::new(&format!("{node} (watermarks)"), 0)),
            node: None,
        })
    }

    /// The restored state of operator `o` this subtask needs: for a keyed
    /// operator, the files whose key groups overlap its own.
    fn restored(&self, o: &OperatorDescriptor, subtask: u32) -> Result<Option<Vec<Arc<DecodedSnapshot>>>, JobError> {
        let Some(r) = self.restore else { return Ok(None) };
        let Some(h) = r.operators.get(&o.name) else { return Ok(None) };
        let mine = o.key_group_range();
        let source = matches!(o.body, OperatorBody::Source { .. });
        // A Kafka source restores from every subtask's partitions (union).
        let union = matches!(&o.body, OperatorBody::Source { spec, .. } if spec.kind == SourceKind::Kafka);
        let keep = |f: &crate::checkpoint::StateFile| {
            if source {
                return union || f.subtask == subtask;
            }
            let theirs = crate::state::KeyGroupRange::for_subtask(r.max_parallelism, h.parallelism, f.subtask);
            theirs.start <= mine.end && mine.start <= theirs.end && !theirs.is_empty()
        };
        read_operator_state(&r.path, r.max_parallelism, h.parallelism, &h.files, keep, &self.restore_limits)
            .map(Some)
            .map_err(restore_error)
    }
}

/// Build task `desc`; with checkpoints, also the sender its barriers are
/// injected through when it is a source task.
pub(crate) fn build_task(desc: &TaskDescriptor, env: &TaskEnvironment) -> Result<(Task, Option<Sender<Barrier>>), JobError> {
    let plan = env.plan;
    let s = desc.subtask;
    let Some(head) = desc.operators.first() else {
        return Err(JobError::Failed(TaskError::Internal(format!("task {} has no operator", desc.name))));
    };
    let mut ops = Vec::new();
    let mut source_node = None;
    let mut throttle = None;
    let input = match &head.body {
        OperatorBody::Source {
            spec: src,
            watermark_component,
        } => {
            // A Kafka source makes its own watermarks, per partition.
            let own_watermarks = src.kind == SourceKind::Kafka && KafkaSource::tracks_watermarks(src);
            if let Some(wm) = src.watermarks.as_ref().filter(|_| !own_watermarks) {
                ops.push(env.assigner(wm, watermark_component.as_deref(), &src.name, s)?);
            }
            let mut reader = open_source(src, s, env.checkpoints.map(|c| c.completed.clone()))?;
            if let Some(snaps) = env.restored(head, s)? {
                let positions: Vec<&[u8]> = snaps.iter().filter_map(|snap| snap.operator_state("position")).collect();
                match snaps.first().and_then(|snap| snap.operator_state("position")) {
                    Some(_) if reader.union_positions() => reader.seek_union(&positions).map_err(restore_error)?,
                    Some(p) => reader.seek(p).map_err(restore_error)?,
                    None => {
                        return Err(JobError::Restore(format!(
                            "the checkpoint has no position for subtask {s} of source `{}`",
                            src.name
                        )));
                    }
                }
            }
            source_node = Some(src.name.clone());
            throttle = src.records_per_second.map(|rate| Throttle {
                rate,
                start: Instant::now(),
                emitted: 0,
            });
            Input::Source {
                reader,
                idle: IdleTracker::new(src.watermarks.as_ref().and_then(|w| w.idle_timeout_ms)),
            }
        }
        _ => {
            let gate = env.shuffle.input_gate(desc).map_err(JobError::Failed)?;
            let mut valve = WatermarkValve::new(desc.inputs.len());
            // Feedback channels carry no event time.
            for (i, _) in desc.inputs.iter().enumerate().filter(|(_, c)| c.feedback) {
                valve.on_end(i);
            }
            Input::Gate {
                valve,
                gate,
                input_of: desc.inputs.iter().map(|i| i.input as usize).collect(),
            }
        }
    };
    let mut replay = Vec::new();
    for o in &desc.operators {
        let n = o.node;
        let metrics = env.metrics[n].clone();
        let op: Box<dyn Operator> = match &o.body {
            OperatorBody::Source { .. } => continue,
            OperatorBody::Sink { spec } => Box::new(SinkOperator {
                writer: open_sink(spec, s, env)?,
                last_flush: Instant::now(),
            }),
            OperatorBody::Operator {
                spec: os,
                component,
                watermark_component,
            } => {
                let keyed_state = || HeapKeyedState::with_budget(o.key_group_range(), Some(env.state_budget.clone()));
                let outputs = GuestOutputs::new(&os.name, s, plan.on_record_error, metrics.clone());
                let component = component.as_deref();
                let mut op: Box<dyn Operator> = match os.kind {
                    OperatorKind::KeyedProcess => Box::new(KeyedOperator::new(
                        env.guest(&os.name, component, World::KeyedProcess, s, Some(keyed_state()), &os.config)?,
                        outputs,
                        plan.max_parallelism,
                    )),
                    OperatorKind::Window => {
                        let window = os.window.as_ref().ok_or_else(|| JobError::Invalid {
                            node: os.name.clone(),
                            message: "a window operator needs a `window` table".into(),
                        })?;
                        let cfg = WindowConfig::from_spec(window).map_err(|message| JobError::Invalid {
                            node: os.name.clone(),
                            message,
                        })?;
                        let function = match (component, window.aggregate) {
                            (Some(digest), _) => {
                                let world = env.component(&os.name, digest)?.info.world;
                                if world == Some(World::WindowProcess) {
                                    WindowFunction::Process(env.guest(&os.name, component, World::WindowProcess, s, None, &os.config)?)
                                } else {
                                    WindowFunction::Aggregate(env.guest(
                                        &os.name,
                                        component,
                                        World::WindowAggregate,
                                        s,
                                        None,
                                        &os.config,
                                    )?)
                                }
                            }
                            (None, Some(kind)) => WindowFunction::Builtin(Builtin {
                                kind,
                                field: window.field.clone(),
                            }),
                            (None, None) => {
                                return Err(JobError::Invalid {
                                    node: os.name.clone(),
                                    message: "a window needs a `component` or a built-in `aggregate`".into(),
                                });
                            }
                        };
                        Box::new(
                            WindowOperator::new(cfg, function, keyed_state(), env.clock.clone(), plan.max_parallelism, outputs)
                                .map_err(JobError::Failed)?,
                        )
                    }
                    OperatorKind::Join => {
                        let cfg = match &os.join {
                            Some(j) => Some(JoinConfig::from_spec(j).map_err(|message| JobError::Invalid {
                                node: os.name.clone(),
                                message,
                            })?),
                            None => None,
                        };
                        Box::new(JoinOperator::new(cfg, keyed_state(), plan.max_parallelism, outputs).map_err(JobError::Failed)?)
                    }
                    _ => Box::new(StatelessOperator::new(
                        env.guest(&os.name, component, World::Stateless, s, None, &os.config)?,
                        outputs,
                    )),
                };
                if let Some(snaps) = env.restored(o, s)? {
                    op.restore(&snaps).map_err(JobError::Failed)?;
                    let logs: Vec<&[u8]> = snaps.iter().filter_map(|x| x.operator_state(super::iteration::LOG_STATE)).collect();
                    if !logs.is_empty() {
                        replay = super::iteration::restore_log(&logs, o.key_group_range(), plan.max_parallelism)
                            .map_err(|e| JobError::Restore(format!("`{}`: {e}", o.name)))?;
                    }
                }
                if let Some(wm) = &os.watermarks {
                    ops.push(OpSlot {
                        op,
                        metrics: metrics.clone(),
                        node: Some(o.name.clone()),
                    });
                    ops.push(env.assigner(wm, watermark_component.as_deref(), &os.name, s)?);
                    continue;
                }
                op
            }
        };
        ops.push(OpSlot {
            op,
            metrics,
            node: Some(o.name.clone()),
        });
    }
    let blocked_ns = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for out in &desc.outputs {
        let senders = out
            .channels
            .iter()
            .zip(&out.consumers)
            .map(|(&c, &consumer)| env.shuffle.output(desc.index, c, consumer))
            .collect::<Result<Vec<_>, _>>()
            .map_err(JobError::Failed)?;
        let targets = senders.len();
        writers.push(EdgeWriter {
            blocked_ns: blocked_ns.clone(),
            partition: out.partition,
            senders,
            own_index: 0,
            max_parallelism: plan.max_parallelism,
            next: s as usize,
            buffers: (0..targets).map(|_| BatchWriter::new()).collect(),
            target: out.target.clone(),
            output: out.output,
            filter: out.filter.clone(),
            feedback: match out.feedback {
                false => None,
                true => {
                    Some(FeedbackWriter {
                        lp: env.loops.get(&head.name).cloned().ok_or_else(|| {
                            JobError::Failed(TaskError::Internal(format!("`{}` has a feedback edge but no loop", head.name)))
                        })?,
                        round: 1,
                        max_rounds: out.max_rounds.unwrap_or(u32::MAX),
                        announced: vec![0; targets],
                        ended: false,
                    })
                }
            },
        });
    }
    let head_loop = match env.loops.get(&head.name) {
        Some(lp) if desc.inputs.iter().any(|i| i.feedback) => Some(HeadLoop::new(
            lp.clone(),
            &head.name,
            desc.inputs.iter().map(|i| i.feedback).collect(),
            replay,
        )),
        _ => None,
    };
    let mut trigger = None;
    let ckpt = env.checkpoints.map(|c| {
        let triggers = source_node.as_ref().map(|_| {
            let (tx, rx) = crossbeam_channel::unbounded();
            trigger = Some(tx);
            rx
        });
        TaskCheckpoints {
            attempt: env.attempt,
            triggers,
            writer: c.writer.clone(),
            finals: c.finals.clone(),
            // A final file sealed before any new barrier is named after the
            // checkpoint restored, never after one an earlier attempt used.
            last_barrier: env.restore.map_or(0, |r| r.checkpoint),
            aligning: None,
            // Barriers are aligned on regular inputs only: the feedback
            // channels of an iteration count as ended.
            ended: desc.inputs.iter().map(|i| i.feedback).collect(),
            stopped: false,
        }
    });
    let head_metrics = source_node.as_ref().map(|_| env.metrics[head.node].clone());
    let task = Task {
        index: desc.index,
        subtask: s,
        input,
        source_node,
        head_metrics,
        ops,
        writers,
        batch_size: plan.batch_size,
        cancel: env.cancel.clone(),
        clock: env.clock.clone(),
        ckpt,
        throttle,
        gauges: TaskGauges {
            subtask: s,
            nodes: desc.operators.iter().map(|o| env.metrics[o.node].clone()).collect(),
            blocked_ns,
        },
        head: head_loop,
    };
    Ok((task, trigger))
}

fn open_source(src: &SourceSpec, subtask: u32, completed: Option<Arc<AtomicU64>>) -> Result<Box<dyn SourceReader>, JobError> {
    Ok(match src.kind {
        SourceKind::File => {
            let path = PathBuf::from(src.path.as_deref().unwrap_or_default());
            Box::new(
                FileSource::open(
                    &path,
                    FileOptions {
                        format: src.format.unwrap_or_default(),
                        key_field: src.key_field.clone(),
                        timestamp_field: src.timestamp_field.clone(),
                        columns: src.columns.clone().unwrap_or_default(),
                        follow: src.follow,
                        header: src.header,
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
        SourceKind::Nats => Box::new(NatsSource::new(src, completed).map_err(|e| JobError::Failed(e.into()))?),
        SourceKind::Kafka => Box::new(KafkaSource::new(src, subtask, completed)),
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

/// Open a sink subtask. A transactional file sink first commits the output
/// the restored checkpoint sealed and discards the rest of its files.
fn open_sink(sink: &SinkSpec, subtask: u32, env: &TaskEnvironment) -> Result<Box<dyn SinkWriter>, JobError> {
    let dir = PathBuf::from(sink.path.as_deref().unwrap_or_default());
    Ok(match (sink.kind, env.checkpoints) {
        (SinkKind::Stdout, _) => Box::new(JsonLinesSink::stdout(sink.format)),
        (SinkKind::Discard, _) => Box::new(crate::connectors::DiscardSink),
        (SinkKind::File, Some(c)) => {
            let restored = env.restore.map(|r| {
                let keep = r.sinks.get(&sink.name).map_or(&[][..], |v| &v[..]);
                (r.checkpoint, keep)
            });
            let rolled_back = file_sink::prepare(&dir, subtask, sink.parallelism, restored).map_err(restore_error)?;
            if let (Some(logs), Some((id, _))) = (&env.guest.logs, restored)
                && !rolled_back.is_empty()
            {
                logs.host(
                    "warn",
                    &sink.name,
                    subtask,
                    format!(
                        "rolled back {} committed after the restored checkpoint {id} (their records are written again): {}",
                        if rolled_back.len() == 1 {
                            "1 file".to_owned()
                        } else {
                            format!("{} files", rolled_back.len())
                        },
                        rolled_back.join(", ")
                    ),
                );
            }
            Box::new(TransactionalFileSink::new(&dir, subtask, sink.format, c.completed.clone()).map_err(|e| JobError::Failed(e.into()))?)
        }
        (SinkKind::Nats, Some(c)) => open_spooled(
            sink,
            subtask,
            env,
            c,
            (nats_sink::publish_now, None),
            "published again the spooled output of completed checkpoints (JetStream drops the duplicates)",
        )?,
        (SinkKind::Kafka, _) if sink.delivery == Some(Delivery::AtLeastOnce) => {
            Box::new(kafka_sink::KafkaSink::open(sink).map_err(|e| JobError::Failed(e.into()))?)
        }
        (SinkKind::Kafka, Some(c)) => {
            if subtask == 0 {
                kafka_sink::check_transaction_timeout(sink).map_err(|e| JobError::Failed(e.into()))?;
            }
            open_spooled(
                sink,
                subtask,
                env,
                c,
                (kafka_sink::publish_transactions, Some(kafka_sink::encode_spool)),
                "completed the Kafka transactions of completed checkpoints left by an earlier run",
            )?
        }
        (SinkKind::Kafka, None) => {
            return Err(JobError::Invalid {
                node: sink.name.clone(),
                message: "an exactly-once kafka sink needs `[checkpoints]`".into(),
            });
        }
        (SinkKind::Nats, None) => {
            return Err(JobError::Invalid {
                node: sink.name.clone(),
                message: "a nats sink needs `[checkpoints]`".into(),
            });
        }
        (SinkKind::Postgres, checkpoints) => {
            let restored = env.restore.map(|r| {
                let keep = r.sinks.get(&sink.name).map_or(&[][..], |v| &v[..]);
                (r.checkpoint, keep)
            });
            let completed = checkpoints.map_or_else(|| Arc::new(AtomicU64::new(0)), |c| c.completed.clone());
            let (writer, recovered) =
                postgres_sink::PostgresSink::open(sink, subtask, restored, completed).map_err(|e| JobError::Failed(e.into()))?;
            if let Some(logs) = &env.guest.logs
                && !(recovered.committed.is_empty() && recovered.rolled_back.is_empty())
            {
                logs.host(
                    "info",
                    &sink.name,
                    subtask,
                    format!(
                        "prepared transactions of earlier runs: committed {} the restored checkpoint lists [{}], \
                         rolled back {} (their records are written again) [{}]",
                        recovered.committed.len(),
                        recovered.committed.join(", "),
                        recovered.rolled_back.len(),
                        recovered.rolled_back.join(", ")
                    ),
                );
            }
            Box::new(writer)
        }
        (SinkKind::File, None) => {
            let mut path = dir;
            if sink.parallelism > 1 {
                path = path.join(format!("part-{subtask}.jsonl"));
            }
            let sink = match env.plan.mode {
                ExecutionMode::Batch => JsonLinesSink::file_at_end(&path, sink.format),
                ExecutionMode::Streaming => JsonLinesSink::file(&path, sink.format),
            };
            Box::new(sink.map_err(|e| JobError::Failed(e.into()))?)
        }
    })
}

/// Open a write-ahead sink subtask (NATS, Kafka exactly-once): settle its
/// spool and publish what completed checkpoints left (logging `again` with
/// their names), then spool into it, lines made by `encode` (JSON lines by
/// default).
fn open_spooled(
    sink: &SinkSpec,
    subtask: u32,
    env: &TaskEnvironment,
    c: &AttemptCheckpoints,
    (publish, encode): (spool::Publish, Option<file_sink::Encoder>),
    again: &str,
) -> Result<Box<dyn SinkWriter>, JobError> {
    let restored = env.restore.map(|r| {
        let keep = r.sinks.get(&sink.name).map_or(&[][..], |v| &v[..]);
        (r.checkpoint, keep)
    });
    let published = spool::recover(sink, subtask, restored, publish).map_err(|e| JobError::Failed(e.into()))?;
    if let Some(logs) = &env.guest.logs
        && !published.is_empty()
    {
        logs.host("info", &sink.name, subtask, format!("{again}: {}", published.join(", ")));
    }
    let dir = spool::spool(sink);
    let writer = match encode {
        Some(e) => TransactionalFileSink::with_encoder(&dir, subtask, sink.format, e, c.completed.clone()),
        None => TransactionalFileSink::new(&dir, subtask, sink.format, c.completed.clone()),
    };
    Ok(Box::new(writer.map_err(|e| JobError::Failed(e.into()))?))
}

/// Commit the sealed files `names` of the sink `sink` of a plan (whoever
/// hosts the sink subtask that sealed them does this, on notify).
pub(crate) fn commit_sink(plan: &ExecutionPlan, sink: &str, names: &[String]) -> Result<(), TaskError> {
    let spec = plan.tasks.iter().flat_map(|t| &t.operators).find_map(|o| match &o.body {
        OperatorBody::Sink { spec }
            if spec.name == sink && matches!(spec.kind, SinkKind::File | SinkKind::Postgres | SinkKind::Nats | SinkKind::Kafka) =>
        {
            Some(spec)
        }
        _ => None,
    });
    match spec {
        Some(spec) if spec.kind == SinkKind::Nats => spool::commit(spec, names, nats_sink::publish_now).map_err(TaskError::Connector),
        Some(spec) if spec.kind == SinkKind::Kafka => {
            spool::commit(spec, names, kafka_sink::publish_transactions).map_err(TaskError::Connector)
        }
        Some(spec) if spec.kind == SinkKind::Postgres => postgres_sink::commit(spec, names).map_err(TaskError::Connector),
        Some(spec) => file_sink::commit(Path::new(spec.path.as_deref().unwrap_or_default()), names).map_err(TaskError::Connector),
        None if names.is_empty() => Ok(()),
        None => {
            tracing::warn!(
                sink,
                "the checkpoint has output of a sink the job no longer has; it stays uncommitted"
            );
            Ok(())
        }
    }
}
