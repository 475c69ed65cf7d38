//! The plan view of a job (Flink's `flink info`): its nodes with their
//! parallelism, the partitioner of every edge — saying when it was
//! defaulted and why — and how nodes are chained into tasks. Rendered as
//! text, JSON or Graphviz DOT by `sluice plan`, served as JSON by
//! `GET /v1/jobs/{id}/plan`, and drawn by the dashboard.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::{JobGraph, NodeKind};
use crate::spec::{Partition, TimeCharacteristic};

/// A job's plan, as the user sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The job's name.
    pub job: String,
    /// Key groups (the most parallelism a keyed operator can be rescaled to).
    pub max_parallelism: u32,
    /// Batch mode: every exchange between tasks is blocking.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// Nodes in spec order: sources, operators, sinks.
    pub nodes: Vec<PlanNode>,
    /// Edges in spec order.
    pub edges: Vec<PlanEdge>,
    /// Tasks (chains of nodes run by one thread per subtask), in
    /// topological order of their heads.
    pub tasks: Vec<PlanTask>,
}

/// A node of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanNode {
    /// Its name.
    pub name: String,
    /// `source`, `operator` or `sink`.
    pub role: String,
    /// Its kind as written in the spec (`file`, `map`, `window`, …).
    pub kind: String,
    /// Parallel subtasks.
    pub parallelism: u32,
    /// The task (index into `tasks`) it runs in.
    pub task: usize,
    /// What else is worth knowing: format, key field, watermarks, window,
    /// component file (e.g. `format csv, key word, watermarks bounded 400 ms`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

/// An edge of the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanEdge {
    /// Upstream node.
    pub from: String,
    /// Downstream node.
    pub to: String,
    /// `forward`, `rebalance` or `hash`, as resolved.
    pub partition: String,
    /// Why the partitioner was chosen, when the spec left it out (none:
    /// the spec set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaulted: Option<String>,
    /// `main`, or `late` (a window's late records).
    pub output: String,
    /// The input of `to` it feeds (1: the second input of a two-input operator).
    pub input: u32,
    /// True when `from` and `to` are fused into one task (no exchange).
    pub chained: bool,
    /// The feedback edge of an iteration, with its round limit if any:
    /// `feedback` or `feedback, at most N rounds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<String>,
    /// The records it carries when it selects some: `kind = "msg"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
}

/// A task: nodes fused into one chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanTask {
    /// Its index.
    pub id: usize,
    /// Its nodes, head first.
    pub nodes: Vec<String>,
    /// Parallel subtasks (every node of a chain has the same).
    pub parallelism: u32,
}

/// The name a spec enum serializes to (`flat-map`, `hash`, …).
fn spec_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn details(node: &NodeKind) -> String {
    let mut parts: Vec<String> = Vec::new();
    let watermarks = |w: &crate::spec::WatermarkSpec| {
        let mut s = format!("watermarks {}", spec_name(&w.strategy));
        if w.max_out_of_orderness_ms > 0 {
            let _ = write!(s, " {} ms", w.max_out_of_orderness_ms);
        }
        s
    };
    match node {
        NodeKind::Source(s) => {
            if let Some(p) = &s.path {
                parts.push(p.clone());
            }
            if let Some(f) = s.format {
                parts.push(format!("format {}", spec_name(&f)));
            }
            if let Some(k) = &s.key_field {
                parts.push(format!("key {k}"));
            }
            if let Some(k) = s.keys {
                parts.push(format!("{k} keys"));
            }
            if let Some(t) = &s.timestamp_field {
                parts.push(format!("timestamp {t}"));
            }
            if let Some(w) = &s.watermarks {
                parts.push(watermarks(w));
            }
        }
        NodeKind::Operator(o, path) => {
            if let Some(w) = &o.window {
                let mut s = format!("window {}", spec_name(&w.assigner));
                if let Some(size) = w.size_ms {
                    let _ = write!(s, " {size} ms");
                }
                if let Some(gap) = w.gap_ms {
                    let _ = write!(s, " gap {gap} ms");
                }
                if w.time == TimeCharacteristic::Processing {
                    s.push_str(" processing time");
                }
                if let Some(a) = w.aggregate {
                    let _ = write!(s, ", {}", spec_name(&a));
                }
                parts.push(s);
            }
            if let Some(j) = &o.join {
                parts.push(format!("join {} window", spec_name(&j.window)));
            }
            if let Some(w) = &o.watermarks {
                parts.push(watermarks(w));
            }
            if let Some(name) = path.as_ref().and_then(|p| p.file_name()) {
                parts.push(name.to_string_lossy().into_owned());
            }
        }
        NodeKind::Sink(s) => {
            if let Some(p) = &s.path {
                parts.push(p.clone());
            }
        }
    }
    parts.join(", ")
}

impl Plan {
    /// The plan of a validated job.
    pub fn of(graph: &JobGraph) -> Plan {
        let chains = graph.chains();
        let mut task = vec![0usize; graph.nodes.len()];
        for (i, chain) in chains.iter().enumerate() {
            for &n in &chain.nodes {
                if let Some(t) = task.get_mut(n) {
                    *t = i;
                }
            }
        }
        let chained = |from: usize, to: usize| chains.iter().any(|c| c.nodes.windows(2).any(|w| w[0] == from && w[1] == to));
        let nodes = graph
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (role, kind) = match &n.kind {
                    NodeKind::Source(s) => ("source", spec_name(&s.kind)),
                    NodeKind::Operator(o, _) => ("operator", spec_name(&o.kind)),
                    NodeKind::Sink(s) => ("sink", spec_name(&s.kind)),
                };
                PlanNode {
                    name: n.name.clone(),
                    role: role.to_owned(),
                    kind,
                    parallelism: n.parallelism,
                    task: task[i],
                    details: details(&n.kind),
                }
            })
            .collect();
        let edges = graph
            .edges
            .iter()
            .enumerate()
            .map(|(i, e)| {
                // Edges are validated in spec order, one per spec edge.
                let written = graph.spec.edges.get(i).and_then(|s| s.partition);
                let to_keyed = matches!(&graph.nodes[e.to].kind, NodeKind::Operator(o, _) if o.kind.is_keyed());
                let defaulted = written.is_none().then(|| match e.partition {
                    Partition::Hash if to_keyed => "the input of a keyed operator".to_owned(),
                    Partition::Forward => "equal parallelism".to_owned(),
                    _ => format!(
                        "parallelism {} -> {}",
                        graph.nodes[e.from].parallelism, graph.nodes[e.to].parallelism
                    ),
                });
                PlanEdge {
                    from: graph.nodes[e.from].name.clone(),
                    to: graph.nodes[e.to].name.clone(),
                    partition: spec_name(&e.partition),
                    defaulted,
                    output: spec_name(&e.output),
                    input: e.input,
                    chained: chained(e.from, e.to),
                    feedback: e.feedback.then(|| match graph.spec.edges.get(i).and_then(|s| s.max_rounds) {
                        Some(n) => format!("feedback, at most {n} rounds"),
                        None => "feedback".to_owned(),
                    }),
                    filter: graph
                        .spec
                        .edges
                        .get(i)
                        .and_then(|s| s.filter.as_ref())
                        .map(|f| format!("{} = {}", f.field, f.equals)),
                }
            })
            .collect();
        let tasks = chains
            .iter()
            .enumerate()
            .map(|(id, c)| PlanTask {
                id,
                nodes: c.nodes.iter().map(|&n| graph.nodes[n].name.clone()).collect(),
                parallelism: c.nodes.first().map_or(1, |&n| graph.nodes[n].parallelism),
            })
            .collect();
        Plan {
            job: graph.spec.name.clone(),
            max_parallelism: graph.spec.max_parallelism,
            batch: graph.spec.mode == crate::spec::ExecutionMode::Batch,
            nodes,
            edges,
            tasks,
        }
    }

    /// Subtasks of every task together: the threads (and, on a cluster,
    /// the slots' worth of work) one run takes.
    pub fn subtasks(&self) -> u32 {
        self.tasks.iter().map(|t| t.parallelism).sum()
    }

    /// The plan as text: tasks with their chained nodes, then every edge
    /// with its partitioner.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "job `{}`: {} nodes in {} tasks ({} subtasks), max parallelism {}{}",
            self.job,
            self.nodes.len(),
            self.tasks.len(),
            self.subtasks(),
            self.max_parallelism,
            if self.batch {
                "; batch mode: every exchange between tasks is blocking, keyed tasks read their input sorted by key"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "\ntasks:");
        for t in &self.tasks {
            let _ = writeln!(out, "  task {}  parallelism {}", t.id, t.parallelism);
            for (i, name) in t.nodes.iter().enumerate() {
                let Some(n) = self.nodes.iter().find(|n| &n.name == name) else {
                    continue;
                };
                let lead = if i == 0 { "    " } else { "    -> " };
                let details = if n.details.is_empty() {
                    String::new()
                } else {
                    format!(": {}", n.details)
                };
                let _ = writeln!(out, "{lead}{} ({} {}){details}", n.name, n.kind, n.role);
            }
        }
        let _ = writeln!(out, "\nedges:");
        let width = self.edges.iter().map(|e| e.from.len() + e.to.len() + 4).max().unwrap_or(0);
        for e in &self.edges {
            let arrow = format!("{} -> {}", e.from, e.to);
            let mut notes = Vec::new();
            if let Some(why) = &e.defaulted {
                notes.push(format!("default: {why}"));
            }
            if e.output != "main" {
                notes.push(format!("{} output", e.output));
            }
            if e.input != 0 {
                notes.push(format!("input {}", e.input));
            }
            if let Some(f) = &e.feedback {
                notes.push(f.clone());
            }
            if let Some(f) = &e.filter {
                notes.push(format!("where {f}"));
            }
            notes.push(if e.chained { "chained".into() } else { "exchange".into() });
            let _ = writeln!(out, "  {arrow:<width$}  {:<9} ({})", e.partition, notes.join(", "));
        }
        out
    }

    /// The plan as Graphviz DOT: one cluster per task, edges labelled with
    /// their partitioner (dashed when records cross an exchange).
    pub fn to_dot(&self) -> String {
        let escape = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let quote = |s: &str| format!("\"{}\"", escape(s));
        let mut out = String::new();
        let _ = writeln!(out, "digraph {} {{", quote(&self.job));
        let _ = writeln!(out, "  rankdir=LR;");
        let _ = writeln!(out, "  node [shape=box, style=rounded];");
        for t in &self.tasks {
            let _ = writeln!(out, "  subgraph cluster_task{} {{", t.id);
            let _ = writeln!(
                out,
                "    label={};",
                quote(&format!("task {} (parallelism {})", t.id, t.parallelism))
            );
            for name in &t.nodes {
                let Some(n) = self.nodes.iter().find(|n| &n.name == name) else {
                    continue;
                };
                // `\n` is DOT's line break inside a label.
                let label = format!("{}\\n{} {} ×{}", escape(&n.name), escape(&n.kind), n.role, n.parallelism);
                let _ = writeln!(out, "    {} [label=\"{label}\"];", quote(&n.name));
            }
            let _ = writeln!(out, "  }}");
        }
        for e in &self.edges {
            let mut label = e.partition.clone();
            if e.defaulted.is_some() {
                label.push_str(" (default)");
            }
            if e.output != "main" {
                let _ = write!(label, " [{}]", e.output);
            }
            if e.input != 0 {
                let _ = write!(label, " [input {}]", e.input);
            }
            let style = if e.chained { "solid" } else { "dashed" };
            let _ = writeln!(
                out,
                "  {} -> {} [label={}, style={style}];",
                quote(&e.from),
                quote(&e.to),
                quote(&label)
            );
        }
        out.push_str("}\n");
        out
    }
}
