//! The physical plan: a validated [`JobGraph`] cut into serializable task
//! descriptors, the only thing the runtime builds tasks from.
//!
//! ```text
//! JobGraph ──chains × parallelism──► TaskDescriptor (one per subtask of a chain)
//!   operators of the chain, with their settings and component digests,
//!   key-group range, input channels (number, input), output edges
//!   (partitioner, target channels by downstream subtask)
//! ```
//!
//! A channel is a number in `0..channels`, one per (upstream subtask,
//! downstream subtask) pair of every edge that is not chained. Paths in a
//! descriptor are absolute, components are digests (fetched and checked by
//! whoever runs the task), and nothing refers back to the job spec, so a
//! plan can be sent to another process as JSON.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::graph::{JobGraph, NodeId, NodeKind};
use crate::checkpoint::StateFile;
use crate::spec::{
    CheckpointMode, ErrorPolicy, ExecutionMode, LimitsSpec, OperatorKind, OperatorSpec, OutputTag, Partition, SinkSpec, SourceSpec,
};
use crate::state::KeyGroupRange;
use crate::wasm::LoadedComponent;

/// The whole job as tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPlan {
    /// The job's name.
    pub job: String,
    /// Number of key groups.
    pub max_parallelism: u32,
    /// Records per batch read by sources.
    pub batch_size: usize,
    /// What to do with a record a UDF reports as failed.
    pub on_record_error: ErrorPolicy,
    /// Limits of every guest instance.
    pub limits: LimitsSpec,
    /// The checkpoint mode, when the job is checkpointed.
    pub checkpoints: Option<CheckpointMode>,
    /// Every node, in spec order (for metrics and checkpoint metadata).
    pub nodes: Vec<PlanNode>,
    /// Number of channels.
    pub channels: u32,
    /// Every task, chains in topological order, subtasks in order.
    pub tasks: Vec<TaskDescriptor>,
    /// Streaming or batch.
    #[serde(default)]
    pub mode: ExecutionMode,
    /// Batch mode: how much a keyed task sorts in memory, and where spill
    /// files go.
    #[serde(default)]
    pub batch: BatchPlan,
}

/// The settings of a batch job's tasks.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchPlan {
    /// Bytes a keyed task sorts in memory before it spills a sorted run.
    pub sort_memory_bytes: u64,
    /// Where intermediate results and sorted runs are written; none: the
    /// system's temporary directory.
    pub spill_dir: Option<std::path::PathBuf>,
}

/// A node of the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    /// Its unique name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// The kind of state it keeps in checkpoints (`source`, `keyed-process`,
    /// `window`, `join`), if any.
    pub state: Option<String>,
    /// The digest of its component, if it has one.
    pub component: Option<String>,
}

/// One subtask of one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskDescriptor {
    /// Its index in [`ExecutionPlan::tasks`].
    pub index: usize,
    /// `head+…+tail#subtask`, for threads and logs.
    pub name: String,
    /// The subtask index (every node of a chain has the same parallelism).
    pub subtask: u32,
    /// The chain, head first.
    pub operators: Vec<OperatorDescriptor>,
    /// Channels into the head (none for a source).
    pub inputs: Vec<InputChannel>,
    /// Edges out of the tail.
    pub outputs: Vec<OutputDescriptor>,
}

/// One operator of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorDescriptor {
    /// Its node index in [`ExecutionPlan::nodes`].
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its parallelism.
    pub parallelism: u32,
    /// The key groups this subtask owns (first, last inclusive).
    pub key_groups: (u32, u32),
    /// What it is.
    pub body: OperatorBody,
}

impl OperatorDescriptor {
    /// The key groups as a range.
    pub fn key_group_range(&self) -> KeyGroupRange {
        KeyGroupRange {
            start: self.key_groups.0,
            end: self.key_groups.1,
        }
    }
}

/// What an operator of a chain is, with everything needed to build it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
// A few per job, built once: the size of the settings does not matter.
#[allow(clippy::large_enum_variant)]
pub enum OperatorBody {
    /// A source; paths are absolute.
    Source {
        /// Its settings.
        spec: SourceSpec,
        /// Digest of its punctuated-watermarks component.
        watermark_component: Option<String>,
    },
    /// A user or built-in operator.
    Operator {
        /// Its settings.
        spec: OperatorSpec,
        /// Digest of its component.
        component: Option<String>,
        /// Digest of its punctuated-watermarks component.
        watermark_component: Option<String>,
    },
    /// A sink; paths are absolute.
    Sink {
        /// Its settings.
        spec: SinkSpec,
    },
}

/// A channel into a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputChannel {
    /// The channel.
    pub channel: u32,
    /// The input of the head operator it feeds (0, or 1 for two inputs).
    pub input: u32,
    /// The task that writes it.
    pub producer: usize,
    /// It carries an iteration's feedback (unbounded, idle for watermarks,
    /// ended when the loop is empty).
    #[serde(default)]
    pub feedback: bool,
}

/// An edge out of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputDescriptor {
    /// The downstream node's name.
    pub target: String,
    /// The partitioner.
    pub partition: Partition,
    /// The output of the tail operator the edge carries.
    pub output: OutputTag,
    /// Channels by downstream subtask (for a forward edge, the one channel
    /// to the subtask of the same index).
    pub channels: Vec<u32>,
    /// The tasks that read them, in the same order.
    pub consumers: Vec<usize>,
    /// The feedback edge of an iteration.
    #[serde(default)]
    pub feedback: bool,
    /// A feedback edge: the most rounds a record goes.
    #[serde(default)]
    pub max_rounds: Option<u32>,
    /// Only the records this selects.
    #[serde(default)]
    pub filter: Option<crate::spec::EdgeFilter>,
}

/// Where each task of an attempt restores its state from: handles into a
/// checkpoint (key, size, sha256), read by the task itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreHandles {
    /// The checkpoint id.
    pub checkpoint: u64,
    /// The checkpoint's directory.
    pub path: std::path::PathBuf,
    /// Its number of key groups.
    pub max_parallelism: u32,
    /// State files per operator name.
    pub operators: HashMap<String, OperatorHandles>,
    /// Sealed sink output per sink name the checkpoint commits.
    pub sinks: HashMap<String, Vec<String>>,
}

/// The state files of one operator in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorHandles {
    /// Its parallelism when the checkpoint was taken.
    pub parallelism: u32,
    /// One file per subtask, by subtask.
    pub files: Vec<StateFile>,
}

impl RestoreHandles {
    /// The handles of a checkpoint's metadata.
    pub fn of(path: &std::path::Path, meta: &crate::checkpoint::Metadata) -> Self {
        RestoreHandles {
            checkpoint: meta.checkpoint,
            path: path.to_owned(),
            max_parallelism: meta.max_parallelism,
            operators: meta
                .operators
                .iter()
                .map(|o| {
                    (
                        o.name.clone(),
                        OperatorHandles {
                            parallelism: o.parallelism,
                            files: o.files.clone(),
                        },
                    )
                })
                .collect(),
            sinks: meta.sinks.iter().map(|s| (s.name.clone(), s.pending.clone())).collect(),
        }
    }
}

/// The kind of state a node keeps in checkpoints, if any.
pub fn state_kind(kind: &NodeKind) -> Option<&'static str> {
    match kind {
        NodeKind::Source(_) => Some("source"),
        NodeKind::Operator(o, _) => match o.kind {
            OperatorKind::KeyedProcess => Some("keyed-process"),
            OperatorKind::Window => Some("window"),
            OperatorKind::Join => Some("join"),
            _ => None,
        },
        NodeKind::Sink(_) => None,
    }
}

/// A job's components, loaded: by node, and the punctuated-watermark
/// components by node.
#[derive(Debug, Clone, Default)]
pub struct JobComponents {
    /// The operator component of each node.
    pub operators: Vec<Option<Arc<LoadedComponent>>>,
    /// The punctuated-watermarks component of each node.
    pub watermarks: Vec<Option<Arc<LoadedComponent>>>,
}

impl JobComponents {
    /// Every component by digest.
    pub fn by_digest(&self) -> HashMap<String, Arc<LoadedComponent>> {
        self.operators
            .iter()
            .chain(&self.watermarks)
            .flatten()
            .map(|c| (c.digest.0.clone(), c.clone()))
            .collect()
    }
}

impl ExecutionPlan {
    /// Cut `graph` into tasks; `components` are its loaded components.
    pub fn build(graph: &JobGraph, components: &JobComponents) -> Self {
        let spec = &graph.spec;
        let chains = graph.chains();
        let absolute = |p: &Option<String>| p.as_ref().map(|p| graph.base_dir.join(p).to_string_lossy().into_owned());
        let digest = |v: &[Option<Arc<LoadedComponent>>], n: NodeId| v.get(n).and_then(|c| c.as_ref()).map(|c| c.digest.0.clone());
        // Task index of (chain head's node, subtask) for every node.
        let mut task_of: HashMap<(NodeId, u32), usize> = HashMap::new();
        let mut index = 0;
        for chain in &chains {
            let p = graph.nodes[chain.nodes[0]].parallelism;
            for s in 0..p {
                for &n in &chain.nodes {
                    task_of.insert((n, s), index);
                }
                index += 1;
            }
        }
        let is_chained = |from: NodeId, to: NodeId| chains.iter().any(|c| c.nodes.windows(2).any(|w| w[0] == from && w[1] == to));
        // Channels of every edge that crosses tasks.
        let mut channels = 0u32;
        let mut inputs: HashMap<usize, Vec<InputChannel>> = HashMap::new();
        // (edge, upstream subtask) -> (channels, consumers)
        let mut outputs: HashMap<(usize, u32), (Vec<u32>, Vec<usize>)> = HashMap::new();
        for (ei, e) in graph.edges.iter().enumerate() {
            if is_chained(e.from, e.to) {
                continue;
            }
            let (pu, pd) = (graph.nodes[e.from].parallelism, graph.nodes[e.to].parallelism);
            for a in 0..pu {
                let row = outputs.entry((ei, a)).or_default();
                for b in 0..pd {
                    if e.partition == Partition::Forward && a != b {
                        continue;
                    }
                    let consumer = task_of[&(e.to, b)];
                    row.0.push(channels);
                    row.1.push(consumer);
                    inputs.entry(consumer).or_default().push(InputChannel {
                        channel: channels,
                        input: e.input,
                        producer: task_of[&(e.from, a)],
                        feedback: e.feedback,
                    });
                    channels += 1;
                }
            }
        }
        let mut tasks = Vec::new();
        for chain in &chains {
            let head = chain.nodes[0];
            let tail = *chain.nodes.last().unwrap_or(&head);
            let names: Vec<&str> = chain.nodes.iter().map(|&n| graph.nodes[n].name.as_str()).collect();
            for s in 0..graph.nodes[head].parallelism {
                let i = tasks.len();
                let operators = chain
                    .nodes
                    .iter()
                    .map(|&n| {
                        let node = &graph.nodes[n];
                        let range = KeyGroupRange::for_subtask(spec.max_parallelism, node.parallelism, s);
                        let body = match &node.kind {
                            NodeKind::Source(src) => OperatorBody::Source {
                                spec: SourceSpec {
                                    path: absolute(&src.path),
                                    ..src.clone()
                                },
                                watermark_component: digest(&components.watermarks, n),
                            },
                            NodeKind::Operator(o, _) => OperatorBody::Operator {
                                spec: o.clone(),
                                component: digest(&components.operators, n),
                                watermark_component: digest(&components.watermarks, n),
                            },
                            NodeKind::Sink(sink) => OperatorBody::Sink {
                                spec: SinkSpec {
                                    path: absolute(&sink.path),
                                    ..sink.clone()
                                },
                            },
                        };
                        OperatorDescriptor {
                            node: n,
                            name: node.name.clone(),
                            parallelism: node.parallelism,
                            key_groups: (range.start, range.end),
                            body,
                        }
                    })
                    .collect();
                let outputs = graph
                    .edges
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| e.from == tail)
                    .map(|(ei, e)| {
                        let (channels, consumers) = outputs.remove(&(ei, s)).unwrap_or_default();
                        let edge = graph.spec.edges.get(ei);
                        OutputDescriptor {
                            target: graph.nodes[e.to].name.clone(),
                            partition: e.partition,
                            output: e.output,
                            channels,
                            consumers,
                            feedback: e.feedback,
                            max_rounds: edge.and_then(|x| x.max_rounds),
                            filter: edge.and_then(|x| x.filter.clone()),
                        }
                    })
                    .collect();
                tasks.push(TaskDescriptor {
                    index: i,
                    name: format!("{}#{s}", names.join("+")),
                    subtask: s,
                    operators,
                    inputs: inputs.remove(&i).unwrap_or_default(),
                    outputs,
                });
            }
        }
        ExecutionPlan {
            job: spec.name.clone(),
            max_parallelism: spec.max_parallelism,
            batch_size: spec.batch_size,
            on_record_error: spec.on_record_error,
            limits: spec.limits.clone(),
            checkpoints: spec.checkpoints.as_ref().map(|c| c.mode),
            nodes: graph
                .nodes
                .iter()
                .enumerate()
                .map(|(n, node)| PlanNode {
                    name: node.name.clone(),
                    parallelism: node.parallelism,
                    state: state_kind(&node.kind).map(str::to_owned),
                    component: digest(&components.operators, n),
                })
                .collect(),
            channels,
            tasks,
            mode: spec.mode,
            batch: {
                let b = spec.batch.clone().unwrap_or_default();
                BatchPlan {
                    sort_memory_bytes: b.sort_memory_mb.saturating_mul(1 << 20),
                    spill_dir: b.spill_dir.map(|d| graph.base_dir.join(d)),
                }
            },
        }
    }

    /// The highest parallelism of any node: the slots the job needs.
    pub fn slots_needed(&self) -> u32 {
        self.nodes.iter().map(|n| n.parallelism).max().unwrap_or(1)
    }

    /// Digests of every component the tasks in `tasks` need.
    pub fn components_of(&self, tasks: &[usize]) -> Vec<String> {
        let mut out: Vec<String> = tasks
            .iter()
            .filter_map(|&t| self.tasks.get(t))
            .flat_map(|t| &t.operators)
            .flat_map(|o| match &o.body {
                OperatorBody::Source { watermark_component, .. } => vec![watermark_component.clone()],
                OperatorBody::Operator {
                    component,
                    watermark_component,
                    ..
                } => vec![component.clone(), watermark_component.clone()],
                OperatorBody::Sink { .. } => vec![],
            })
            .flatten()
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Check that every index in the plan points inside it (a plan that
    /// came over the network is checked before a task is built from it).
    pub fn validate(&self) -> Result<(), String> {
        if self.max_parallelism == 0 {
            return Err("max_parallelism 0".into());
        }
        let (nodes, tasks) = (self.nodes.len(), self.tasks.len());
        for (i, t) in self.tasks.iter().enumerate() {
            if t.index != i {
                return Err(format!("task {i} says it is task {}", t.index));
            }
            if t.operators.is_empty() {
                return Err(format!("task {} has no operator", t.name));
            }
            for o in &t.operators {
                let Some(n) = self.nodes.get(o.node) else {
                    return Err(format!("task {} names node {} of {nodes}", t.name, o.node));
                };
                if t.subtask >= n.parallelism || o.key_groups.1 >= self.max_parallelism {
                    return Err(format!("task {}: subtask or key groups out of range", t.name));
                }
            }
            for c in &t.inputs {
                if c.channel >= self.channels || c.producer >= tasks {
                    return Err(format!("task {}: input channel {} out of range", t.name, c.channel));
                }
            }
            for out in &t.outputs {
                if out.channels.len() != out.consumers.len()
                    || out.channels.iter().any(|&c| c >= self.channels)
                    || out.consumers.iter().any(|&c| c >= tasks)
                {
                    return Err(format!("task {}: an output edge to {} is out of range", t.name, out.target));
                }
            }
        }
        Ok(())
    }

    /// True for tasks whose head is a source.
    pub fn is_source_task(&self, task: usize) -> bool {
        self.tasks
            .get(task)
            .and_then(|t| t.operators.first())
            .is_some_and(|o| matches!(o.body, OperatorBody::Source { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::JobSpec;

    fn plan(toml: &str) -> ExecutionPlan {
        let graph = JobGraph::build(JobSpec::from_toml(toml).unwrap(), std::path::Path::new("/base")).unwrap();
        ExecutionPlan::build(&graph, &JobComponents::default())
    }

    #[test]
    fn channels_connect_every_producer_to_its_consumers() {
        let p = plan(
            r#"
            name = "p"
            [[sources]]
            name = "src"
            kind = "generator"
            count = 10
            keys = 4
            parallelism = 2
            [[operators]]
            name = "w"
            kind = "window"
            parallelism = 3
            window = { assigner = "count", size = 2, aggregate = "count" }
            [[sinks]]
            name = "out"
            kind = "file"
            path = "out"
            parallelism = 3
            [[edges]]
            from = "src"
            to = "w"
            [[edges]]
            from = "w"
            to = "out"
        "#,
        );
        // src (2 tasks), w+out chained (3 tasks): 2 x 3 hash channels.
        assert_eq!(p.tasks.len(), 5);
        assert_eq!(p.channels, 6);
        assert_eq!(p.slots_needed(), 3);
        assert_eq!(p.tasks[2].name, "w+out#0");
        for t in &p.tasks[..2] {
            assert_eq!(t.outputs.len(), 1);
            assert_eq!(t.outputs[0].consumers, vec![2, 3, 4]);
        }
        for t in &p.tasks[2..] {
            let producers: Vec<usize> = t.inputs.iter().map(|i| i.producer).collect();
            assert_eq!(producers, vec![0, 1]);
        }
        let OperatorBody::Sink { spec } = &p.tasks[4].operators[1].body else {
            panic!("not a sink")
        };
        assert_eq!(spec.path.as_deref(), Some("/base/out"));
        assert_eq!(p.tasks[4].operators[0].key_groups, (86, 127));
        // The plan travels as JSON, and is checked when it arrives.
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<ExecutionPlan>(&json).unwrap(), p);
        assert_eq!(p.validate(), Ok(()));
        let mut bad = p.clone();
        bad.tasks[3].inputs[0].producer = 99;
        assert!(bad.validate().unwrap_err().contains("input channel"));
        let mut bad = p.clone();
        bad.tasks[2].operators[0].node = 7;
        assert!(bad.validate().unwrap_err().contains("names node 7"));
    }
}
