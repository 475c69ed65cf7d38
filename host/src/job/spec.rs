//! The job spec: what a user writes (TOML, or the same schema as JSON).
//!
//! ```toml
//! name = "wordcount"
//!
//! [[sources]]
//! name = "lines"
//! kind = "file"            # file | generator
//! path = "data/wordcount.txt"
//!
//! [[operators]]
//! name = "tokenize"
//! kind = "flat-map"        # map | filter | flat-map | keyed-process
//! component = "../udfs/target/wasm32-wasip2/release/tokenize.wasm"
//! parallelism = 2
//!
//! [[sinks]]
//! name = "out"
//! kind = "file"            # file | stdout
//! path = "../out/wordcount.jsonl"
//!
//! [[edges]]
//! from = "lines"
//! to = "tokenize"
//! partition = "rebalance"  # forward | rebalance | hash
//! ```
//!
//! Relative paths are relative to the spec file's directory. Unknown fields
//! are errors, so a typo never silently does nothing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::JobError;

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The job's name.
    pub name: String,
    /// Number of key groups: the upper bound of any keyed operator's
    /// parallelism. Default 128.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// Records per batch read by sources. Default 1024.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// What to do with a record a UDF reports as failed. Default `fail`.
    #[serde(default)]
    pub on_record_error: ErrorPolicy,
    /// Limits for every guest instance of the job.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// Where records come from.
    #[serde(default)]
    pub sources: Vec<SourceSpec>,
    /// User operators (Wasm components).
    #[serde(default)]
    pub operators: Vec<OperatorSpec>,
    /// Where records go.
    #[serde(default)]
    pub sinks: Vec<SinkSpec>,
    /// How nodes connect.
    #[serde(default)]
    pub edges: Vec<EdgeSpec>,
}

fn default_max_parallelism() -> u32 {
    crate::state::DEFAULT_MAX_PARALLELISM
}

fn default_batch_size() -> usize {
    1024
}

fn one() -> u32 {
    1
}

/// Policy for records a UDF reports as failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Fail the job, naming the operator, record and message.
    #[default]
    Fail,
    /// Drop the record, log it (rate-limited) and count it.
    Skip,
}

/// Guest limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsSpec {
    /// Linear memory per instance, MiB. Default 256.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Longest one call into a guest may run, ms. Default 10000.
    #[serde(default = "default_call_timeout_ms")]
    pub call_timeout_ms: u64,
    /// Guest log lines per second per instance. Default 100.
    #[serde(default = "default_log_rate")]
    pub log_lines_per_sec: u32,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            memory_mb: default_memory_mb(),
            call_timeout_ms: default_call_timeout_ms(),
            log_lines_per_sec: default_log_rate(),
        }
    }
}

fn default_memory_mb() -> u64 {
    256
}
fn default_call_timeout_ms() -> u64 {
    10_000
}
fn default_log_rate() -> u32 {
    100
}

/// Kinds of source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    /// A file read line by line (`path`, `format`).
    File,
    /// Deterministic generated records (`count`, `keys`, `distribution`, `value_size`).
    Generator,
}

/// Line formats of a file source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// Each line is a record's value.
    #[default]
    Lines,
    /// Each line is a JSON document, the record's value; `key_field` and
    /// `timestamp_field` pick the key and event time out of it.
    Json,
}

/// Key distributions of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Every key equally likely.
    #[default]
    Uniform,
    /// Zipf with exponent 1 (a few hot keys, a long tail).
    Zipf,
}

/// A source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// Unique name.
    pub name: String,
    /// What kind.
    pub kind: SourceKind,
    /// Parallel instances (a file source reads with one). Default 1.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// file: the file to read.
    pub path: Option<String>,
    /// file: how lines are read.
    pub format: Option<FileFormat>,
    /// file, json: field whose value becomes the record key.
    pub key_field: Option<String>,
    /// file, json: field (integer ms) whose value becomes the event time.
    pub timestamp_field: Option<String>,
    /// generator: how many records.
    pub count: Option<u64>,
    /// generator: number of distinct keys (`key-<n>`); none: records have no key.
    pub keys: Option<u64>,
    /// generator: how keys are drawn.
    pub distribution: Option<Distribution>,
    /// generator: bytes per value. Default 100.
    pub value_size: Option<usize>,
    /// generator: seed. Default 42.
    pub seed: Option<u64>,
}

/// Kinds of user operator, with the world each needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OperatorKind {
    /// One record in, one out (`stateless` world).
    Map,
    /// Keep or drop (`stateless` world).
    Filter,
    /// Any number out (`stateless` world).
    FlatMap,
    /// Keyed, with host state (`keyed-process` world).
    KeyedProcess,
}

impl OperatorKind {
    /// The world a component must export for this kind.
    pub fn world(self) -> crate::wasm::World {
        match self {
            OperatorKind::KeyedProcess => crate::wasm::World::KeyedProcess,
            _ => crate::wasm::World::Stateless,
        }
    }
}

/// A user operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSpec {
    /// Unique name.
    pub name: String,
    /// What kind.
    pub kind: OperatorKind,
    /// Path of the component file.
    pub component: String,
    /// Parallel instances. Default 1.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Configuration handed to the UDF's `open`, as JSON. Default `{}`.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

/// Kinds of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkKind {
    /// JSON lines to a file (`path`); with parallelism > 1, `path` is a
    /// directory of `part-<i>.jsonl` files.
    File,
    /// JSON lines to standard output.
    Stdout,
}

/// How a sink writes each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SinkFormat {
    /// The value: as is when it is JSON, else as a JSON string.
    #[default]
    Value,
    /// `{"key": …, "value": …, "timestamp": …}`.
    Envelope,
}

/// A sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkSpec {
    /// Unique name.
    pub name: String,
    /// What kind.
    pub kind: SinkKind,
    /// file: where to write.
    pub path: Option<String>,
    /// How records are written.
    #[serde(default)]
    pub format: SinkFormat,
    /// Parallel instances. Default 1.
    #[serde(default = "one")]
    pub parallelism: u32,
}

/// How records move along an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Partition {
    /// Subtask i to subtask i (equal parallelism); chained when possible.
    Forward,
    /// Batches round-robin over the downstream subtasks.
    Rebalance,
    /// By key group of the record key: the input of keyed operators.
    Hash,
}

/// An edge of the dataflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSpec {
    /// Upstream source or operator.
    pub from: String,
    /// Downstream operator or sink.
    pub to: String,
    /// Default: hash into a keyed operator, forward between equal
    /// parallelism, rebalance otherwise.
    pub partition: Option<Partition>,
}

impl JobSpec {
    /// Parse TOML.
    pub fn from_toml(text: &str) -> Result<Self, JobError> {
        toml::from_str(text).map_err(|e| JobError::Parse(e.to_string().trim_end().to_owned()))
    }

    /// Parse JSON (the API's form).
    pub fn from_json(text: &str) -> Result<Self, JobError> {
        serde_json::from_str(text).map_err(|e| JobError::Parse(e.to_string()))
    }

    /// Read a spec file: `.json` as JSON, anything else as TOML.
    pub fn from_file(path: &Path) -> Result<Self, JobError> {
        let text = std::fs::read_to_string(path).map_err(|e| JobError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let spec = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        spec.map_err(|e| match e {
            JobError::Parse(m) => JobError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}
