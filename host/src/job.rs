//! Jobs: the spec a user writes, its validation into a logical graph, and the
//! physical plan (parallel subtasks, chains) the runtime executes.
//!
//! Validation happens before anything runs, and every error names what is
//! wrong: an unknown input, a cycle, a missing component, a component that
//! does not export the world its operator kind needs, parallelism 0.

pub mod explain;
pub mod graph;
pub mod lint;
pub mod plan;

pub use crate::spec;

use std::path::PathBuf;

pub use explain::Plan;
pub use graph::{Chain, Edge, JobGraph, Node, NodeId, NodeKind};
pub use plan::{ExecutionPlan, JobComponents, RestoreHandles, TaskDescriptor};
pub use spec::{EdgeSpec, ErrorPolicy, JobSpec, OperatorKind, OperatorSpec, Partition, SinkSpec, SourceSpec};

/// Why a job cannot be built or run.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The spec file could not be read.
    #[error("reading job spec {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The spec does not parse (the message names the line and field).
    #[error("malformed job spec: {0}")]
    Parse(String),
    /// Two nodes share a name.
    #[error("duplicate name `{0}`: sources, operators and sinks need unique names")]
    DuplicateName(String),
    /// An edge starts at a node that does not exist.
    #[error("edge into `{to}` comes from unknown input `{from}`: no source or operator has that name")]
    UnknownInput {
        /// The missing node.
        from: String,
        /// The edge's target.
        to: String,
    },
    /// An edge ends at a node that does not exist.
    #[error("edge from `{from}` goes to unknown node `{to}`: no operator or sink has that name")]
    UnknownOutput {
        /// The edge's source.
        from: String,
        /// The missing node.
        to: String,
    },
    /// An edge out of a sink or into a source.
    #[error("edge from `{from}` to `{to}`: {reason}")]
    BadEdge {
        /// Upstream.
        from: String,
        /// Downstream.
        to: String,
        /// Why it is not allowed.
        reason: String,
    },
    /// An operator or sink has no input.
    #[error("`{0}` has no input: add an edge into it")]
    NoInput(String),
    /// The edges form a cycle.
    #[error("the dataflow has a cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// Parallelism 0.
    #[error("`{0}` has parallelism 0: it must be at least 1")]
    ZeroParallelism(String),
    /// Parallelism above the number of key groups.
    #[error("`{name}` has parallelism {parallelism}, above max_parallelism {max}")]
    ParallelismAboveMax {
        /// The node.
        name: String,
        /// Its parallelism.
        parallelism: u32,
        /// The job's maximum.
        max: u32,
    },
    /// A field a node kind needs is missing or wrong.
    #[error("`{node}`: {message}")]
    Invalid {
        /// The node (or `job`).
        node: String,
        /// What is wrong.
        message: String,
    },
    /// A component file does not exist or cannot be read.
    #[error("operator `{operator}`: component {path} is missing: {reason}")]
    MissingComponent {
        /// The operator.
        operator: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// A component is not loadable (not a component, does not link, …).
    #[error("operator `{operator}`: component {path}: {error}")]
    Component {
        /// The operator.
        operator: String,
        /// The component file.
        path: PathBuf,
        /// Why (not the error's `source`, so that a chain prints it once).
        error: crate::wasm::WasmError,
    },
    /// A component of the wrong world.
    #[error(
        "operator `{operator}` is a {kind} and needs a component of world {}, but {path} {}. Rebuild it for {}: {}",
        world_short(.expected), found_description(.found), world_short(.expected), rebuild_hint(*.expected)
    )]
    WrongWorld {
        /// The operator.
        operator: String,
        /// Its kind, as written in the spec.
        kind: String,
        /// The world it needs.
        expected: crate::wasm::World,
        /// The component.
        path: PathBuf,
        /// The world the component targets (as `sluice inspect` shows it), if any.
        found: Option<crate::wasm::World>,
    },
    /// A checkpoint or savepoint cannot be restored into this job.
    #[error("restore: {0}")]
    Restore(String),
    /// The job failed while running.
    #[error(transparent)]
    Failed(#[from] crate::operator::TaskError),
}

impl From<crate::spec::SpecError> for JobError {
    fn from(e: crate::spec::SpecError) -> Self {
        match e {
            crate::spec::SpecError::Read { path, source } => JobError::Read { path, source },
            crate::spec::SpecError::Parse(m) => JobError::Parse(m),
        }
    }
}

/// A world as `sluice inspect` prints it and the `-w` flags of the guest
/// tools take it: `` `keyed-process` (sluice:udf/keyed-process@0.1.0) ``.
fn world_short(w: &crate::wasm::World) -> String {
    format!("`{}` ({})", w.short_name(), w.wit_name())
}

/// What a component of the wrong world targets, and which operator kinds
/// it would fit.
fn found_description(found: &Option<crate::wasm::World>) -> String {
    match found {
        None => "targets no sluice:udf operator world (`sluice inspect` shows its exports)".to_owned(),
        Some(w) => {
            let kinds: Vec<String> = w.operator_kinds().iter().map(|k| format!("kind = \"{k}\"")).collect();
            let fits = match kinds.as_slice() {
                [] => {
                    "no operator kind (it is a watermark generator: `watermarks = { strategy = \"punctuated\", component = … }`)".to_owned()
                }
                [one] => one.clone(),
                [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
            };
            format!("targets world {}, which fits {fits}", world_short(w))
        }
    }
}

/// How to build a component of world `w` in each guest language.
fn rebuild_hint(w: crate::wasm::World) -> String {
    let name = w.short_name();
    let rust = match w {
        crate::wasm::World::Stateless => "`export_map!`, `export_filter!` or `export_flat_map!`".to_owned(),
        crate::wasm::World::KeyedProcess => "`export_keyed_process!` (or `export_co_keyed_process!`)".to_owned(),
        crate::wasm::World::WindowAggregate => "`export_aggregate!`".to_owned(),
        crate::wasm::World::WindowProcess => "`export_window_process!`".to_owned(),
        crate::wasm::World::Punctuated => "`export_punctuated!`".to_owned(),
    };
    format!(
        "in Rust with sluice_guest's {rust}; in Python with `componentize-py … -w {name}`; in JavaScript with \
         `componentize-js … --world-name {name}`; in C with `sluice c-bindings --world {name}` (`sluice new` creates a project of each)"
    )
}
