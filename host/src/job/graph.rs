//! The logical graph of a validated job, and its chains.
//!
//! Chaining follows Flink: node `b` is fused into the task of its upstream
//! `a` when the edge `a -> b` is forward, `a` has no other output, `b` no
//! other input, and both have the same parallelism. A chain runs on one
//! thread per subtask and passes batches by plain function call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::JobError;
use crate::spec::{
    Distribution, EdgeSpec, ExecutionMode, FileFormat, JobSpec, OperatorKind, OperatorSpec, OutputTag, Partition, RestartSpec, SinkKind,
    SinkSpec, SourceKind, SourceSpec, WatermarkSpec, WatermarkStrategy,
};
use crate::wasm::{LoadedComponent, WasmEngine};

/// The worlds a component of an operator of `kind` may export.
pub fn worlds(kind: OperatorKind) -> &'static [crate::wasm::World] {
    use crate::wasm::World;
    match kind {
        OperatorKind::KeyedProcess => &[World::KeyedProcess],
        OperatorKind::Window => &[World::WindowAggregate, World::WindowProcess],
        OperatorKind::Join => &[],
        _ => &[World::Stateless],
    }
}

/// Index of a node in [`JobGraph::nodes`].
pub type NodeId = usize;

/// What a node is.
#[derive(Debug, Clone)]
// A few per job, built once: the size of the settings does not matter.
#[allow(clippy::large_enum_variant)]
pub enum NodeKind {
    /// A source.
    Source(SourceSpec),
    /// A user operator, with its component (if any) resolved to a path.
    Operator(OperatorSpec, Option<PathBuf>),
    /// A sink.
    Sink(SinkSpec),
}

/// A node of the dataflow.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its unique name.
    pub name: String,
    /// What it is.
    pub kind: NodeKind,
    /// Parallel subtasks.
    pub parallelism: u32,
}

/// An edge with its partitioner resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Upstream node.
    pub from: NodeId,
    /// Downstream node.
    pub to: NodeId,
    /// How records move.
    pub partition: Partition,
    /// Which input of `to` it feeds (0, or 1 for a two-input operator).
    pub input: u32,
    /// Which output of `from` it carries.
    pub output: OutputTag,
    /// The feedback edge of an iteration (`from == to`, into input 1).
    pub feedback: bool,
    /// It carries only the records its `where` selects (never chained).
    pub filtered: bool,
}

/// Nodes fused into one task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// The nodes, head first.
    pub nodes: Vec<NodeId>,
}

/// A validated job.
#[derive(Debug, Clone)]
pub struct JobGraph {
    /// The spec it came from.
    pub spec: JobSpec,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Nodes: sources, then operators, then sinks, in spec order.
    pub nodes: Vec<Node>,
    /// Edges, in spec order.
    pub edges: Vec<Edge>,
    /// Nodes in topological order.
    pub topo: Vec<NodeId>,
}

impl JobGraph {
    /// Validate `spec`; relative paths are resolved against `base_dir`.
    pub fn build(spec: JobSpec, base_dir: &Path) -> Result<Self, JobError> {
        let invalid = |node: &str, message: String| JobError::Invalid {
            node: node.to_owned(),
            message,
        };
        if spec.max_parallelism == 0 || spec.max_parallelism > 32768 {
            return Err(invalid(
                "job",
                format!("max_parallelism {} must be between 1 and 32768", spec.max_parallelism),
            ));
        }
        if spec.batch_size == 0 || spec.batch_size > 1 << 20 {
            return Err(invalid(
                "job",
                format!("batch_size {} must be between 1 and 1048576", spec.batch_size),
            ));
        }
        check_mode(&spec)?;
        check_recovery(&spec)?;
        let mut nodes = Vec::new();
        for s in &spec.sources {
            check_source(s)?;
            if s.consumer.is_some() && spec.checkpoints.is_none() {
                return Err(invalid(
                    &s.name,
                    "a nats source with `consumer` acknowledges messages when checkpoints complete, and the job has no \
                     `[checkpoints]`; add them, or leave `consumer` out"
                        .into(),
                ));
            }
            let mut s = s.clone();
            if s.kind == SourceKind::Kafka && s.group.is_none() {
                s.group = Some(format!("sluice-{}-{}", clean_name(&spec.name), clean_name(&s.name)));
            }
            nodes.push(Node {
                name: s.name.clone(),
                parallelism: s.parallelism,
                kind: NodeKind::Source(s),
            });
        }
        for o in &spec.operators {
            check_operator(o)?;
            let path = o.component.as_ref().map(|c| base_dir.join(c));
            nodes.push(Node {
                name: o.name.clone(),
                kind: NodeKind::Operator(o.clone(), path),
                parallelism: o.parallelism,
            });
        }
        for (i, s) in spec.sinks.iter().enumerate() {
            if s.kind == SinkKind::File && s.path.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(&s.name, "a file sink needs `path`".into()));
            }
            if s.kind == SinkKind::File && spec.sinks[..i].iter().any(|o| o.kind == SinkKind::File && o.path == s.path) {
                return Err(invalid(
                    &s.name,
                    format!("another sink already writes to {:?}", s.path.as_deref().unwrap_or_default()),
                ));
            }
            let s = check_sink(s, &spec)?;
            nodes.push(Node {
                name: s.name.clone(),
                kind: NodeKind::Sink(s.clone()),
                parallelism: s.parallelism,
            });
        }
        let mut by_name = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(invalid("job", "a node has an empty name".into()));
            }
            if by_name.insert(n.name.as_str(), i).is_some() {
                return Err(JobError::DuplicateName(n.name.clone()));
            }
            if n.parallelism == 0 {
                return Err(JobError::ZeroParallelism(n.name.clone()));
            }
            if n.parallelism > spec.max_parallelism {
                return Err(JobError::ParallelismAboveMax {
                    name: n.name.clone(),
                    parallelism: n.parallelism,
                    max: spec.max_parallelism,
                });
            }
        }
        let mut edges = Vec::new();
        for e in &spec.edges {
            let from = *by_name.get(e.from.as_str()).ok_or_else(|| JobError::UnknownInput {
                from: e.from.clone(),
                to: e.to.clone(),
            })?;
            let to = *by_name.get(e.to.as_str()).ok_or_else(|| JobError::UnknownOutput {
                from: e.from.clone(),
                to: e.to.clone(),
            })?;
            let bad = |reason: &str| JobError::BadEdge {
                from: e.from.clone(),
                to: e.to.clone(),
                reason: reason.to_owned(),
            };
            if matches!(nodes[from].kind, NodeKind::Sink(_)) {
                return Err(bad("a sink has no output"));
            }
            if matches!(nodes[to].kind, NodeKind::Source(_)) {
                return Err(bad("a source takes no input"));
            }
            let to_kind = match &nodes[to].kind {
                NodeKind::Operator(o, _) => Some(o.kind),
                _ => None,
            };
            let keyed = to_kind.is_some_and(OperatorKind::is_keyed);
            let same = nodes[from].parallelism == nodes[to].parallelism;
            let partition = match e.partition {
                Some(p) => p,
                None if keyed => Partition::Hash,
                None if same => Partition::Forward,
                None => Partition::Rebalance,
            };
            if keyed && partition != Partition::Hash {
                return Err(bad(
                    "a keyed operator (keyed-process, window) must be fed by partition = \"hash\" so each key reaches the subtask owning its state",
                ));
            }
            let input = e.input.unwrap_or(0);
            if input > 1 {
                return Err(bad(&format!("`input` is 0 or 1, not {input}")));
            }
            if input == 1 && !matches!(to_kind, Some(OperatorKind::KeyedProcess | OperatorKind::Join)) {
                return Err(bad("only a keyed-process or join operator has a second input (input = 1)"));
            }
            let from_window = matches!(&nodes[from].kind, NodeKind::Operator(o, _) if o.kind == OperatorKind::Window);
            if e.output == OutputTag::Late && !from_window {
                return Err(bad("only a window operator has a `late` output"));
            }
            if partition == Partition::Forward && !same {
                return Err(bad(&format!(
                    "a forward edge needs equal parallelism, but `{}` has {} and `{}` has {}",
                    e.from, nodes[from].parallelism, e.to, nodes[to].parallelism
                )));
            }
            if edges
                .iter()
                .any(|x: &Edge| x.from == from && x.to == to && x.input == input && x.output == e.output)
            {
                return Err(bad("the same edge appears twice"));
            }
            check_feedback(e, from == to, to_kind, input, &spec).map_err(|m| bad(&m))?;
            if let Some(f) = &e.filter
                && f.field.is_empty()
            {
                return Err(bad("`where` needs a `field`"));
            }
            edges.push(Edge {
                from,
                to,
                partition,
                input,
                output: e.output,
                feedback: e.feedback,
                filtered: e.filter.is_some(),
            });
        }
        for (i, n) in nodes.iter().enumerate() {
            if !matches!(n.kind, NodeKind::Source(_)) && !edges.iter().any(|e| e.to == i) {
                return Err(JobError::NoInput(n.name.clone()));
            }
            if edges.iter().any(|e| e.to == i && e.feedback) && edges.iter().any(|e| e.to == i && e.input == 1 && !e.feedback) {
                return Err(JobError::Invalid {
                    node: n.name.clone(),
                    message: "input 1 of an iteration's head is its feedback edge: no other edge may feed it".into(),
                });
            }
            if edges.iter().any(|e| e.to == i && e.input == 1) && !edges.iter().any(|e| e.to == i && e.input == 0 && !e.feedback) {
                return Err(JobError::Invalid {
                    node: n.name.clone(),
                    message: "it has an edge into input 1 but none into input 0".into(),
                });
            }
        }
        let topo = topological_order(&nodes, &edges)?;
        super::lint::check_keys(&nodes, &edges, &topo)?;
        Ok(JobGraph {
            spec,
            base_dir: base_dir.to_owned(),
            nodes,
            edges,
            topo,
        })
    }

    /// Read, parse and validate a spec file.
    pub fn from_file(path: &Path) -> Result<Self, JobError> {
        let spec = JobSpec::from_file(path)?;
        let base = path.parent().map(Path::to_owned).unwrap_or_default();
        Self::build(spec, &base)
    }

    /// What may be wrong with the job although it is valid (event time
    /// that cannot advance): `sluice check` prints these, a job logs them
    /// when it starts.
    pub fn warnings(&self) -> Vec<String> {
        super::lint::watermark_warnings(self)
    }

    /// Edges into `node`.
    pub fn inputs(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.to == node)
    }

    /// Edges out of `node`.
    pub fn outputs(&self, node: NodeId) -> impl Iterator<Item = &Edge> {
        self.edges.iter().filter(move |e| e.from == node)
    }

    /// The chains, in topological order of their heads.
    pub fn chains(&self) -> Vec<Chain> {
        let chained_to_upstream = |n: NodeId| -> Option<NodeId> {
            let mut ins = self.inputs(n);
            let e = ins.next()?;
            if ins.next().is_some() || e.partition != Partition::Forward || e.output != OutputTag::Main || e.input != 0 || e.filtered {
                return None;
            }
            (self.outputs(e.from).count() == 1 && self.nodes[e.from].parallelism == self.nodes[n].parallelism).then_some(e.from)
        };
        let mut chains = Vec::new();
        for &n in &self.topo {
            if chained_to_upstream(n).is_some() {
                continue;
            }
            let mut chain = vec![n];
            let mut tail = n;
            while let Some(next) = self
                .outputs(tail)
                .next()
                .map(|e| e.to)
                .filter(|&d| chained_to_upstream(d) == Some(tail))
            {
                chain.push(next);
                tail = next;
            }
            chains.push(Chain { nodes: chain });
        }
        chains
    }

    /// Load the punctuated-watermarks component of every node that has one
    /// (one entry per node).
    pub fn load_watermark_components(&self, engine: &WasmEngine) -> Result<Vec<Option<Arc<LoadedComponent>>>, JobError> {
        self.nodes
            .iter()
            .map(|n| {
                let wm = match &n.kind {
                    NodeKind::Source(s) => s.watermarks.as_ref(),
                    NodeKind::Operator(o, _) => o.watermarks.as_ref(),
                    NodeKind::Sink(_) => None,
                };
                let Some(path) = wm
                    .filter(|w| w.strategy == WatermarkStrategy::Punctuated)
                    .and_then(|w| w.component.as_ref())
                else {
                    return Ok(None);
                };
                let path = self.base_dir.join(path);
                let bytes = std::fs::read(&path).map_err(|e| JobError::MissingComponent {
                    operator: n.name.clone(),
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                engine.load(&bytes).map(Some).map_err(|error| JobError::Component {
                    operator: n.name.clone(),
                    path: path.clone(),
                    error,
                })
            })
            .collect()
    }

    /// Load every operator's component and check it exports the world its
    /// kind needs, before anything runs. Returns one entry per node (none for
    /// sources and sinks).
    pub fn load_components(&self, engine: &WasmEngine) -> Result<Vec<Option<Arc<LoadedComponent>>>, JobError> {
        self.nodes
            .iter()
            .map(|n| {
                let NodeKind::Operator(op, Some(path)) = &n.kind else {
                    return Ok(None);
                };
                let bytes = std::fs::read(path).map_err(|e| JobError::MissingComponent {
                    operator: op.name.clone(),
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let loaded = engine.load(&bytes).map_err(|error| JobError::Component {
                    operator: op.name.clone(),
                    path: path.clone(),
                    error,
                })?;
                let worlds = worlds(op.kind);
                let expected = worlds[0];
                if !loaded.info.world.is_some_and(|w| worlds.contains(&w)) {
                    let found = loaded.info.world;
                    let kind = serde_json::to_value(op.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default();
                    return Err(JobError::WrongWorld {
                        operator: op.name.clone(),
                        kind,
                        expected,
                        path: path.clone(),
                        found,
                    });
                }
                Ok(Some(loaded))
            })
            .collect()
    }
}

fn check_watermarks(node: &str, w: &WatermarkSpec) -> Result<(), JobError> {
    let invalid = |message: &str| JobError::Invalid {
        node: node.to_owned(),
        message: message.to_owned(),
    };
    if w.max_out_of_orderness_ms < 0 {
        return Err(invalid("`max_out_of_orderness_ms` must not be negative"));
    }
    if w.max_out_of_orderness_ms > 0 && w.strategy != WatermarkStrategy::Bounded {
        return Err(invalid("`max_out_of_orderness_ms` applies to strategy = \"bounded\" only"));
    }
    match (w.strategy, &w.component) {
        (WatermarkStrategy::Punctuated, None) => Err(invalid(
            "a punctuated watermark strategy needs `component` (world `punctuated-watermarks`)",
        )),
        (WatermarkStrategy::Punctuated, Some(_)) => Ok(()),
        (_, Some(_)) => Err(invalid("`component` applies to strategy = \"punctuated\" only")),
        (_, None) if w.config.is_some() => Err(invalid("`config` applies to strategy = \"punctuated\" only")),
        _ => Ok(()),
    }
}

fn check_operator(o: &OperatorSpec) -> Result<(), JobError> {
    let invalid = |message: String| JobError::Invalid {
        node: o.name.clone(),
        message,
    };
    if o.kind == OperatorKind::Join {
        if o.component.is_some() || o.window.is_some() || o.config.is_some() {
            return Err(invalid(
                "a join has no `component`, `window` or `config`: the host pairs the records (see `join`)".into(),
            ));
        }
        if let Some(j) = &o.join {
            crate::operator::join::JoinConfig::from_spec(j).map_err(invalid)?;
        }
        if o.watermarks.is_some() {
            return Err(invalid(
                "`watermarks` applies to map, filter and flat-map operators (or sources)".into(),
            ));
        }
        return Ok(());
    }
    if o.join.is_some() {
        return Err(invalid("`join` applies to kind = \"join\" only".into()));
    }
    match (o.kind, &o.window) {
        (OperatorKind::Window, None) => return Err(invalid("a window operator needs a `window` table".into())),
        (OperatorKind::Window, Some(w)) => {
            crate::window::WindowConfig::from_spec(w).map_err(invalid)?;
            match (&o.component, w.aggregate) {
                (None, None) => {
                    return Err(invalid(
                        "a window needs a `component` (world window-aggregate or window-process) or a built-in `aggregate` (count, sum, min, max)".into(),
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "give a window either a `component` or a built-in `aggregate`, not both".into(),
                    ));
                }
                _ => {}
            }
            if w.field.is_some() && !matches!(w.aggregate, Some(a) if a != crate::spec::BuiltinAggregate::Count) {
                return Err(invalid("`field` applies to the built-in sum, min and max".into()));
            }
        }
        (_, Some(_)) => return Err(invalid("`window` applies to kind = \"window\" only".into())),
        (_, None) => {
            if o.component.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("this operator kind needs `component`".into()));
            }
        }
    }
    if let Some(w) = &o.watermarks {
        if o.kind.is_keyed() {
            return Err(invalid(
                "`watermarks` applies to map, filter and flat-map operators (or sources)".into(),
            ));
        }
        check_watermarks(&o.name, w)?;
    }
    Ok(())
}

/// A sink that spools beside the checkpoints needs them in a local
/// directory.
fn local_spool(c: &crate::spec::CheckpointSpec) -> Result<(), String> {
    if c.dir.starts_with(crate::checkpoint::object::SCHEME) {
        return Err(format!(
            "this sink spools its transactions beside the checkpoints, which must then be in a local directory, not {:?}",
            c.dir
        ));
    }
    Ok(())
}

/// Batch mode: bounded sources, sinks that a task run again rewrites, no
/// checkpoints.
fn check_mode(spec: &JobSpec) -> Result<(), JobError> {
    let invalid = |node: &str, message: String| JobError::Invalid {
        node: node.to_owned(),
        message,
    };
    if spec.mode == ExecutionMode::Streaming {
        if spec.batch.is_some() {
            return Err(invalid("job", "`[batch]` settings need mode = \"batch\"".into()));
        }
        return Ok(());
    }
    if spec.checkpoints.is_some() {
        return Err(invalid(
            "job",
            "a batch job takes no `[checkpoints]`: a failed task runs again from the materialized results of the tasks before it".into(),
        ));
    }
    if let Some(b) = &spec.batch
        && !(1..=65536).contains(&b.sort_memory_mb)
    {
        return Err(invalid(
            "job",
            format!("batch.sort_memory_mb {} must be between 1 and 65536", b.sort_memory_mb),
        ));
    }
    for s in &spec.sources {
        let bounded = match s.kind {
            SourceKind::File => !s.follow,
            SourceKind::Generator | SourceKind::Nexmark => true,
            SourceKind::Kafka | SourceKind::Nats => false,
        };
        if !bounded {
            return Err(invalid(
                &s.name,
                "batch mode reads bounded inputs only: a file (without `follow`), a generator or nexmark with `count`; \
                 run unbounded sources in streaming mode"
                    .into(),
            ));
        }
        if s.kind != SourceKind::File && s.count.is_none() {
            return Err(invalid(&s.name, "in batch mode a generated source needs `count`".into()));
        }
    }
    for s in &spec.sinks {
        if !matches!(s.kind, SinkKind::File | SinkKind::Stdout | SinkKind::Discard) {
            return Err(invalid(
                &s.name,
                "batch mode writes file, stdout or discard sinks (a task run again rewrites its file); \
                 write to kafka, nats or postgres in streaming mode with checkpoints"
                    .into(),
            ));
        }
    }
    Ok(())
}

fn check_recovery(spec: &JobSpec) -> Result<(), JobError> {
    let invalid = |message: String| JobError::Invalid {
        node: "job".into(),
        message,
    };
    if let Some(c) = &spec.checkpoints {
        if c.interval_ms == 0 {
            return Err(invalid("checkpoints.interval_ms must be at least 1".into()));
        }
        if c.timeout_ms == 0 {
            return Err(invalid("checkpoints.timeout_ms must be at least 1".into()));
        }
        if c.dir.is_empty() {
            return Err(invalid("checkpoints.dir must name a directory".into()));
        }
        if c.dir.starts_with(crate::checkpoint::object::SCHEME) {
            crate::checkpoint::object::parse_url(&c.dir).map_err(|e| invalid(format!("checkpoints.dir: {e}")))?;
        } else if c.dir.contains("://") {
            return Err(invalid(format!(
                "checkpoints.dir {:?}: only local directories and s3://bucket/prefix locations are supported",
                c.dir
            )));
        }
        if c.retain == 0 {
            return Err(invalid("checkpoints.retain must be at least 1".into()));
        }
    }
    match &spec.restart {
        Some(RestartSpec::FailureRate { interval_ms: 0, .. }) => Err(invalid("restart.interval_ms must be at least 1".into())),
        Some(RestartSpec::ExponentialDelay { multiplier, .. }) if !(multiplier.is_finite() && *multiplier >= 1.0) => Err(invalid(format!(
            "restart.multiplier must be a number of at least 1, not {multiplier}"
        ))),
        Some(RestartSpec::None) | None => Ok(()),
        // A batch job runs a failed task again from its materialized inputs.
        Some(_) if spec.mode == ExecutionMode::Batch => Ok(()),
        Some(_) if spec.checkpoints.is_none() => Err(invalid(
            "a restart strategy needs `[checkpoints]`: without them a restarted job would start over and duplicate its output".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// Whether a source sets fields only a file source takes.
fn has_file_fields(s: &SourceSpec) -> bool {
    s.path.is_some()
        || s.format.is_some()
        || s.key_field.is_some()
        || s.timestamp_field.is_some()
        || s.columns.is_some()
        || s.follow
        || s.header
}

/// Whether a source sets fields only the generator takes.
fn has_generator_fields(s: &SourceSpec) -> bool {
    s.keys.is_some() || s.distribution.is_some() || s.value_size.is_some() || s.seed.is_some()
}

/// `name` with everything but letters, digits, `_` and `-` made `_`: a
/// safe part of a transaction id, group or file name.
fn clean_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A SQL identifier Sluice accepts: a letter or `_`, then letters, digits,
/// `_` or `$`, at most 63 bytes (PostgreSQL's limit).
fn sql_identifier(name: &str) -> bool {
    let mut b = name.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'$')
        && name.len() <= 63
}

/// Check a sink's settings and fill in its defaults: those of a
/// PostgreSQL sink are checked here, before anything connects.
fn check_sink(s: &SinkSpec, job: &JobSpec) -> Result<SinkSpec, JobError> {
    let invalid = |message: String| JobError::Invalid {
        node: s.name.clone(),
        message,
    };
    use SinkKind::{Kafka, Nats, Postgres};
    let settings: [(&str, bool, &[SinkKind]); 13] = [
        ("url", s.url.is_some(), &[Postgres, Nats]),
        ("password", s.password.is_some(), &[Postgres]),
        ("table", s.table.is_some(), &[Postgres]),
        ("columns", s.columns.is_some(), &[Postgres]),
        ("delivery", s.delivery.is_some(), &[Postgres, Kafka]),
        ("key_columns", s.key_columns.is_some(), &[Postgres]),
        ("transaction_prefix", s.transaction_prefix.is_some(), &[Postgres, Nats, Kafka]),
        ("connect_timeout_ms", s.connect_timeout_ms.is_some(), &[Postgres, Nats, Kafka]),
        ("subject", s.subject.is_some(), &[Nats]),
        ("brokers", s.brokers.is_some(), &[Kafka]),
        ("topic", s.topic.is_some(), &[Kafka]),
        ("transaction_timeout_ms", s.transaction_timeout_ms.is_some(), &[Kafka]),
        ("properties", s.properties.is_some(), &[Kafka]),
    ];
    if let Some((field, _, kinds)) = settings.iter().find(|(_, set, kinds)| *set && !kinds.contains(&s.kind)) {
        let kinds: Vec<String> = kinds.iter().map(|k| format!("{k:?}").to_lowercase()).collect();
        return Err(invalid(format!(
            "`{field}` is a setting of {} sinks, not of {} sinks",
            kinds.join(" and "),
            format!("{:?}", s.kind).to_lowercase()
        )));
    }
    let clean = clean_name;
    let default_prefix = format!("sluice-{}-{}", clean(&job.name), clean(&s.name));
    let prefix_ok = |p: &str| {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        !p.is_empty() && p.len() <= 150 && p.chars().all(ok)
    };
    if let Some(p) = s.transaction_prefix.as_deref().filter(|p| !prefix_ok(p)) {
        return Err(invalid(format!(
            "`transaction_prefix` {p:?} must be 1 to 150 letters, digits, `_`, `-`, `.` or `:`"
        )));
    }
    if s.connect_timeout_ms == Some(0) {
        return Err(invalid("`connect_timeout_ms` must be at least 1".into()));
    }
    match s.kind {
        Postgres => {}
        Kafka => return check_kafka_sink(s, job, default_prefix),
        Nats => {
            let url = s.url.as_deref().unwrap_or_default();
            if url.is_empty() {
                return Err(invalid("a nats sink needs `url`, e.g. \"nats://127.0.0.1:4222\"".into()));
            }
            if !(url.starts_with("nats://") || url.starts_with("tls://") || !url.contains("://")) {
                return Err(invalid("`url` is a NATS server address, `nats://host:port`".into()));
            }
            let subject = s.subject.as_deref().unwrap_or_default();
            if subject.is_empty() {
                return Err(invalid("a nats sink needs `subject` (where it publishes)".into()));
            }
            if subject.chars().any(|c| c.is_whitespace() || c == '*' || c == '>') || subject.split('.').any(str::is_empty) {
                return Err(invalid(format!(
                    "`subject` {subject:?} is not a subject to publish to (no wildcards, spaces or empty tokens)"
                )));
            }
            if s.path.is_some() {
                return Err(invalid(
                    "a nats sink has no `path`; it spools into the job's checkpoint directory".into(),
                ));
            }
            let Some(c) = &job.checkpoints else {
                return Err(invalid(
                    "a nats sink publishes when checkpoints complete, and the job has no `[checkpoints]`; add them".into(),
                ));
            };
            let mut out = s.clone();
            out.transaction_prefix = Some(s.transaction_prefix.clone().unwrap_or(default_prefix));
            local_spool(c).map_err(invalid)?;
            out.path = Some(format!("{}/spool-{}", c.dir.trim_end_matches('/'), clean(&s.name)));
            return Ok(out);
        }
        _ => return Ok(s.clone()),
    }
    let url = s.url.as_deref().unwrap_or_default();
    if url.is_empty() {
        return Err(invalid(
            "a postgres sink needs `url`, e.g. \"postgres://user@127.0.0.1:5432/db\"".into(),
        ));
    }
    if url.parse::<postgres::Config>().is_err() {
        return Err(invalid(format!(
            "`url` {:?} is not a PostgreSQL connection string (postgres://user[:password]@host[:port]/database)",
            crate::spec::redact_url(url)
        )));
    }
    let table = s.table.as_deref().unwrap_or_default();
    if table.is_empty() {
        return Err(invalid("a postgres sink needs `table`".into()));
    }
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || !parts.iter().all(|p| sql_identifier(p)) {
        return Err(invalid(format!(
            "`table` {table:?} is not `name` or `schema.name` of letters, digits, `_` and `$`"
        )));
    }
    for (field, list) in [("columns", &s.columns), ("key_columns", &s.key_columns)] {
        if let Some(cols) = list {
            if cols.is_empty() {
                return Err(invalid(format!("`{field}` is empty; leave it out for the default")));
            }
            if let Some(c) = cols.iter().find(|c| !sql_identifier(c)) {
                return Err(invalid(format!(
                    "`{field}`: {c:?} is not a column name of letters, digits, `_` and `$`"
                )));
            }
        }
    }
    let delivery = s.delivery.unwrap_or_default();
    if s.key_columns.is_some() && delivery != crate::spec::Delivery::Upsert {
        return Err(invalid("`key_columns` is for delivery = \"upsert\"".into()));
    }
    let mut out = s.clone();
    if delivery == crate::spec::Delivery::ExactlyOnce {
        if job.checkpoints.is_none() {
            return Err(invalid(
                "delivery = \"exactly-once\" commits at checkpoints, and the job has no `[checkpoints]`; \
                 add them, or use delivery = \"at-least-once\" or \"upsert\""
                    .into(),
            ));
        }
        let prefix = s.transaction_prefix.clone().unwrap_or(default_prefix);
        out.transaction_prefix = Some(prefix);
    } else if s.transaction_prefix.is_some() {
        return Err(invalid("`transaction_prefix` is for delivery = \"exactly-once\"".into()));
    }
    Ok(out)
}

/// A Kafka sink's settings; fills in the transaction prefix and the spool.
fn check_kafka_sink(s: &SinkSpec, job: &JobSpec, default_prefix: String) -> Result<SinkSpec, JobError> {
    use crate::connectors::kafka;
    let invalid = |message: String| JobError::Invalid {
        node: s.name.clone(),
        message,
    };
    let brokers = s
        .brokers
        .as_deref()
        .ok_or_else(|| invalid("a kafka sink needs `brokers`, e.g. \"127.0.0.1:9092\"".into()))?;
    kafka::check_brokers(brokers).map_err(invalid)?;
    let topic = s
        .topic
        .as_deref()
        .ok_or_else(|| invalid("a kafka sink needs `topic` (where it produces)".into()))?;
    kafka::check_topic(topic).map_err(|m| invalid(format!("`topic`: {m}")))?;
    kafka::check_properties(s.properties.as_ref()).map_err(invalid)?;
    if s.path.is_some() {
        return Err(invalid("a kafka sink has no `path`".into()));
    }
    let mut out = s.clone();
    match s.delivery.unwrap_or_default() {
        crate::spec::Delivery::AtLeastOnce => {
            if s.transaction_prefix.is_some() || s.transaction_timeout_ms.is_some() {
                return Err(invalid(
                    "`transaction_prefix` and `transaction_timeout_ms` are for delivery = \"exactly-once\"".into(),
                ));
            }
        }
        crate::spec::Delivery::ExactlyOnce => {
            let Some(c) = &job.checkpoints else {
                return Err(invalid(
                    "delivery = \"exactly-once\" commits Kafka transactions at checkpoints, and the job has no `[checkpoints]`; \
                     add them, or use delivery = \"at-least-once\""
                        .into(),
                ));
            };
            // Kafka's default transaction.max.timeout.ms is 15 minutes.
            let max = 900_000;
            match s.transaction_timeout_ms {
                Some(t) if t == 0 || t > max => {
                    return Err(invalid(format!(
                        "`transaction_timeout_ms` {t} must be between 1 and {max} (brokers refuse a longer one by default: \
                         transaction.max.timeout.ms)"
                    )));
                }
                Some(t) if t <= c.interval_ms => {
                    return Err(invalid(format!(
                        "`transaction_timeout_ms` {t} is not longer than the checkpoint interval ({} ms)",
                        c.interval_ms
                    )));
                }
                _ => {}
            }
            out.transaction_prefix = Some(s.transaction_prefix.clone().unwrap_or(default_prefix));
            local_spool(c).map_err(invalid)?;
            out.path = Some(format!("{}/spool-{}", c.dir.trim_end_matches('/'), clean_name(&s.name)));
        }
        crate::spec::Delivery::Upsert => {
            return Err(invalid(
                "a kafka sink takes delivery = \"exactly-once\" or \"at-least-once\" (upsert is for postgres)".into(),
            ));
        }
    }
    Ok(out)
}

/// A Kafka source's own settings.
fn check_kafka_source(s: &SourceSpec) -> Result<(), String> {
    use crate::connectors::kafka;
    let brokers = s
        .brokers
        .as_deref()
        .ok_or("a kafka source needs `brokers`, e.g. \"127.0.0.1:9092\"")?;
    kafka::check_brokers(brokers)?;
    let topics = s.topic.as_ref().map(crate::spec::Topics::names).unwrap_or_default();
    if topics.is_empty() {
        return Err("a kafka source needs `topic` (a topic or a list of topics)".into());
    }
    for t in &topics {
        kafka::check_topic(t).map_err(|m| format!("`topic`: {m}"))?;
    }
    if let Some(g) = s.group.as_deref().filter(|g| g.is_empty() || g.len() > 255) {
        return Err(format!("`group` {g:?} must be 1 to 255 characters"));
    }
    kafka::check_properties(s.properties.as_ref())?;
    if s.connect_timeout_ms == Some(0) {
        return Err("`connect_timeout_ms` must be at least 1".into());
    }
    if s.bounded && matches!(s.start, Some(crate::spec::KafkaStart::Named(crate::spec::KafkaStartAt::Latest))) {
        return Err("a bounded kafka source that starts at \"latest\" reads nothing".into());
    }
    if !matches!(s.format, None | Some(FileFormat::Lines | FileFormat::Json)) {
        return Err("a kafka source takes format = \"json\" (with `key_field`, `timestamp_field`) or none".into());
    }
    if s.format != Some(FileFormat::Json) && (s.key_field.is_some() || s.timestamp_field.is_some()) {
        return Err("`key_field` and `timestamp_field` need format = \"json\" (without them the Kafka key and timestamp are used)".into());
    }
    if s.path.is_some()
        || s.columns.is_some()
        || s.follow
        || s.header
        || s.count.is_some()
        || has_generator_fields(s)
        || s.url.is_some()
        || s.stream.is_some()
    {
        return Err(
            "a kafka source takes `brokers`, `topic`, `group`, `start`, `bounded`, `partition_discovery_ms`, \
                    `properties`, `connect_timeout_ms`, `format`, `key_field`, `timestamp_field` (and `parallelism`, `watermarks`, \
                    `records_per_second`)"
                .into(),
        );
    }
    Ok(())
}

fn check_source(s: &SourceSpec) -> Result<(), JobError> {
    let invalid = |message: &str| JobError::Invalid {
        node: s.name.clone(),
        message: message.to_owned(),
    };
    let kafka_fields = s.brokers.is_some()
        || s.topic.is_some()
        || s.group.is_some()
        || s.start.is_some()
        || s.partition_discovery_ms.is_some()
        || s.properties.is_some();
    if kafka_fields && s.kind != SourceKind::Kafka {
        return Err(invalid(
            "`brokers`, `topic`, `group`, `start`, `partition_discovery_ms` and `properties` are kafka-source fields",
        ));
    }

    if s.records_per_second == Some(0) {
        return Err(invalid("records_per_second must be at least 1 (leave it out for no limit)"));
    }
    match s.kind {
        SourceKind::File => {
            if s.path.as_deref().is_none_or(str::is_empty) {
                return Err(invalid("a file source needs `path`"));
            }
            if s.parallelism != 1 {
                return Err(invalid("a file source reads with parallelism 1"));
            }
            let fields = matches!(s.format, Some(FileFormat::Json | FileFormat::Csv));
            if !fields && (s.key_field.is_some() || s.timestamp_field.is_some()) {
                return Err(invalid("`key_field` and `timestamp_field` need format = \"json\" or \"csv\""));
            }
            match (s.format, &s.columns) {
                (Some(FileFormat::Csv), None) => return Err(invalid("format = \"csv\" needs `columns`")),
                (Some(FileFormat::Csv), Some(c)) => {
                    if c.is_empty() || c.iter().any(String::is_empty) {
                        return Err(invalid("`columns` needs at least one column, each with a name"));
                    }
                    for f in [&s.key_field, &s.timestamp_field].into_iter().flatten() {
                        if !c.contains(f) {
                            return Err(invalid(&format!("`{f}` is not one of the `columns`")));
                        }
                    }
                }
                (_, Some(_)) => return Err(invalid("`columns` applies to format = \"csv\" only")),
                _ => {}
            }
            if s.header && s.format != Some(FileFormat::Csv) {
                return Err(invalid("`header` applies to format = \"csv\" only"));
            }
            if s.count.is_some() || has_generator_fields(s) || s.events_per_second.is_some() || s.start_time_ms.is_some() {
                return Err(invalid(
                    "`count`, `keys`, `distribution`, `value_size`, `seed`, `events_per_second` and `start_time_ms` are generator fields",
                ));
            }
        }
        SourceKind::Generator => {
            if s.count.is_none() {
                return Err(invalid("a generator source needs `count`"));
            }
            if s.keys == Some(0) {
                return Err(invalid("`keys` must be at least 1 (or absent for records without keys)"));
            }
            if s.value_size.is_some_and(|v| v > 16 << 20) {
                return Err(invalid("`value_size` is at most 16 MiB"));
            }
            let max_zipf = crate::connectors::generator::MAX_ZIPF_KEYS;
            if s.distribution == Some(Distribution::Zipf) && s.keys.is_some_and(|k| k > max_zipf) {
                return Err(invalid(&format!(
                    "`keys` is at most {max_zipf} with distribution = \"zipf\" (each subtask holds a table of the keys' probabilities)"
                )));
            }
            if has_file_fields(s) {
                return Err(invalid(
                    "`path`, `format`, `key_field`, `timestamp_field`, `columns` and `follow` are file-source fields",
                ));
            }
            if s.events_per_second == Some(0) {
                return Err(invalid("`events_per_second` must be at least 1"));
            }
            if s.start_time_ms.is_some() && s.events_per_second.is_none() {
                return Err(invalid("`start_time_ms` needs `events_per_second`"));
            }
        }
        SourceKind::Nats => {
            let url = s.url.as_deref().unwrap_or_default();
            if url.is_empty() {
                return Err(invalid("a nats source needs `url`, e.g. \"nats://127.0.0.1:4222\""));
            }
            if !(url.starts_with("nats://") || url.starts_with("tls://") || !url.contains("://")) {
                return Err(invalid("`url` is a NATS server address, `nats://host:port`"));
            }
            let stream = s.stream.as_deref().unwrap_or_default();
            if stream.is_empty() {
                return Err(invalid("a nats source needs `stream` (the JetStream stream to read)"));
            }
            if stream
                .chars()
                .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
            {
                return Err(invalid("`stream` is a stream name: no spaces, `.`, `*`, `>`, `/` or `\\`"));
            }
            if s.subject
                .as_deref()
                .is_some_and(|x| x.is_empty() || x.chars().any(char::is_whitespace))
            {
                return Err(invalid("`subject` is a subject (wildcards allowed), without spaces"));
            }
            if s.parallelism != 1 {
                return Err(invalid(
                    "a nats source reads with parallelism 1 (one ordered consumer follows the stream's sequence); \
                     rebalance after it to spread the work",
                ));
            }
            if s.start_sequence == Some(0) {
                return Err(invalid("`start_sequence` starts at 1"));
            }
            if let Some(c) = s.consumer.as_deref()
                && (c.is_empty() || c.len() > 200 || c.chars().any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\')))
            {
                return Err(invalid(
                    "`consumer` is a durable consumer name: 1 to 200 characters, no spaces, `.`, `*`, `>`, `/` or `\\`",
                ));
            }
            if s.connect_timeout_ms == Some(0) {
                return Err(invalid("`connect_timeout_ms` must be at least 1"));
            }
            if !matches!(s.format, None | Some(FileFormat::Lines | FileFormat::Json)) {
                return Err(invalid(
                    "a nats source takes format = \"json\" (with `key_field`, `timestamp_field`) or none",
                ));
            }
            if s.format != Some(FileFormat::Json) && (s.key_field.is_some() || s.timestamp_field.is_some()) {
                return Err(invalid("`key_field` and `timestamp_field` need format = \"json\""));
            }
            if s.path.is_some() || s.columns.is_some() || s.follow || s.count.is_some() || has_generator_fields(s) {
                return Err(invalid(
                    "a nats source takes `url`, `stream`, `subject`, `consumer`, `start_sequence`, `bounded`, \
                     `connect_timeout_ms`, `format`, `key_field`, `timestamp_field` (and `watermarks`, `records_per_second`)",
                ));
            }
        }
        SourceKind::Kafka => check_kafka_source(s).map_err(|m| invalid(&m))?,
        SourceKind::Nexmark => {
            if s.count.is_none() {
                return Err(invalid("a nexmark source needs `count`"));
            }
            if s.events_per_second == Some(0) {
                return Err(invalid("`events_per_second` must be at least 1"));
            }
            if s.start_time_ms.is_some_and(|t| t < 0) {
                return Err(invalid("`start_time_ms` must not be negative"));
            }
            if has_file_fields(s) || has_generator_fields(s) {
                return Err(invalid(
                    "a nexmark source takes `count`, `events_per_second` and `start_time_ms` only (and `parallelism`, `watermarks`, `records_per_second`)",
                ));
            }
        }
    }
    let nats_fields = s.url.is_some() || s.stream.is_some() || s.subject.is_some() || s.start_sequence.is_some() || s.consumer.is_some();
    if !matches!(s.kind, SourceKind::Nats | SourceKind::Kafka) && (s.bounded || s.connect_timeout_ms.is_some()) {
        return Err(invalid("`bounded` and `connect_timeout_ms` are settings of nats and kafka sources"));
    }
    if s.kind != SourceKind::Nats && nats_fields {
        return Err(invalid(
            "`url`, `stream`, `subject`, `consumer` and `start_sequence` are nats-source fields",
        ));
    }
    if let Some(w) = &s.watermarks {
        check_watermarks(&s.name, w)?;
    }
    Ok(())
}

/// An edge that closes an iteration (`feedback = true`) goes from a
/// keyed-process operator back into its own input 1, in a streaming job;
/// `max_rounds` belongs to such an edge only.
fn check_feedback(e: &EdgeSpec, self_loop: bool, to: Option<OperatorKind>, input: u32, spec: &JobSpec) -> Result<(), String> {
    if !e.feedback {
        if e.max_rounds.is_some() {
            return Err("`max_rounds` is for a feedback edge (`feedback = true`)".into());
        }
        if self_loop {
            return Err("an edge from an operator to itself closes an iteration: mark it `feedback = true`".into());
        }
        return Ok(());
    }
    if !self_loop {
        return Err(
            "a feedback edge goes from an iteration's head back to itself (`from` and `to` the same keyed-process operator)".into(),
        );
    }
    if to != Some(OperatorKind::KeyedProcess) {
        return Err("the head of an iteration is a keyed-process operator".into());
    }
    if input != 1 {
        return Err("a feedback edge feeds input 1 of the head (`input = 1`); input 0 takes the records entering the loop".into());
    }
    if e.output != OutputTag::Main {
        return Err("a feedback edge carries the main output".into());
    }
    if e.max_rounds == Some(0) {
        return Err("`max_rounds` must be at least 1".into());
    }
    if spec.mode == ExecutionMode::Batch {
        return Err("iterations run in streaming mode (a blocking exchange cannot close a loop); a bounded input still ends the job once the loop is empty".into());
    }
    Ok(())
}

/// Kahn's algorithm over the edges that are not feedback edges; on a
/// cycle, name the nodes on it.
fn topological_order(nodes: &[Node], edges: &[Edge]) -> Result<Vec<NodeId>, JobError> {
    let edges: Vec<Edge> = edges.iter().filter(|e| !e.feedback).copied().collect();
    let edges = &edges[..];
    let mut indegree = vec![0usize; nodes.len()];
    for e in edges {
        indegree[e.to] += 1;
    }
    let mut ready: Vec<NodeId> = (0..nodes.len()).filter(|&n| indegree[n] == 0).rev().collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(n) = ready.pop() {
        order.push(n);
        for e in edges.iter().filter(|e| e.from == n) {
            indegree[e.to] -= 1;
            if indegree[e.to] == 0 {
                ready.push(e.to);
            }
        }
    }
    if order.len() == nodes.len() {
        return Ok(order);
    }
    // Walk backwards along unprocessed edges from a node left over until a
    // node repeats: that loop is a cycle.
    let left: Vec<bool> = (0..nodes.len()).map(|n| indegree[n] > 0).collect();
    let start = left.iter().position(|&l| l).unwrap_or(0);
    let mut path = vec![start];
    loop {
        let cur = *path.last().unwrap_or(&start);
        let Some(prev) = edges.iter().find(|e| e.to == cur && left[e.from]).map(|e| e.from) else {
            break;
        };
        if let Some(pos) = path.iter().position(|&p| p == prev) {
            let mut cycle: Vec<String> = path[pos..].iter().rev().map(|&i| nodes[i].name.clone()).collect();
            cycle.push(nodes[prev].name.clone());
            return Err(JobError::Cycle(cycle));
        }
        path.push(prev);
    }
    Err(JobError::Cycle(path.iter().map(|&i| nodes[i].name.clone()).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(toml: &str) -> Result<JobGraph, JobError> {
        JobGraph::build(JobSpec::from_toml(toml)?, Path::new("."))
    }

    const NODES: &str = r#"
        name = "t"
        [[sources]]
        name = "src"
        kind = "generator"
        count = 10
        [[operators]]
        name = "a"
        kind = "map"
        component = "a.wasm"
        [[operators]]
        name = "b"
        kind = "keyed-process"
        component = "b.wasm"
        parallelism = 2
        [[sinks]]
        name = "out"
        kind = "stdout"
    "#;

    fn with_edges(edges: &str) -> String {
        format!("{NODES}\n{edges}")
    }

    const GOOD_EDGES: &str = r#"
        [[edges]]
        from = "src"
        to = "a"
        [[edges]]
        from = "a"
        to = "b"
        [[edges]]
        from = "b"
        to = "out"
    "#;

    #[test]
    fn a_zipf_generator_has_at_most_its_key_table() {
        let zipf = |keys: u64| with_edges(GOOD_EDGES).replace("count = 10", &format!("count = 10\nkeys = {keys}\ndistribution = \"zipf\""));
        let max = crate::connectors::generator::MAX_ZIPF_KEYS;
        assert!(graph(&zipf(max)).is_ok());
        let err = graph(&zipf(max + 1)).unwrap_err().to_string();
        assert!(err.contains(&format!("`keys` is at most {max}")), "{err}");
    }

    #[test]
    fn a_header_is_for_csv_files_only() {
        let file = |fields: &str| {
            with_edges(GOOD_EDGES).replace(
                "kind = \"generator\"\n        count = 10",
                &format!("kind = \"file\"\n        path = \"in.csv\"\n        {fields}"),
            )
        };
        assert!(graph(&file("format = \"csv\"\ncolumns = [\"a\"]\nheader = true")).is_ok());
        let err = graph(&file("format = \"json\"\nheader = true")).unwrap_err().to_string();
        assert!(err.contains("`header` applies to format = \"csv\" only"), "{err}");
        let generator = with_edges(GOOD_EDGES).replace("count = 10", "count = 10\nheader = true");
        assert!(graph(&generator).is_err());
    }

    #[test]
    fn defaults_and_chains() {
        let g = graph(&with_edges(GOOD_EDGES)).unwrap();
        let parts: Vec<_> = g.edges.iter().map(|e| e.partition).collect();
        assert_eq!(parts, [Partition::Forward, Partition::Hash, Partition::Rebalance]);
        let names = |c: &Chain| c.nodes.iter().map(|&n| g.nodes[n].name.as_str()).collect::<Vec<_>>();
        let chains: Vec<_> = g.chains().iter().map(names).map(|v| v.join("+")).collect();
        assert_eq!(chains, ["src+a", "b", "out"]);
    }

    #[test]
    fn unknown_input_is_named() {
        let e = graph(&with_edges("[[edges]]\nfrom = \"nope\"\nto = \"a\"")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "edge into `a` comes from unknown input `nope`: no source or operator has that name"
        );
    }

    #[test]
    fn cycle_is_named() {
        let e = graph(&with_edges(
            "[[edges]]\nfrom = \"src\"\nto = \"a\"\n[[edges]]\nfrom = \"a\"\nto = \"b\"\n[[edges]]\nfrom = \"b\"\nto = \"a\"\npartition = \"rebalance\"\n[[edges]]\nfrom = \"b\"\nto = \"out\"",
        ))
        .unwrap_err();
        assert!(
            matches!(&e, JobError::Cycle(c) if c.contains(&"a".to_string()) && c.contains(&"b".to_string())),
            "{e}"
        );
        assert!(e.to_string().starts_with("the dataflow has a cycle: "), "{e}");
    }

    #[test]
    fn parallelism_zero_is_named() {
        let e = graph(&with_edges(GOOD_EDGES).replace("parallelism = 2", "parallelism = 0")).unwrap_err();
        assert_eq!(e.to_string(), "`b` has parallelism 0: it must be at least 1");
    }

    #[test]
    fn batch_mode_takes_bounded_sources_rewritable_sinks_and_no_checkpoints() {
        let batch = |extra: &str, edit: &dyn Fn(String) -> String| {
            graph(&edit(with_edges(GOOD_EDGES)).replace("name = \"t\"", &format!("name = \"t\"\nmode = \"batch\"\n{extra}")))
        };
        let same = |s: String| s;
        assert!(batch("", &same).is_ok());
        // A restart strategy needs no checkpoints: a failed task runs again.
        assert!(batch("restart = { strategy = \"fixed-delay\", attempts = 2, delay_ms = 10 }", &same).is_ok());
        let e = batch("[checkpoints]\ninterval_ms = 100\ndir = \"c\"", &same).unwrap_err();
        assert!(e.to_string().contains("a batch job takes no `[checkpoints]`"), "{e}");
        let e = batch("[batch]\nsort_memory_mb = 0", &same).unwrap_err();
        assert!(e.to_string().contains("batch.sort_memory_mb 0 must be between 1 and 65536"), "{e}");
        let kafka = |s: String| {
            s.replace(
                "kind = \"generator\"\n        count = 10",
                "kind = \"kafka\"\n        brokers = \"127.0.0.1:1\"\n        topic = \"t\"",
            )
        };
        let e = batch("", &kafka).unwrap_err();
        assert!(e.to_string().contains("batch mode reads bounded inputs only"), "{e}");
        let follow = |s: String| {
            s.replace(
                "kind = \"generator\"\n        count = 10",
                "kind = \"file\"\n        path = \"in.txt\"\n        follow = true",
            )
        };
        let e = batch("", &follow).unwrap_err();
        assert!(e.to_string().contains("batch mode reads bounded inputs only"), "{e}");
        let nats = |s: String| {
            s.replace(
                "kind = \"stdout\"",
                "kind = \"nats\"\n        url = \"nats://127.0.0.1:1\"\n        subject = \"s\"",
            )
        };
        let e = batch("", &nats).unwrap_err();
        assert!(e.to_string().contains("batch mode writes file, stdout or discard sinks"), "{e}");
        // `[batch]` is for batch mode.
        let e = graph(&with_edges(GOOD_EDGES).replace("name = \"t\"", "name = \"t\"\n[batch]\nsort_memory_mb = 8")).unwrap_err();
        assert!(e.to_string().contains("`[batch]` settings need mode = \"batch\""), "{e}");
    }

    #[test]
    fn keyed_input_must_be_hashed() {
        let e = graph(&with_edges(GOOD_EDGES).replace("to = \"b\"", "to = \"b\"\npartition = \"rebalance\"")).unwrap_err();
        assert!(e.to_string().contains("must be fed by partition = \"hash\""), "{e}");
    }

    #[test]
    fn missing_input_and_bad_fields() {
        let e = graph(NODES).unwrap_err();
        assert_eq!(e.to_string(), "`a` has no input: add an edge into it");
        let e = graph(&with_edges(GOOD_EDGES).replace("count = 10", "")).unwrap_err();
        assert_eq!(e.to_string(), "`src`: a generator source needs `count`");
        let e = graph(&with_edges(GOOD_EDGES).replace("kind = \"map\"", "kind = \"mapp\"")).unwrap_err();
        assert!(e.to_string().contains("unknown variant `mapp`"), "{e}");
        let e = graph(&with_edges(GOOD_EDGES).replace("component = \"a.wasm\"", "component = \"a.wasm\"\nparalelism = 3")).unwrap_err();
        assert!(e.to_string().contains("unknown field `paralelism`"), "{e}");
        let e = graph(&with_edges(GOOD_EDGES).replace("name = \"b\"", "name = \"a\"")).unwrap_err();
        assert_eq!(e.to_string(), "duplicate name `a`: sources, operators and sinks need unique names");
    }
}
