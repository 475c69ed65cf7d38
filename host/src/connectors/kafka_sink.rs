//! The Kafka sink: records to a topic, at least once or exactly once.
//!
//! A record's Kafka key is its key, its timestamp its event time, and its
//! value the record's value as it is (`format = "value"`) or the JSON
//! envelope (`format = "envelope"`).
//!
//! **at-least-once**: an idempotent producer; every barrier waits until
//! everything sent is acknowledged, so a completed checkpoint's records are
//! in Kafka; after a failure the records since the restored checkpoint are
//! sent again.
//!
//! **exactly-once**: librdkafka cannot resume another process's open
//! transaction (Flink's KafkaSink does so through the Java client's
//! internals), so a transaction that was open when a process died can only
//! be aborted. Sluice therefore spools a checkpoint interval's records in
//! the checkpoint directory ([`super::spool`]) and, once the checkpoint
//! completes, writes each spool file in one Kafka transaction:
//!
//! ```text
//! init_transactions(transactional.id = <prefix>-<writer>)   fences older producers
//! begin; produce the file's records;
//! send_offsets_to_transaction(group <prefix>-<run>-<writer>: <topic>/0 = n + 1)
//! commit                                                    records and marker at once
//! delete the spool file
//! ```
//!
//! The marker — an offset the group `<prefix>-<run>-<writer>` commits inside
//! the transaction — says which checkpoint of that writer is in Kafka
//! (`<run>` is [`super::spool::run_of`]: a fresh run of the job starts its
//! markers again). A spool file found again after a crash is published
//! only if its checkpoint is past the marker, so a transaction that
//! committed is never repeated and one that did not is aborted by the next
//! `init_transactions` and written again: consumers with
//! `isolation.level = read_committed` see every record once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::json_sink::format_record;
use super::kafka::{DEFAULT_CONNECT_TIMEOUT_MS, client_config};
use super::{ConnectorError, SinkWriter};
use crate::spec::{SinkFormat, SinkSpec};
use crate::types::RecordBatch;

/// The transaction timeout unless the spec says otherwise.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;

/// Remembers the first delivery failure.
#[derive(Clone, Default)]
struct Deliveries {
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result
            && let Ok(mut f) = self.failed.lock()
            && f.is_none()
        {
            *f = Some(e.to_string());
        }
    }
}

fn failed(sink: &str, message: String) -> ConnectorError {
    ConnectorError::Sink {
        sink: sink.to_owned(),
        message,
    }
}

fn timeout_of(spec: &SinkSpec) -> Duration {
    Duration::from_millis(spec.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS))
}

/// A producer for `spec` with `extra` settings.
fn producer(spec: &SinkSpec, extra: &[(&str, String)]) -> Result<ThreadedProducer<Deliveries>, ConnectorError> {
    let brokers = spec.brokers.clone().unwrap_or_default();
    let mut c: ClientConfig = client_config(&brokers, spec.properties.as_ref(), timeout_of(spec));
    c.set(
        "message.timeout.ms",
        timeout_of(spec).as_millis().clamp(1, i32::MAX as u128).to_string(),
    );
    for (k, v) in extra {
        c.set(*k, v);
    }
    c.create_with_context(Deliveries::default())
        .map_err(|e| failed(&spec.name, format!("creating a Kafka producer for {brokers}: {e}")))
}

/// Check the topic exists (a producer would wait for it until timeout).
fn check_topic_exists(spec: &SinkSpec, p: &ThreadedProducer<Deliveries>) -> Result<(), ConnectorError> {
    let (brokers, topic) = (
        spec.brokers.as_deref().unwrap_or_default(),
        spec.topic.as_deref().unwrap_or_default(),
    );
    let md = p.client().fetch_metadata(Some(topic), timeout_of(spec)).map_err(|e| {
        failed(
            &spec.name,
            format!("cannot reach Kafka at {brokers} within {} ms: {e}", timeout_of(spec).as_millis()),
        )
    })?;
    match md.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
        _ => Err(failed(
            &spec.name,
            format!("topic `{topic}` does not exist on {brokers} (create it first)"),
        )),
    }
}

/// Send one record, waiting while librdkafka's queue is full.
fn send(
    spec: &SinkSpec,
    p: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: Option<&[u8]>,
    value: &[u8],
    timestamp: Option<i64>,
    headers: Option<OwnedHeaders>,
) -> Result<(), ConnectorError> {
    let deadline = Instant::now() + timeout_of(spec);
    let mut record = BaseRecord::to(topic).payload(value);
    if let Some(h) = headers {
        record = record.headers(h);
    }
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(t) = timestamp.filter(|t| *t >= 0) {
        record = record.timestamp(t);
    }
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) if Instant::now() < deadline => {
                record = back;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(failed(&spec.name, format!("producing to `{topic}`: {e}"))),
        }
    }
}

/// Wait until librdkafka has delivered everything sent (or `timeout`
/// passes). rdkafka's own `flush` polls in steps of 100 ms, and with the
/// `ThreadedProducer`'s thread serving the events each step waits it out:
/// every flush, and every transaction commit (which flushes), would take
/// 100 ms at least.
fn wait_delivered(p: &ThreadedProducer<Deliveries>, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while p.in_flight_count() > 0 {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

fn delivery_error(spec: &SinkSpec, d: &Deliveries) -> Result<(), ConnectorError> {
    match d.failed.lock().ok().and_then(|f| f.clone()) {
        Some(e) => Err(failed(
            &spec.name,
            format!(
                "Kafka did not take a record for `{}`: {e}",
                spec.topic.as_deref().unwrap_or_default()
            ),
        )),
        None => Ok(()),
    }
}

/// An at-least-once Kafka sink subtask.
pub struct KafkaSink {
    spec: SinkSpec,
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    value: Vec<u8>,
}

impl KafkaSink {
    /// Connect (the topic must exist).
    pub fn open(spec: &SinkSpec) -> Result<Self, ConnectorError> {
        let producer = producer(spec, &[("enable.idempotence", "true".into())])?;
        check_topic_exists(spec, &producer)?;
        Ok(KafkaSink {
            spec: spec.clone(),
            producer,
            topic: spec.topic.clone().unwrap_or_default(),
            value: Vec::new(),
        })
    }
}

impl SinkWriter for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        delivery_error(&self.spec, self.producer.context())?;
        for r in batch.records() {
            let value = match self.spec.format {
                SinkFormat::Value => r.value,
                SinkFormat::Envelope => {
                    self.value.clear();
                    format_record(SinkFormat::Envelope, r.key, r.value, r.timestamp, &mut self.value);
                    &self.value
                }
            };
            send(&self.spec, &self.producer, &self.topic, r.key, value, r.timestamp, None)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        delivery_error(&self.spec, self.producer.context())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.prepare_commit(0, true).map(|_| ())
    }

    fn prepare_commit(&mut self, _checkpoint: u64, _last: bool) -> Result<Vec<String>, ConnectorError> {
        if !wait_delivered(&self.producer, timeout_of(&self.spec)) {
            return Err(failed(
                &self.spec.name,
                format!(
                    "not every record reached `{}` within {} ms",
                    self.topic,
                    timeout_of(&self.spec).as_millis()
                ),
            ));
        }
        delivery_error(&self.spec, self.producer.context())?;
        Ok(Vec::new())
    }
}

/// The broker setting that bounds a producer's `transaction.timeout.ms`.
const MAX_TIMEOUT_SETTING: &str = "transaction.max.timeout.ms";

/// An exactly-once sink at its start: check `transaction_timeout_ms`
/// against the brokers' `transaction.max.timeout.ms` where they report it
/// (DescribeConfigs), so a timeout the brokers would refuse fails the job
/// now and names both values, not at its first commit. A broker that
/// does not answer DescribeConfigs (librdkafka's mock cluster, tansu, which
/// reports no settings) leaves the check to `init_transactions`, which
/// refuses such a timeout too.
pub fn check_transaction_timeout(spec: &SinkSpec) -> Result<(), ConnectorError> {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    let (name, timeout) = (spec.name.as_str(), timeout_of(spec));
    let brokers = spec.brokers.clone().unwrap_or_default();
    let wanted = spec.transaction_timeout_ms.unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client_config(&brokers, spec.properties.as_ref(), timeout)
        .create()
        .map_err(|e| failed(name, format!("creating a Kafka admin client for {brokers}: {e}")))?;
    let md = admin.inner().fetch_metadata(None, timeout).map_err(|e| {
        failed(
            name,
            format!("cannot reach Kafka at {brokers} within {} ms: {e}", timeout.as_millis()),
        )
    })?;
    let resources: Vec<ResourceSpecifier> = md.brokers().iter().map(|b| ResourceSpecifier::Broker(b.id())).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(name, format!("starting a runtime for the Kafka admin client: {e}")))?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let answers = match runtime.block_on(admin.describe_configs(&resources, &options)) {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(
                sink = name,
                "the brokers did not describe their settings ({e}); init_transactions checks the transaction timeout"
            );
            return Ok(());
        }
    };
    for answer in answers.into_iter().flatten() {
        let max = answer.get(MAX_TIMEOUT_SETTING).and_then(|e| e.value.clone());
        timeout_fits(wanted, max.as_deref()).map_err(|m| failed(name, m))?;
    }
    Ok(())
}

/// Whether a transaction timeout of `wanted` ms fits under a broker's
/// reported `transaction.max.timeout.ms` (none reported: yes).
fn timeout_fits(wanted: u64, max: Option<&str>) -> Result<(), String> {
    match max.map(|m| m.trim().parse::<u64>()) {
        Some(Ok(max)) if wanted > max => Err(format!(
            "`transaction_timeout_ms` {wanted} is longer than the broker allows ({MAX_TIMEOUT_SETTING} = {max}); \
             lower it or raise the broker's setting"
        )),
        _ => Ok(()),
    }
}

/// A spool line: `<key hex or ->\t<timestamp or ->\t<value hex>`, so any
/// bytes survive the spool exactly.
pub fn encode_spool(format: SinkFormat, batch: &RecordBatch, out: &mut Vec<u8>) {
    let mut envelope = Vec::new();
    for r in batch.records() {
        match r.key {
            Some(k) => out.extend_from_slice(hex::encode(k).as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b'\t');
        match r.timestamp {
            Some(t) => out.extend_from_slice(t.to_string().as_bytes()),
            None => out.push(b'-'),
        }
        out.push(b'\t');
        let value = match format {
            SinkFormat::Value => r.value,
            SinkFormat::Envelope => {
                envelope.clear();
                format_record(SinkFormat::Envelope, r.key, r.value, r.timestamp, &mut envelope);
                &envelope
            }
        };
        out.extend_from_slice(hex::encode(value).as_bytes());
        out.push(b'\n');
    }
}

type SpoolRecord = (Option<Vec<u8>>, Option<i64>, Vec<u8>);

fn decode_spool_line(line: &[u8]) -> Option<SpoolRecord> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split('\t');
    let (k, t, v) = (parts.next()?, parts.next()?, parts.next()?);
    let key = if k == "-" { None } else { Some(hex::decode(k).ok()?) };
    let ts = if t == "-" { None } else { Some(t.parse().ok()?) };
    Some((key, ts, hex::decode(v).ok()?))
}

/// The order of a spool file `part-<w>-<n>[-end]` among its writer's:
/// `2n`, or `2n + 1` for the file sealed at the end of input.
fn checkpoint_of(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("part-")?;
    let (_, n) = rest.split_once('-')?;
    let end = n.ends_with("-end");
    let n: i64 = n.trim_end_matches("-end").parse().ok()?;
    n.checked_mul(2)?.checked_add(i64::from(end))
}

/// The exactly-once publisher: each spool file in one transaction with its
/// marker (see the module comment).
pub fn publish_transactions(spec: &SinkSpec, files: &[(String, PathBuf)]) -> Result<(), ConnectorError> {
    let name = spec.name.as_str();
    let topic = spec.topic.clone().unwrap_or_default();
    let prefix = spec.transaction_prefix.clone().unwrap_or_default();
    let brokers = spec.brokers.clone().unwrap_or_default();
    let txn_timeout = spec.transaction_timeout_ms.unwrap_or(DEFAULT_TRANSACTION_TIMEOUT_MS);
    let mut by_writer: BTreeMap<u32, Vec<&(String, PathBuf)>> = BTreeMap::new();
    for f in files {
        let w = super::file_sink::writer_of(&f.0).ok_or_else(|| failed(name, format!("spool file `{}` names no writer", f.0)))?;
        by_writer.entry(w).or_default().push(f);
    }
    for (writer, files) in by_writer {
        let id = format!("{prefix}-{writer}");
        let run = super::spool::run_of(&super::spool::spool(spec), writer)?;
        let key = format!("{brokers}|{id}|{run}");
        let cache = TRANSACTIONAL.get_or_init(Default::default);
        let cached = cache.lock().ok().and_then(|mut c| c.remove(&key));
        let mut t = match cached {
            Some(t) => t,
            None => Transactional::start(spec, &id, &format!("{prefix}-{run}-{writer}"), &topic, txn_timeout)?,
        };
        // On success the producer is kept for the next checkpoint; after a
        // failure it is dropped (a fenced or failed producer is done).
        publish_writer(spec, &id, &format!("{prefix}-{run}"), &topic, files, &mut t)?;
        if let Ok(mut c) = cache.lock() {
            c.insert(key, t);
        }
    }
    Ok(())
}

/// The transactional producers of this process, by brokers and
/// transactional id, kept between checkpoints (`init_transactions` costs a
/// round trip to the coordinator).
static TRANSACTIONAL: std::sync::OnceLock<Mutex<BTreeMap<String, Transactional>>> = std::sync::OnceLock::new();

/// One writer's transactional producer, the consumer that reads and writes
/// its marker, and the marker.
struct Transactional {
    producer: ThreadedProducer<Deliveries>,
    marker_reader: BaseConsumer,
    metadata: rdkafka::consumer::ConsumerGroupMetadata,
    marker: i64,
}

impl Transactional {
    /// `init_transactions` (fencing older producers of `id`, aborting their
    /// open transaction) and read the marker of `group`.
    fn start(spec: &SinkSpec, id: &str, group: &str, topic: &str, txn_timeout: u64) -> Result<Self, ConnectorError> {
        let (name, brokers, timeout) = (spec.name.as_str(), spec.brokers.clone().unwrap_or_default(), timeout_of(spec));
        let kafka = |what: &str, e: KafkaError| failed(name, format!("{what} (transactional id `{id}`, {brokers}): {e}"));
        let producer = producer(
            spec,
            &[
                ("transactional.id", id.to_owned()),
                ("transaction.timeout.ms", txn_timeout.to_string()),
            ],
        )?;
        producer
            .init_transactions(timeout)
            .map_err(|e| kafka("initialising transactions", e))?;
        let mut c = client_config(&brokers, spec.properties.as_ref(), timeout);
        c.set("group.id", group).set("enable.auto.commit", "false");
        let marker_reader: BaseConsumer = c.create().map_err(|e| failed(name, format!("creating a Kafka consumer: {e}")))?;
        let metadata = marker_reader
            .group_metadata()
            .ok_or_else(|| failed(name, "no consumer group metadata".into()))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let marker = match marker_reader
            .committed_offsets(tpl, timeout)
            .map_err(|e| kafka("reading the commit marker", e))?
            .find_partition(topic, 0)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        Ok(Transactional {
            producer,
            marker_reader,
            metadata,
            marker,
        })
    }
}

/// Publish one writer's spool `files`, in checkpoint order, each in a
/// transaction with its marker.
fn publish_writer(
    spec: &SinkSpec,
    id: &str,
    txn_prefix: &str,
    topic: &str,
    mut files: Vec<&(String, PathBuf)>,
    t: &mut Transactional,
) -> Result<(), ConnectorError> {
    let (name, brokers, timeout) = (spec.name.as_str(), spec.brokers.clone().unwrap_or_default(), timeout_of(spec));
    let kafka = |what: &str, e: KafkaError| failed(name, format!("{what} (transactional id `{id}`, {brokers}): {e}"));
    let p = &t.producer;
    files.sort_by_key(|(n, _)| checkpoint_of(n));
    for (part, path) in files {
        let n = checkpoint_of(part).ok_or_else(|| failed(name, format!("spool file `{part}` names no checkpoint")))?;
        if n < t.marker {
            // Its transaction committed before a crash.
            std::fs::remove_file(path).map_err(|source| ConnectorError::Io {
                path: path.clone(),
                source,
            })?;
            continue;
        }
        let text = std::fs::read(path).map_err(|source| ConnectorError::Io {
            path: path.clone(),
            source,
        })?;
        p.begin_transaction().map_err(|e| kafka("beginning a transaction", e))?;
        let txn = format!("{txn_prefix}-{part}");
        for (i, line) in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
            let (key, ts, value) =
                decode_spool_line(line).ok_or_else(|| failed(name, format!("spool file {} has a damaged line", path.display())))?;
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "sluice-txn",
                    value: Some(txn.as_bytes()),
                })
                .insert(Header {
                    key: "sluice-seq",
                    value: Some(i.to_string().as_bytes()),
                });
            send(spec, p, topic, key.as_deref(), &value, ts, Some(headers))?;
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(topic, 0, Offset::Offset(n + 1))
            .map_err(|e| kafka("the commit marker", e))?;
        p.send_offsets_to_transaction(&offsets, &t.metadata, timeout)
            .map_err(|e| kafka("adding the commit marker to the transaction", e))?;
        // Delivered first, so the commit's own flush finds nothing to wait for.
        if !wait_delivered(p, timeout) {
            return Err(failed(
                name,
                format!("not every record of `{part}` reached `{topic}` within {} ms", timeout.as_millis()),
            ));
        }
        p.commit_transaction(timeout).map_err(|e| kafka("committing a transaction", e))?;
        t.marker = n + 1;
        // The same marker outside the transaction: brokers that keep
        // transactional offsets have it already; librdkafka's mock
        // cluster keeps only these.
        if let Err(e) = t.marker_reader.commit(&offsets, CommitMode::Sync) {
            tracing::warn!(sink = name, "committing the marker of `{part}`: {e}");
        }
        delivery_error(spec, p.context())?;
        std::fs::remove_file(path).map_err(|source| ConnectorError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_guest::batch::BatchWriter;

    #[test]
    fn spool_lines_keep_any_bytes() {
        let mut w = BatchWriter::new();
        w.push(Some(b"k\t\n\xff"), b"v\n\x00", Some(-5));
        w.push(None, b"", None);
        let batch = RecordBatch {
            len: w.len(),
            bytes: w.finish(),
        };
        let mut out = Vec::new();
        encode_spool(SinkFormat::Value, &batch, &mut out);
        let lines: Vec<SpoolRecord> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| decode_spool_line(l).unwrap())
            .collect();
        assert_eq!(
            lines,
            vec![
                (Some(b"k\t\n\xff".to_vec()), Some(-5), b"v\n\x00".to_vec()),
                (None, None, Vec::new())
            ]
        );
        assert_eq!(checkpoint_of("part-3-00000012"), Some(24));
        assert_eq!(checkpoint_of("part-3-00000012-end"), Some(25));
    }

    #[test]
    fn the_transaction_timeout_must_fit_under_the_brokers_maximum() {
        assert_eq!(timeout_fits(60_000, None), Ok(()));
        assert_eq!(timeout_fits(60_000, Some("900000")), Ok(()));
        assert_eq!(timeout_fits(60_000, Some("60000")), Ok(()));
        let e = timeout_fits(60_000, Some("30000")).unwrap_err();
        assert!(e.contains("60000") && e.contains("transaction.max.timeout.ms = 30000"), "{e}");
        assert_eq!(timeout_fits(60_000, Some("junk")), Ok(()));
    }
}
