//! Checks of a whole dataflow that no single node can make: whether every
//! keyed operator's input can carry keys (an error: otherwise the first
//! record fails), and whether event time can advance where it is needed (a
//! warning: without watermarks event-time windows and timers fire only at
//! the end of the input).

use super::{Edge, JobError, NodeId, NodeKind};
use crate::spec::{FileFormat, OperatorKind, SourceKind, TimeCharacteristic, TriggerKind, WindowAssignerKind};

/// Why records leaving a node may have no key, naming the source and the
/// fix; none when they can carry keys (a UDF may always emit keys).
fn keyless(nodes: &[super::Node], edges: &[Edge], topo: &[NodeId]) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = vec![None; nodes.len()];
    for &n in topo {
        let node = &nodes[n];
        out[n] = match &node.kind {
            NodeKind::Source(s) => match s.kind {
                SourceKind::File if s.key_field.is_some() => None,
                SourceKind::File if matches!(s.format, Some(FileFormat::Json | FileFormat::Csv)) => Some(format!(
                    "source `{}` gives its records no key: set `key_field` on it (the field holding the key)",
                    s.name
                )),
                SourceKind::File => Some(format!(
                    "source `{}` reads plain lines, which have no key: use format = \"json\" or \"csv\" with `key_field`, \
                     or put a map or flat-map whose UDF emits keys in between",
                    s.name
                )),
                SourceKind::Generator if s.keys.is_some() => None,
                SourceKind::Generator => Some(format!(
                    "generator `{}` gives its records no key: set `keys` (how many distinct keys)",
                    s.name
                )),
                SourceKind::Nexmark => Some(format!(
                    "nexmark source `{}` gives its events no key: put a map whose UDF emits keys in between",
                    s.name
                )),
                // A Kafka record's key is the message key (or `key_field`).
                SourceKind::Kafka => None,
                SourceKind::Nats if s.key_field.is_some() => None,
                SourceKind::Nats => Some(format!(
                    "nats source `{}` gives its records no key: use format = \"json\" with `key_field`, \
                     or put a map or flat-map whose UDF emits keys in between",
                    s.name
                )),
            },
            // A filter passes records unchanged.
            NodeKind::Operator(o, _) if o.kind == OperatorKind::Filter => {
                edges.iter().filter(|e| e.to == n).find_map(|e| out[e.from].clone())
            }
            _ => None,
        };
    }
    out
}

/// Fails when a keyed operator (keyed-process, window, join) is fed by a
/// node whose records cannot carry keys, with the fix.
pub fn check_keys(nodes: &[super::Node], edges: &[Edge], topo: &[NodeId]) -> Result<(), JobError> {
    let keyless = keyless(nodes, edges, topo);
    for e in edges {
        let NodeKind::Operator(o, _) = &nodes[e.to].kind else {
            continue;
        };
        if !o.kind.is_keyed() {
            continue;
        }
        if let Some(why) = &keyless[e.from] {
            return Err(JobError::Invalid {
                node: o.name.clone(),
                message: format!("a keyed operator needs records with keys, but {why}"),
            });
        }
    }
    Ok(())
}

/// Per node, the sources upstream whose records reach it without
/// watermarks on the way (empty: event time advances there); with
/// `timestamped`, only sources that give their records event times.
fn without_watermarks(graph: &super::JobGraph, timestamped: bool) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![Vec::new(); graph.nodes.len()];
    for &n in &graph.topo {
        let node = &graph.nodes[n];
        out[n] = match &node.kind {
            NodeKind::Source(s) if s.watermarks.is_some() => Vec::new(),
            NodeKind::Source(s) if timestamped && !gives_timestamps(s) => Vec::new(),
            NodeKind::Source(s) => vec![s.name.clone()],
            NodeKind::Operator(o, _) if o.watermarks.is_some() => Vec::new(),
            _ => {
                let mut missing: Vec<String> = Vec::new();
                for e in graph.inputs(n).filter(|e| e.output == crate::spec::OutputTag::Main) {
                    for s in &out[e.from] {
                        if !missing.contains(s) {
                            missing.push(s.clone());
                        }
                    }
                }
                missing
            }
        };
    }
    out
}

/// Whether a source gives its records event times.
fn gives_timestamps(s: &crate::spec::SourceSpec) -> bool {
    match s.kind {
        SourceKind::File => s.timestamp_field.is_some(),
        SourceKind::Generator => s.events_per_second.is_some(),
        SourceKind::Nexmark | SourceKind::Nats | SourceKind::Kafka => true,
    }
}

/// Whether an operator's windows follow event time.
fn uses_event_time_windows(o: &crate::spec::OperatorSpec) -> bool {
    match o.kind {
        OperatorKind::Join => o.join.is_some(),
        OperatorKind::Window => o.window.as_ref().is_some_and(|w| {
            let trigger = w.trigger.as_ref().map(|t| t.kind);
            match trigger {
                Some(TriggerKind::EventTime) => true,
                Some(_) => false,
                None => {
                    w.time == TimeCharacteristic::Event && !matches!(w.assigner, WindowAssignerKind::Count | WindowAssignerKind::Global)
                }
            }
        }),
        _ => false,
    }
}

fn sources_phrase(sources: &[String]) -> String {
    let names: Vec<String> = sources.iter().map(|s| format!("`{s}`")).collect();
    match names.as_slice() {
        [one] => format!("source {one} generates none"),
        many => format!("sources {} generate none", many.join(", ")),
    }
}

/// A warning for every node that needs (event-time windows), or may need
/// (a keyed process's event-time timers), event time when no watermarks
/// reach it: its windows or timers would fire only when the input ends.
pub fn watermark_warnings(graph: &super::JobGraph) -> Vec<String> {
    let missing = without_watermarks(graph, false);
    // A keyed process is warned about only for records with event times:
    // without them it has no use for event-time timers.
    let missing_timestamped = without_watermarks(graph, true);
    let mut warnings = Vec::new();
    for (i, n) in graph.nodes.iter().enumerate() {
        let NodeKind::Operator(o, _) = &n.kind else {
            continue;
        };
        if missing[i].is_empty() {
            continue;
        }
        if o.kind == OperatorKind::KeyedProcess {
            if missing_timestamped[i].is_empty() {
                continue;
            }
            warnings.push(format!(
                "no watermarks reach `{}`: {}, so if it registers event-time timers they fire only when the input ends. \
                 Set `watermarks` on the source if it uses event time (see docs/event-time.md)",
                n.name,
                sources_phrase(&missing_timestamped[i])
            ));
            continue;
        }
        if !uses_event_time_windows(o) {
            continue;
        }
        warnings.push(format!(
            "no watermarks reach `{}`, which uses event-time windows: {}, so its windows fire only when the input ends. \
             Set `watermarks` on the source, e.g. watermarks = {{ strategy = \"bounded\", max_out_of_orderness_ms = 1000 }} \
             (see docs/event-time.md)",
            n.name,
            sources_phrase(&missing[i])
        ));
    }
    warnings
}
