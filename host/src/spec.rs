//! The job spec: what a user writes (TOML, or the same schema as JSON). Pure
//! data, the lowest layer: every module may read its settings.
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
//! kind = "flat-map"        # map | filter | flat-map | keyed-process | window
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

/// A spec that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    /// The file could not be read.
    #[error("reading job spec {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It does not parse (the message names the line and field).
    #[error("malformed job spec: {0}")]
    Parse(String),
}

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
    /// Periodic checkpoints; none: the job is not checkpointed.
    pub checkpoints: Option<CheckpointSpec>,
    /// What to do when a task fails. Default: with checkpoints, restart up
    /// to 3 times, 1 s apart; in batch mode, run a failed task again up to
    /// 3 times, 1 s apart; otherwise, fail.
    pub restart: Option<RestartSpec>,
    /// `streaming` (the default) or `batch`: a bounded job run stage by
    /// stage over blocking exchanges, without checkpoints (docs/batch.md).
    #[serde(default)]
    pub mode: ExecutionMode,
    /// Settings of batch mode.
    pub batch: Option<BatchSpec>,
}

/// How a job is executed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionMode {
    /// Every task runs at once, records flow through pipelined channels,
    /// checkpoints make it fault tolerant.
    #[default]
    Streaming,
    /// For bounded inputs: a task starts when its inputs are complete
    /// (written to spill files), keyed tasks read their input sorted by key,
    /// and a failed task runs again from its materialized inputs.
    Batch,
}

/// Batch mode.
///
/// ```toml
/// mode = "batch"
/// [batch]
/// sort_memory_mb = 64      # per keyed task, before its sort spills to disk
/// spill_dir = "/var/tmp"   # default: the system's temporary directory
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpec {
    /// Memory a keyed task sorts its input in before it writes sorted runs
    /// to disk (MiB, 1 to 65536). Default 64.
    #[serde(default = "default_sort_memory_mb")]
    pub sort_memory_mb: u64,
    /// Where intermediate results and sorted runs are written (relative to
    /// the spec); default the system's temporary directory.
    #[serde(default)]
    pub spill_dir: Option<String>,
}

impl Default for BatchSpec {
    fn default() -> Self {
        BatchSpec {
            sort_memory_mb: default_sort_memory_mb(),
            spill_dir: None,
        }
    }
}

fn default_sort_memory_mb() -> u64 {
    64
}

/// Checkpointing of a job.
///
/// ```toml
/// [checkpoints]
/// interval_ms = 1000
/// mode = "exactly-once"     # or "at-least-once"
/// dir = "../checkpoints/wordcount"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// Time between checkpoint starts (ms).
    pub interval_ms: u64,
    /// Barrier handling. Default exactly-once.
    #[serde(default)]
    pub mode: CheckpointMode,
    /// A checkpoint not complete after this long is aborted. Default 10 min.
    #[serde(default = "default_checkpoint_timeout")]
    pub timeout_ms: u64,
    /// Least time between the end of one checkpoint and the start of the next. Default 0.
    #[serde(default)]
    pub min_pause_ms: u64,
    /// Where checkpoints and savepoints are stored (relative to the spec).
    /// Required for `sluice run`; a server chooses it and ignores this.
    #[serde(default)]
    pub dir: String,
    /// Complete checkpoints kept. Default 3.
    #[serde(default = "default_retain")]
    pub retain: usize,
}

fn default_checkpoint_timeout() -> u64 {
    600_000
}

fn default_retain() -> usize {
    3
}

/// How barriers are handled at tasks with several input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointMode {
    /// Align barriers: an input that delivered barrier n waits for the
    /// others. Recovery replays every record exactly once.
    #[default]
    ExactlyOnce,
    /// Do not hold inputs: lower latency; recovery may replay records the
    /// state already reflects.
    AtLeastOnce,
}

impl CheckpointMode {
    /// The spec's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::ExactlyOnce => "exactly-once",
            CheckpointMode::AtLeastOnce => "at-least-once",
        }
    }
}

/// A restart strategy (Flink's).
///
/// ```toml
/// restart = { strategy = "fixed-delay", attempts = 3, delay_ms = 1000 }
/// restart = { strategy = "failure-rate", max_failures = 3, interval_ms = 60000, delay_ms = 1000 }
/// restart = { strategy = "exponential-delay", initial_ms = 1000, max_ms = 60000, multiplier = 2.0, reset_ms = 3600000 }
/// restart = { strategy = "none" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RestartSpec {
    /// Fail on the first failure.
    None,
    /// Restart up to `attempts` times, `delay_ms` apart.
    FixedDelay {
        /// Restarts allowed.
        attempts: u32,
        /// Wait before each restart (ms).
        #[serde(default = "default_restart_delay")]
        delay_ms: u64,
    },
    /// Restart unless more than `max_failures` happen within `interval_ms`.
    FailureRate {
        /// Failures tolerated within the interval.
        max_failures: u32,
        /// The interval (ms).
        interval_ms: u64,
        /// Wait before each restart (ms).
        #[serde(default = "default_restart_delay")]
        delay_ms: u64,
    },
    /// Restart for ever (or up to `attempts` times), waiting `initial_ms`
    /// first and `multiplier` times longer after each failure, up to
    /// `max_ms`; back to `initial_ms` after `reset_ms` without a failure
    /// (Flink's exponential-delay strategy, its default).
    ExponentialDelay {
        /// The first wait (ms). Default 1000.
        #[serde(default = "default_restart_delay")]
        initial_ms: u64,
        /// The longest wait (ms). Default 60000.
        #[serde(default = "default_max_restart_delay")]
        max_ms: u64,
        /// Growth per failure. Default 2.0 (Flink's 1.5 also works).
        #[serde(default = "default_restart_multiplier")]
        multiplier: f64,
        /// A run this long without a failure resets the wait (ms). Default 1 hour.
        #[serde(default = "default_restart_reset")]
        reset_ms: u64,
        /// Restarts allowed; none: unlimited.
        attempts: Option<u32>,
    },
}

fn default_max_restart_delay() -> u64 {
    60_000
}

fn default_restart_multiplier() -> f64 {
    2.0
}

fn default_restart_reset() -> u64 {
    3_600_000
}

fn default_restart_delay() -> u64 {
    1000
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
    /// Fuel one call may burn, when the engine meters fuel (a server
    /// tenant with `fuel_metering`). Default: unlimited.
    #[serde(default)]
    pub fuel_per_call: Option<u64>,
    /// Keyed, window and join state and timers of the whole job together,
    /// MiB; a write that would cross it fails the job. Default: unlimited
    /// (on a server, the tenant's `max_state_mb` applies as well).
    #[serde(default)]
    pub max_state_mb: Option<u64>,
    /// Largest record (key and value) a UDF call may emit, bytes. Default
    /// 16 MiB, which is also the most a server allows.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// Most bytes of records one UDF call may emit. Default 64 MiB, also the
    /// server's most.
    #[serde(default = "default_max_output_bytes")]
    pub max_output_bytes_per_call: usize,
    /// Most records one UDF call may emit. Default 4194304, also the
    /// server's most.
    #[serde(default = "default_max_output_records")]
    pub max_output_records_per_call: usize,
}

impl Default for LimitsSpec {
    fn default() -> Self {
        LimitsSpec {
            memory_mb: default_memory_mb(),
            call_timeout_ms: default_call_timeout_ms(),
            log_lines_per_sec: default_log_rate(),
            fuel_per_call: None,
            max_state_mb: None,
            max_record_bytes: default_max_record_bytes(),
            max_output_bytes_per_call: default_max_output_bytes(),
            max_output_records_per_call: default_max_output_records(),
        }
    }
}

fn default_max_record_bytes() -> usize {
    crate::tenancy::limits::DEFAULT_MAX_RECORD_BYTES
}
fn default_max_output_bytes() -> usize {
    crate::tenancy::limits::DEFAULT_MAX_OUTPUT_BYTES
}
fn default_max_output_records() -> usize {
    crate::tenancy::limits::DEFAULT_MAX_OUTPUT_RECORDS
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
    /// Nexmark auction events (`count`, `events_per_second`, `start_time_ms`):
    /// see `connectors::nexmark`.
    Nexmark,
    /// A NATS JetStream stream (`url`, `stream`, `subject`), read by an
    /// ordered consumer from the checkpointed stream sequence.
    Nats,
    /// Kafka topics (`brokers`, `topic`), partitions spread over the
    /// subtasks, offsets kept in checkpoints.
    Kafka,
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
    /// Comma-separated fields named by `columns`; the record's value is a
    /// JSON object of them (numbers stay numbers), and `key_field` and
    /// `timestamp_field` name columns.
    Csv,
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
    /// file, json or csv: field whose value becomes the record key.
    pub key_field: Option<String>,
    /// file, json or csv: field (integer ms) whose value becomes the event time.
    pub timestamp_field: Option<String>,
    /// file, csv: the names of the columns, in order.
    pub columns: Option<Vec<String>>,
    /// file, csv: the file's first line is a header naming the columns (it
    /// must name `columns`, in order) and is not a record.
    #[serde(default)]
    pub header: bool,
    /// file: keep reading lines appended to the file (like `tail -f`) until
    /// the job is cancelled, instead of ending at the end of the file.
    #[serde(default)]
    pub follow: bool,
    /// How the source's watermarks are generated; none: no watermarks until
    /// the end of input.
    pub watermarks: Option<WatermarkSpec>,
    /// generator, nexmark: how many records.
    pub count: Option<u64>,
    /// generator: number of distinct keys (`key-<n>`); none: records have no key.
    pub keys: Option<u64>,
    /// generator: how keys are drawn.
    pub distribution: Option<Distribution>,
    /// generator: bytes per value. Default 100.
    pub value_size: Option<usize>,
    /// generator: seed. Default 42.
    pub seed: Option<u64>,
    /// generator: give records event times, this many per event-time second,
    /// starting at `start_time_ms` (default 0), in order. nexmark: the event
    /// rate (default 10,000).
    pub events_per_second: Option<u64>,
    /// generator, nexmark: the event time of the first record (default 0).
    pub start_time_ms: Option<i64>,
    /// Emit at most this many records per second of wall time (per
    /// subtask); none: as fast as downstream takes them.
    pub records_per_second: Option<u64>,
    /// nats: the server, `nats://host:port` (a password in it is never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// nats: the JetStream stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// nats: only messages whose subject matches this (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// nats: the stream sequence to start at on a fresh start. Default 1 (the first message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_sequence: Option<u64>,
    /// nats: a durable consumer to read through, acknowledged (AckAll) up
    /// to each completed checkpoint's position; a fresh start without
    /// `start_sequence` resumes after its acknowledged messages. Without
    /// it the source reads through an ordered (ephemeral) consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// nats: end after the messages the stream holds when the job first
    /// starts (a bounded job), instead of reading until cancelled.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bounded: bool,
    /// nats, kafka: how long connecting may take before the job fails. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// kafka: the bootstrap servers, `host:port[,host:port…]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// kafka: the topic, or a list of topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<Topics>,
    /// kafka: the consumer group the offsets of completed checkpoints are
    /// committed to (for monitoring; the job resumes from its checkpoint).
    /// Default `sluice-<job>-<source>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// kafka: where a fresh start begins. Default "earliest".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<KafkaStart>,
    /// kafka: how often (ms) new partitions are looked for and the lag is
    /// measured while running (a bounded job only checks that a broker
    /// answers); 0: never. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_discovery_ms: Option<u64>,
    /// kafka: librdkafka settings passed as they are (`security.protocol`,
    /// `sasl.username`, …); values of keys naming a password or secret are
    /// never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<std::collections::BTreeMap<String, String>>,
}

/// One Kafka topic or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Topics {
    /// `topic = "a"`.
    One(String),
    /// `topic = ["a", "b"]`.
    Many(Vec<String>),
}

impl Topics {
    /// The topics, in order.
    pub fn names(&self) -> Vec<String> {
        match self {
            Topics::One(t) => vec![t.clone()],
            Topics::Many(v) => v.clone(),
        }
    }
}

/// Where a Kafka source starts when it does not resume from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KafkaStart {
    /// "earliest", "latest" or "committed".
    Named(KafkaStartAt),
    /// `{ timestamp_ms = … }`: the first record at or after that time.
    Timestamp {
        /// Milliseconds since the epoch.
        timestamp_ms: i64,
    },
}

/// The named start positions of a Kafka source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KafkaStartAt {
    /// The first offset each partition still holds.
    Earliest,
    /// The end of each partition when the job starts.
    Latest,
    /// The group's committed offsets (earliest where it has none).
    Committed,
}

/// `properties` with the values of secret-looking keys replaced by `***`.
pub fn redact_properties(p: &std::collections::BTreeMap<String, String>) -> std::collections::BTreeMap<String, String> {
    p.iter()
        .map(|(k, v)| {
            let l = k.to_ascii_lowercase();
            let secret = ["password", "secret", "jaas", "key.pem", "token"].iter().any(|s| l.contains(s));
            (k.clone(), if secret { "***".to_owned() } else { v.clone() })
        })
        .collect()
}

/// How watermarks are generated, at a source or after a stateless operator
/// that assigns timestamps.
///
/// ```toml
/// watermarks = { strategy = "bounded", max_out_of_orderness_ms = 500, interval_ms = 200, idle_timeout_ms = 5000 }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatermarkSpec {
    /// Which strategy.
    pub strategy: WatermarkStrategy,
    /// bounded: how far behind the highest timestamp seen records may arrive.
    #[serde(default)]
    pub max_out_of_orderness_ms: i64,
    /// monotonous, bounded: how often (processing time) the watermark is
    /// emitted; 0 emits after every batch. Default 200.
    #[serde(default = "default_watermark_interval")]
    pub interval_ms: u64,
    /// Mark the source idle after this long (processing time) without
    /// records, so it does not hold back the watermark downstream.
    pub idle_timeout_ms: Option<u64>,
    /// punctuated: the component (world `punctuated-watermarks`) that looks
    /// at each record and may emit a watermark after it.
    pub component: Option<String>,
    /// punctuated: configuration for the component's `open`.
    pub config: Option<serde_json::Value>,
}

fn default_watermark_interval() -> u64 {
    200
}

/// Watermark strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatermarkStrategy {
    /// Timestamps never decrease: the watermark is the highest timestamp
    /// seen minus 1.
    Monotonous,
    /// Records are at most `max_out_of_orderness_ms` late: the watermark is
    /// the highest timestamp seen minus that bound minus 1.
    Bounded,
    /// A UDF decides, per record.
    Punctuated,
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
    /// Keyed, with host state and timers (`keyed-process` world); with
    /// edges into input 0 and 1, a two-input (connected) operator.
    KeyedProcess,
    /// A keyed window (`window` table) computed by the host, with a
    /// built-in aggregate or a component of world `window-aggregate` or
    /// `window-process`.
    Window,
    /// An inner equi-join of two keyed inputs (edges into `input = 0`, the
    /// left, and `input = 1`, the right) computed by the host, with no
    /// component: a regular join, or a window join with a `join` table.
    Join,
}

impl OperatorKind {
    /// True for operators whose input is partitioned by key.
    pub fn is_keyed(self) -> bool {
        matches!(self, OperatorKind::KeyedProcess | OperatorKind::Window | OperatorKind::Join)
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
    /// Path of the component file (optional for a window with a built-in
    /// aggregate).
    #[serde(default)]
    pub component: Option<String>,
    /// Parallel instances. Default 1.
    #[serde(default = "one")]
    pub parallelism: u32,
    /// Configuration handed to the UDF's `open`, as JSON. Default `{}`.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// window: what windows, when they fire, and the built-in aggregate.
    pub window: Option<WindowSpec>,
    /// map, filter, flat-map: generate watermarks from the timestamps of
    /// this operator's output (which may assign them), replacing upstream
    /// watermarks.
    pub watermarks: Option<WatermarkSpec>,
    /// join: join within event-time windows instead of over all time.
    pub join: Option<JoinSpec>,
}

/// How a join operator pairs records of its two inputs with equal keys
/// (values must be JSON; each pair is emitted as `{"left": l, "right": r}`):
///
/// ```toml
/// join = { window = "tumbling", size_ms = 10000 }   # pairs within one window, when it ends
/// join = { window = "sliding", size_ms = 10000, slide_ms = 2000 }
/// ```
///
/// Without a `join` table the join is regular (Flink's unbounded inner
/// join): every record is kept in state and paired, on arrival, with every
/// record of the other input seen so far, with the later timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    /// The windows: `tumbling` or `sliding`, in event time. A window join
    /// emits a window's pairs (with `"start"` and `"end"`) once the
    /// watermark passes its end, then forgets it.
    pub window: WindowAssignerKind,
    /// Window length.
    pub size_ms: Option<i64>,
    /// sliding: distance between window starts.
    pub slide_ms: Option<i64>,
    /// Shift of window starts from the epoch. Default 0.
    #[serde(default)]
    pub offset_ms: i64,
}

/// A window operator's windows, trigger, lateness and function.
///
/// ```toml
/// window = { assigner = "tumbling", size_ms = 1000, aggregate = "count" }
/// window = { assigner = "sliding", size_ms = 10000, slide_ms = 5000, aggregate = "sum", field = "price" }
/// window = { assigner = "session", gap_ms = 30000, allowed_lateness_ms = 5000 }
/// window = { assigner = "count", size = 100, aggregate = "max", field = "temp" }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// How records are assigned to windows.
    pub assigner: WindowAssignerKind,
    /// tumbling, sliding: window length.
    pub size_ms: Option<i64>,
    /// sliding: distance between window starts.
    pub slide_ms: Option<i64>,
    /// tumbling, sliding: shift of window starts from the epoch. Default 0.
    #[serde(default)]
    pub offset_ms: i64,
    /// session: the gap of inactivity that closes a session.
    pub gap_ms: Option<i64>,
    /// count: records per window.
    pub size: Option<u64>,
    /// Which time assigns windows and drives the default trigger. Default event.
    #[serde(default)]
    pub time: TimeCharacteristic,
    /// When windows fire. Default: at the end of the window in its time
    /// (a count of `size` for count windows; never for global windows).
    pub trigger: Option<TriggerSpec>,
    /// event time: how long after the end of a window late records still
    /// update it (each re-fires it). Default 0.
    #[serde(default)]
    pub allowed_lateness_ms: i64,
    /// The built-in function when the operator has no component.
    pub aggregate: Option<BuiltinAggregate>,
    /// sum, min, max: the JSON field of the value holding the number; none:
    /// the whole value is the number.
    pub field: Option<String>,
}

/// Window assigners.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WindowAssignerKind {
    /// Fixed-size, non-overlapping.
    Tumbling,
    /// Fixed-size, overlapping every `slide_ms`.
    Sliding,
    /// Per key, closed by a gap of inactivity; sessions merge when a record
    /// bridges them.
    Session,
    /// One window per key for all time (give it a trigger).
    Global,
    /// Every `size` records of a key.
    Count,
}

/// Event time or processing time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimeCharacteristic {
    /// The records' timestamps, with watermarks.
    #[default]
    Event,
    /// The host's clock when a record arrives.
    Processing,
}

/// A window trigger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// What fires the window.
    pub kind: TriggerKind,
    /// count: records per firing.
    pub count: Option<u64>,
    /// Clear the window's contents after each firing. Default false.
    #[serde(default)]
    pub purging: bool,
}

/// Trigger kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TriggerKind {
    /// When the watermark passes the window's end.
    EventTime,
    /// When the host's clock passes the window's end.
    ProcessingTime,
    /// Every `count` records of a key and window.
    Count,
}

/// Built-in window aggregates. Each emits `{"key", "start", "end", <name>}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinAggregate {
    /// Number of records.
    Count,
    /// Sum of a number.
    Sum,
    /// Smallest number.
    Min,
    /// Largest number.
    Max,
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
    /// Drops every record (Flink's `blackhole`): for benchmarks.
    Discard,
    /// Rows into a PostgreSQL table (`url`, `table`, `columns`, `delivery`).
    Postgres,
    /// Messages to a NATS JetStream subject (`url`, `subject`), published
    /// from a spool when their checkpoint completes.
    Nats,
    /// Records to a Kafka topic (`brokers`, `topic`, `delivery`).
    Kafka,
}

/// What a PostgreSQL sink promises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// The rows of a checkpoint interval in one transaction, prepared at the
    /// barrier and committed when the checkpoint completes (two-phase commit).
    #[default]
    ExactlyOnce,
    /// Each batch committed as it arrives; after a failure, the rows since
    /// the restored checkpoint are written again.
    AtLeastOnce,
    /// `INSERT … ON CONFLICT (key) DO UPDATE` per batch: at-least-once
    /// delivery that leaves each key's last row, for tables with a key.
    Upsert,
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
    /// postgres: the connection URL, `postgres://user[:password]@host[:port]/database`;
    /// nats: the server, `nats://host:port` (a password in it is never shown
    /// by the API or logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// postgres: the password, when it is not in `url` (never shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// postgres: the table, `name` or `schema.name` (case-sensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// postgres: the columns filled from the same-named fields of each
    /// record's JSON object. Default: every column without a default value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// postgres: exactly-once (default), at-least-once or upsert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// postgres upsert: the conflict key. Default: the table's primary key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_columns: Option<Vec<String>>,
    /// postgres exactly-once: the prefix of the prepared transactions' ids;
    /// nats: of the messages' `Nats-Msg-Id`s. It must stay the same across
    /// restores. Default `sluice-<job>-<sink>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_prefix: Option<String>,
    /// nats: the subject messages are published to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// postgres, nats, kafka: how long connecting may take before the job fails. Default 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// kafka: the bootstrap servers, `host:port[,host:port…]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub brokers: Option<String>,
    /// kafka: the topic records are produced to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// kafka exactly-once: the transaction timeout (ms), below the broker's
    /// `transaction.max.timeout.ms`. Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_timeout_ms: Option<u64>,
    /// kafka: librdkafka settings passed as they are; values of keys naming
    /// a password or secret are never shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<std::collections::BTreeMap<String, String>>,
}

impl SinkSpec {
    /// The sink with its secrets (`password`, a password in `url`) replaced
    /// by `***`: what the API and logs show.
    pub fn redacted(&self) -> SinkSpec {
        SinkSpec {
            url: self.url.as_deref().map(redact_url),
            password: self.password.as_ref().map(|_| "***".to_owned()),
            properties: self.properties.as_ref().map(redact_properties),
            ..self.clone()
        }
    }
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`; a
/// `password=` parameter likewise.
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        // A `key=value …` connection string.
        return url
            .split(' ')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let end = out[start..].find(['/', '?']).map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{base}{}", query.join("&"));
    }
    out
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
    /// Into a two-input keyed-process operator: input 0 (default) or 1.
    pub input: Option<u32>,
    /// Which output of `from` the edge carries. Default main; `late` takes a
    /// window operator's records that arrived after its allowed lateness.
    #[serde(default)]
    pub output: OutputTag,
    /// The feedback edge of an iteration: from a keyed-process operator
    /// back into its own input 1 (see `docs/iterations.md`).
    #[serde(default)]
    pub feedback: bool,
    /// A feedback edge: a record goes round at most this many times
    /// (records of a later round are dropped). Default: no limit.
    pub max_rounds: Option<u32>,
    /// Carry only records whose value is a JSON object with this field
    /// equal to this value: `where = { field = "kind", equals = "msg" }`.
    #[serde(rename = "where")]
    pub filter: Option<EdgeFilter>,
}

/// Which records an edge carries: those whose value is a JSON object whose
/// `field` equals `equals` (a record whose value is not a JSON object, or
/// lacks the field, does not match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeFilter {
    /// A top-level field of the record's JSON value.
    pub field: String,
    /// The value it must have.
    pub equals: serde_json::Value,
}

impl EdgeFilter {
    /// Does a record with this value pass?
    pub fn matches(&self, value: &[u8]) -> bool {
        #[derive(Deserialize)]
        struct Fields(std::collections::HashMap<String, serde_json::Value>);
        match serde_json::from_slice::<Fields>(value) {
            Ok(Fields(map)) => map.get(&self.field) == Some(&self.equals),
            Err(_) => false,
        }
    }
}

/// Outputs of an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputTag {
    /// The regular output.
    #[default]
    Main,
    /// A window operator's late records.
    Late,
}

impl JobSpec {
    /// The spec with every source's and sink's secrets replaced by `***`.
    pub fn redacted(&self) -> JobSpec {
        JobSpec {
            sources: self
                .sources
                .iter()
                .map(|s| SourceSpec {
                    url: s.url.as_deref().map(redact_url),
                    properties: s.properties.as_ref().map(redact_properties),
                    ..s.clone()
                })
                .collect(),
            sinks: self.sinks.iter().map(SinkSpec::redacted).collect(),
            ..self.clone()
        }
    }

    /// Parse TOML.
    pub fn from_toml(text: &str) -> Result<Self, SpecError> {
        toml::from_str(text).map_err(|e| SpecError::Parse(e.to_string().trim_end().to_owned()))
    }

    /// Parse JSON (the API's form).
    pub fn from_json(text: &str) -> Result<Self, SpecError> {
        serde_json::from_str(text).map_err(|e| SpecError::Parse(e.to_string()))
    }

    /// Read a spec file: `.json` as JSON, anything else as TOML.
    pub fn from_file(path: &Path) -> Result<Self, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let spec = if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(&text)
        } else {
            Self::from_toml(&text)
        };
        spec.map_err(|e| match e {
            SpecError::Parse(m) => SpecError::Parse(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact_url("postgres://u:s3cret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(
            redact_url("postgres://u@h/db?password=s3cret&x=1"),
            "postgres://u@h/db?password=***&x=1"
        );
        assert_eq!(redact_url("host=h user=u password=s3cret"), "host=h user=u password=***");
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        let spec = JobSpec::from_toml(
            "name = \"j\"\n[[sinks]]\nname = \"o\"\nkind = \"postgres\"\nurl = \"postgres://u:pw@h/db\"\npassword = \"pw2\"\ntable = \"t\"\n",
        )
        .unwrap();
        let shown = serde_json::to_string(&spec.redacted()).unwrap();
        assert!(!shown.contains("pw"), "{shown}");
        assert!(shown.contains("postgres://u:***@h/db"), "{shown}");
    }
}
