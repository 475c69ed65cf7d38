//! The Kafka source: partitions spread over the subtasks as Flink's
//! KafkaSource spreads them, each partition's next offset kept in
//! checkpoints, event time tracked per partition.
//!
//! ```text
//! first read (fresh)  ─► metadata of the topics; this subtask's partitions
//!                        (kafka::owner) from `start`, resolved to offsets
//! barrier             ─► position = every owned partition's next offset
//!                        (and its end, for a bounded job)
//! restore             ─► the positions of *all* subtasks (union state):
//!                        each subtask takes the partitions it owns at the
//!                        new parallelism, so rescaling moves partitions
//! checkpoint done     ─► the group's offsets committed (monitoring only)
//! every discovery_ms  ─► new partitions of the topics are read from their
//!                        first offset
//! ```
//!
//! The consumer is assigned its partitions (no group rebalancing), reads
//! with `auto.offset.reset = error`, so an offset the topic no longer holds
//! fails the job instead of skipping data. With a periodic watermark
//! strategy the watermark is the lowest of its partitions' (each the highest
//! timestamp seen minus the bound); a partition idle for `idle_timeout_ms`
//! does not hold it back, and a bounded partition that has ended neither.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_guest::batch::BatchWriter;

use super::file_source::json_fields;
use super::kafka::{DEFAULT_CONNECT_TIMEOUT_MS, MAX_MESSAGE_BYTES, client_config, owner};
use super::{ConnectorError, SOURCE_BATCH_BYTES, SourceReader};
use crate::spec::{FileFormat, KafkaStart, KafkaStartAt, SourceSpec, WatermarkSpec, WatermarkStrategy};
use crate::types::RecordBatch;

/// How long `next_batch` waits for a first message before it returns an
/// empty batch (so barriers and cancellation are not held up).
const POLL: Duration = Duration::from_millis(50);

/// Positions older than this many checkpoints are not kept for committing.
const PENDING_COMMITS: usize = 16;

/// The largest checkpointed position accepted on restore.
const MAX_POSITION_BYTES: usize = 64 << 20;

/// (topic, partition, next offset).
type Offsets = (String, i32, i64);

/// One partition a subtask reads.
#[derive(Debug, Clone)]
struct Partition {
    topic: String,
    partition: i32,
    /// The next offset to read.
    next: i64,
    /// Bounded: the offset to stop before; -1: unbounded.
    end: i64,
    /// Highest event time seen.
    max_ts: Option<i64>,
    /// When it last gave a record (processing time, ms).
    last_active: i64,
}

impl Partition {
    fn new(topic: String, partition: i32, next: i64, end: i64) -> Self {
        Partition {
            topic,
            partition,
            next,
            end,
            max_ts: None,
            last_active: now_ms(),
        }
    }

    fn ended(&self) -> bool {
        self.end >= 0 && self.next >= self.end
    }
}

/// What a checkpoint stores: the partitions of one subtask.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    /// Whether this subtask had resolved its start offsets (a fresh
    /// subtask's partitions are started by `start` on restore).
    started: bool,
    bounded: bool,
    /// (topic, partition, next offset, end offset or -1).
    partitions: Vec<(String, i32, i64, i64)>,
}

/// A Kafka source subtask.
pub struct KafkaSource {
    name: String,
    brokers: String,
    topics: Vec<String>,
    group: String,
    start: KafkaStart,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    json: bool,
    bounded: bool,
    timeout: Duration,
    discovery: Option<Duration>,
    properties: Option<BTreeMap<String, String>>,
    subtask: u32,
    parallelism: u32,
    consumer: Option<BaseConsumer<SourceContext>>,
    /// The partitions this subtask reads, by (topic, partition).
    partitions: BTreeMap<(String, i32), Partition>,
    /// Restored: the union of every subtask's checkpointed partitions; a
    /// fresh start: none.
    restored: Option<BTreeMap<(String, i32), (i64, i64)>>,
    /// Some restored subtask had not started: its partitions begin at `start`.
    restored_fresh: bool,
    last_discovery: Instant,
    /// Watermarks per partition (periodic strategies only).
    watermarks: Option<PartitionWatermarks>,
    /// Positions at barriers, committed to the group once complete.
    pending: Vec<(u64, Vec<Offsets>)>,
    completed: Option<Arc<AtomicU64>>,
    /// Offsets last committed to the group, by partition.
    committed: BTreeMap<(String, i32), i64>,
    /// End offsets minus committed (else next) offsets, at the last discovery.
    lag: Option<u64>,
    done: bool,
}

#[derive(Debug)]
struct PartitionWatermarks {
    bound: i64,
    interval_ms: i64,
    idle_ms: Option<i64>,
    emitted: Option<i64>,
    last_emit: Option<i64>,
}

impl KafkaSource {
    /// Subtask `subtask` of `parallelism` of the source `spec`; `completed`
    /// is the newest completed checkpoint (offsets are committed to the
    /// group after it). It connects on its first read.
    pub fn new(spec: &SourceSpec, subtask: u32, completed: Option<Arc<AtomicU64>>) -> Self {
        let watermarks = spec.watermarks.as_ref().and_then(partition_watermarks);
        KafkaSource {
            name: spec.name.clone(),
            brokers: spec.brokers.clone().unwrap_or_default(),
            topics: spec.topic.as_ref().map(crate::spec::Topics::names).unwrap_or_default(),
            group: spec.group.clone().unwrap_or_else(|| format!("sluice-{}", spec.name)),
            start: spec.start.unwrap_or(KafkaStart::Named(KafkaStartAt::Earliest)),
            key_field: spec.key_field.clone(),
            timestamp_field: spec.timestamp_field.clone(),
            json: spec.format == Some(FileFormat::Json),
            bounded: spec.bounded,
            timeout: Duration::from_millis(spec.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)),
            discovery: match spec.partition_discovery_ms.unwrap_or(10_000) {
                0 => None,
                ms => Some(Duration::from_millis(ms)),
            },
            properties: spec.properties.clone(),
            subtask,
            parallelism: spec.parallelism.max(1),
            consumer: None,
            partitions: BTreeMap::new(),
            restored: None,
            restored_fresh: false,
            last_discovery: Instant::now(),
            watermarks,
            pending: Vec::new(),
            completed,
            committed: BTreeMap::new(),
            lag: None,
            done: false,
        }
    }

    fn bad(&self, message: String) -> ConnectorError {
        ConnectorError::Source {
            source_name: self.name.clone(),
            message,
        }
    }

    /// Whether this source makes its own (per-partition) watermarks, so the
    /// task needs no watermark assigner after it.
    pub fn tracks_watermarks(spec: &SourceSpec) -> bool {
        spec.watermarks.as_ref().and_then(partition_watermarks).is_some()
    }

    /// The partitions of the topics now, by topic.
    fn metadata(&self, consumer: &BaseConsumer<SourceContext>) -> Result<Vec<(String, i32)>, ConnectorError> {
        let mut out = Vec::new();
        for topic in &self.topics {
            let md = consumer.fetch_metadata(Some(topic), self.timeout).map_err(|e| {
                self.bad(format!(
                    "cannot reach Kafka at {} within {} ms: {e}",
                    self.brokers,
                    self.timeout.as_millis()
                ))
            })?;
            let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
                return Err(self.bad(format!("topic `{topic}` does not exist on {}", self.brokers)));
            };
            if let Some(err) = t.error() {
                let code = RDKafkaErrorCode::from(err);
                return Err(self.bad(match code {
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                        format!("topic `{topic}` does not exist on {} (create it first)", self.brokers)
                    }
                    other => format!("topic `{topic}` on {}: {other}", self.brokers),
                }));
            }
            if t.partitions().is_empty() {
                return Err(self.bad(format!("topic `{topic}` on {} has no partitions", self.brokers)));
            }
            out.extend(t.partitions().iter().map(|p| (topic.clone(), p.id())));
        }
        Ok(out)
    }

    /// The first offset of a fresh partition by `start`, and the
    /// partition's end now.
    fn start_offset(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        topic: &str,
        partition: i32,
        start: KafkaStart,
    ) -> Result<(i64, i64), ConnectorError> {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|e| self.bad(format!("offsets of `{topic}` partition {partition} on {}: {e}", self.brokers)))?;
        let at = match start {
            KafkaStart::Named(KafkaStartAt::Earliest) => low,
            KafkaStart::Named(KafkaStartAt::Latest) => high,
            KafkaStart::Named(KafkaStartAt::Committed) => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, partition);
                let got = consumer
                    .committed_offsets(tpl, self.timeout)
                    .map_err(|e| self.bad(format!("committed offsets of group `{}` on {}: {e}", self.group, self.brokers)))?;
                match got.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o.clamp(low, high),
                    _ => low,
                }
            }
            KafkaStart::Timestamp { timestamp_ms } => {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition_offset(topic, partition, Offset::Offset(timestamp_ms))
                    .map_err(|e| self.bad(format!("`start`: {e}")))?;
                let got = consumer
                    .offsets_for_times(tpl, self.timeout)
                    .map_err(|e| self.bad(format!("offsets for time {timestamp_ms} of `{topic}` on {}: {e}", self.brokers)))?;
                match got.find_partition(topic, partition).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    // No record at or after that time: the end.
                    _ => high,
                }
            }
        };
        Ok((at, high))
    }

    /// Connect, work out this subtask's partitions and their offsets, and
    /// assign them.
    fn connect(&mut self) -> Result<(), ConnectorError> {
        let mut config = client_config(&self.brokers, self.properties.as_ref(), self.timeout);
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error")
            .set("receive.message.max.bytes", (MAX_MESSAGE_BYTES * 2 + 512).to_string());
        // A fetch bound that fits the receive bound, unless the spec sets one.
        if !self.properties.as_ref().is_some_and(|p| p.contains_key("fetch.max.bytes")) {
            config.set("fetch.max.bytes", (MAX_MESSAGE_BYTES * 2).to_string());
        }
        let consumer: BaseConsumer<SourceContext> = config
            .create_with_context(SourceContext::default())
            .map_err(|e| self.bad(format!("creating a Kafka consumer for {}: {e}", self.brokers)))?;
        let all = self.metadata(&consumer)?;
        let restored = self.restored.take();
        let fresh_start = restored.is_none() || self.restored_fresh;
        for (topic, partition) in all {
            if owner(&topic, partition, self.parallelism) != self.subtask {
                continue;
            }
            let (next, end) = match restored.as_ref().and_then(|r| r.get(&(topic.clone(), partition))) {
                Some(&(next, end)) => (next, end),
                // A partition no checkpointed subtask read: one of a fresh
                // subtask, or one that appeared since.
                None if restored.is_some() && !fresh_start => {
                    if self.bounded {
                        // It appeared after the bounded job started.
                        continue;
                    }
                    (
                        self.start_offset(&consumer, &topic, partition, KafkaStart::Named(KafkaStartAt::Earliest))?
                            .0,
                        -1,
                    )
                }
                None => {
                    let (next, high) = self.start_offset(&consumer, &topic, partition, self.start)?;
                    (next, if self.bounded { high } else { -1 })
                }
            };
            tracing::debug!(source = %self.name, topic = %topic, partition, next, end, "reading a partition");
            self.partitions
                .insert((topic.clone(), partition), Partition::new(topic, partition, next, end));
        }
        self.assign(&consumer)?;
        self.consumer = Some(consumer);
        self.last_discovery = Instant::now();
        Ok(())
    }

    /// Assign the partitions that have not ended, each from its next offset.
    fn assign(&self, consumer: &BaseConsumer<SourceContext>) -> Result<(), ConnectorError> {
        let mut tpl = TopicPartitionList::new();
        for p in self.partitions.values().filter(|p| !p.ended()) {
            tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(p.next))
                .map_err(|e| self.bad(format!("assigning `{}` partition {}: {e}", p.topic, p.partition)))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| self.bad(format!("assigning partitions on {}: {e}", self.brokers)))
    }

    /// Now and then: measure the lag, and look for new partitions (a
    /// bounded job only checks that a broker answers, since librdkafka
    /// waits quietly for brokers that went away).
    fn discover(&mut self) -> Result<(), ConnectorError> {
        let Some(every) = self.discovery else {
            return Ok(());
        };
        if self.last_discovery.elapsed() < every {
            return Ok(());
        }
        self.last_discovery = Instant::now();
        self.measure_lag();
        if self.bounded {
            return match &self.consumer {
                Some(c) => self.metadata(c).map(|_| ()),
                None => Ok(()),
            };
        }
        let Some(consumer) = self.consumer.take() else { return Ok(()) };
        let result = (|| {
            let all = self.metadata(&consumer)?;
            let mut added = false;
            for (topic, partition) in all {
                if owner(&topic, partition, self.parallelism) != self.subtask || self.partitions.contains_key(&(topic.clone(), partition)) {
                    continue;
                }
                let (next, _) = self.start_offset(&consumer, &topic, partition, KafkaStart::Named(KafkaStartAt::Earliest))?;
                tracing::info!(source = %self.name, topic = %topic, partition, "reading a new partition");
                self.partitions
                    .insert((topic.clone(), partition), Partition::new(topic, partition, next, -1));
                added = true;
            }
            if added {
                self.assign(&consumer)?;
            }
            Ok(())
        })();
        self.consumer = Some(consumer);
        result
    }

    /// The lag: each partition's end offset now minus the offset committed
    /// to the group (the next offset where none was committed yet).
    fn measure_lag(&mut self) {
        let Some(c) = &self.consumer else { return };
        let mut lag = 0u64;
        for (k, p) in &self.partitions {
            // A slow answer leaves the last figure.
            let Ok((_, high)) = c.fetch_watermarks(&p.topic, p.partition, self.timeout.min(Duration::from_secs(1))) else {
                return;
            };
            let at = self.committed.get(k).copied().unwrap_or(p.next);
            lag += (high - at).max(0) as u64;
        }
        self.lag = Some(lag);
    }

    /// Commit the offsets of checkpoints that have completed to the group.
    fn commit_completed(&mut self) {
        let Some(done) = self.completed.as_ref().map(|c| c.load(Ordering::Acquire)) else {
            return;
        };
        let Some(i) = self.pending.iter().rposition(|(id, _)| *id <= done) else {
            return;
        };
        let (_, offsets) = self.pending.drain(..=i).next_back().unwrap_or_default();
        let mut tpl = TopicPartitionList::new();
        for (t, p, o) in &offsets {
            let _ = tpl.add_partition_offset(t, *p, Offset::Offset(*o));
        }
        for (t, p, o) in offsets {
            self.committed.insert((t, p), o);
        }
        let Some(consumer) = &self.consumer else { return };
        if tpl.count() > 0
            && let Err(e) = consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::warn!(source = %self.name, "committing offsets to group `{}`: {e}", self.group);
        }
    }
}

/// Notes when librdkafka finds every broker down (it reports that through
/// the error callback only, and would otherwise wait for them quietly).
#[derive(Default)]
struct SourceContext {
    down: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for SourceContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error,
            KafkaError::Global(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        ) && let Ok(mut d) = self.down.lock()
        {
            *d = Some(reason.to_owned());
        } else {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for SourceContext {}

fn partition_watermarks(spec: &WatermarkSpec) -> Option<PartitionWatermarks> {
    let bound = match spec.strategy {
        WatermarkStrategy::Monotonous => 0,
        WatermarkStrategy::Bounded => spec.max_out_of_orderness_ms.max(0),
        WatermarkStrategy::Punctuated => return None,
    };
    Some(PartitionWatermarks {
        bound,
        interval_ms: spec.interval_ms.min(i64::MAX as u64) as i64,
        idle_ms: spec.idle_timeout_ms.map(|t| t.min(i64::MAX as u64) as i64),
        emitted: None,
        last_emit: None,
    })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SourceReader for KafkaSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.done {
            return Ok(None);
        }
        if self.consumer.is_none() {
            self.connect()?;
        }
        self.commit_completed();
        self.discover()?;
        if self.bounded && self.partitions.values().all(Partition::ended) {
            self.done = true;
            return Ok(None);
        }
        let Some(consumer) = self.consumer.as_ref() else { return Ok(None) };
        // A connection failed: if no broker answers within the connect
        // timeout, fail, so the restart strategy takes over (the job resumes
        // from its checkpoint once a broker answers again).
        if consumer.context().down.lock().ok().and_then(|mut d| d.take()).is_some() {
            self.metadata(consumer)?;
        }
        let mut probe = false;
        let mut w = BatchWriter::new();
        let mut wait = POLL;
        let mut reassign = false;
        let now = now_ms();
        while w.len() < max_records && w.byte_len() < SOURCE_BATCH_BYTES {
            let Some(got) = consumer.poll(wait) else { break };
            wait = Duration::ZERO;
            let m = match got {
                Ok(m) => m,
                Err(KafkaError::MessageConsumption(code @ RDKafkaErrorCode::OffsetOutOfRange)) => {
                    return Err(self.bad(format!(
                        "{code}: an offset the job resumes from is no longer in the topic (removed by retention before the job read it)"
                    )));
                }
                Err(KafkaError::PartitionEOF(_)) => continue,
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure)) => {
                    // Probed below, once this batch is out.
                    probe = true;
                    break;
                }
                Err(e) => return Err(self.bad(format!("reading from {}: {e}", self.brokers))),
            };
            let key = (m.topic().to_owned(), m.partition());
            let Some(p) = self.partitions.get_mut(&key) else { continue };
            let offset = m.offset();
            if offset < p.next || p.ended() {
                continue;
            }
            let payload = m.payload().unwrap_or_default();
            if payload.len() > MAX_MESSAGE_BYTES || m.key().is_some_and(|k| k.len() > MAX_MESSAGE_BYTES) {
                return Err(ConnectorError::Source {
                    source_name: self.name.clone(),
                    message: format!(
                        "the record at offset {offset} of `{}` partition {} is over the {MAX_MESSAGE_BYTES}-byte limit",
                        key.0, key.1
                    ),
                });
            }
            let (json_key, json_ts) = if self.json {
                json_fields(payload, self.key_field.as_deref(), self.timestamp_field.as_deref()).map_err(|e| ConnectorError::Source {
                    source_name: self.name.clone(),
                    message: format!("the record at offset {offset} of `{}` partition {}: {e}", key.0, key.1),
                })?
            } else {
                (None, None)
            };
            let ts = json_ts.or(m.timestamp().to_millis());
            let record_key = json_key.as_deref().or(m.key());
            w.push(record_key, payload, ts);
            p.next = offset + 1;
            p.last_active = now;
            if let Some(t) = ts {
                p.max_ts = Some(p.max_ts.map_or(t, |m| m.max(t)));
            }
            if p.ended() {
                reassign = true;
            }
        }
        if reassign {
            // Stop fetching the partitions that reached their end.
            self.assign(consumer)?;
        }
        if probe {
            self.metadata(consumer)?;
        }
        let len = w.len();
        if len == 0 && self.bounded && self.partitions.values().all(Partition::ended) {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(RecordBatch { bytes: w.finish(), len }))
    }

    fn position(&self) -> Vec<u8> {
        let position = match (&self.consumer, &self.restored) {
            // Restored but not started yet: what the checkpoint said of
            // the partitions this subtask owns.
            (None, Some(r)) => Position {
                started: !self.restored_fresh,
                bounded: self.bounded,
                partitions: r
                    .iter()
                    .filter(|((t, p), _)| owner(t, *p, self.parallelism) == self.subtask)
                    .map(|((t, p), (n, e))| (t.clone(), *p, *n, *e))
                    .collect(),
            },
            (consumer, _) => Position {
                started: consumer.is_some(),
                bounded: self.bounded,
                partitions: self
                    .partitions
                    .values()
                    .map(|p| (p.topic.clone(), p.partition, p.next, p.end))
                    .collect(),
            },
        };
        serde_json::to_vec(&position).unwrap_or_default()
    }

    fn snapshot_position(&mut self, checkpoint: u64) -> Vec<u8> {
        let offsets = self.partitions.values().map(|p| (p.topic.clone(), p.partition, p.next)).collect();
        self.pending.push((checkpoint, offsets));
        if self.pending.len() > PENDING_COMMITS {
            self.pending.remove(0);
        }
        self.position()
    }

    fn union_positions(&self) -> bool {
        true
    }

    fn lag(&self) -> Option<u64> {
        self.lag
    }

    fn idle(&self) -> bool {
        // Unbounded, connected, and no partition is this subtask's.
        !self.bounded && self.consumer.is_some() && self.partitions.is_empty()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        self.seek_union(&[position])
    }

    fn seek_union(&mut self, positions: &[&[u8]]) -> Result<(), ConnectorError> {
        let mut all = BTreeMap::new();
        let mut fresh = false;
        for raw in positions {
            if raw.len() > MAX_POSITION_BYTES {
                return Err(ConnectorError::BadPosition {
                    source_name: self.name.clone(),
                    message: format!(
                        "a kafka position of {} bytes is over the {MAX_POSITION_BYTES}-byte limit",
                        raw.len()
                    ),
                });
            }
            let p: Position = serde_json::from_slice(raw).map_err(|e| ConnectorError::BadPosition {
                source_name: self.name.clone(),
                message: format!("not a kafka source position: {e}"),
            })?;
            fresh |= !p.started;
            if p.bounded != self.bounded {
                return Err(ConnectorError::BadPosition {
                    source_name: self.name.clone(),
                    message: "the checkpoint was taken with a different `bounded` setting".into(),
                });
            }
            for (t, part, next, end) in p.partitions {
                if next < 0 {
                    return Err(ConnectorError::BadPosition {
                        source_name: self.name.clone(),
                        message: format!("negative offset {next} for `{t}` partition {part}"),
                    });
                }
                all.insert((t, part), (next, end));
            }
        }
        self.restored = Some(all);
        self.restored_fresh = fresh;
        self.consumer = None;
        self.partitions.clear();
        Ok(())
    }

    fn watermark(&mut self) -> Option<i64> {
        let now = now_ms();
        let w = self.watermarks.as_mut()?;
        if w.last_emit.is_some_and(|t| now.saturating_sub(t) < w.interval_ms) {
            return None;
        }
        let mut low: Option<i64> = None;
        for p in self.partitions.values() {
            if p.ended() || w.idle_ms.is_some_and(|idle| now.saturating_sub(p.last_active) >= idle) {
                continue;
            }
            // An active partition without records yet holds time back.
            let mark = p.max_ts?.saturating_sub(w.bound).saturating_sub(1);
            low = Some(low.map_or(mark, |l| l.min(mark)));
        }
        let mark = low?;
        if w.emitted.is_some_and(|e| mark <= e) {
            return None;
        }
        w.emitted = Some(mark);
        w.last_emit = Some(now);
        Some(mark)
    }
}
