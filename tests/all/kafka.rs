//! The Kafka connectors against a real Kafka-protocol broker (tansu 0.6,
//! started per test on a free port; scripts/services-setup links it at
//! target/tools/tansu) and, for the exactly-once sink, librdkafka's own
//! in-process mock cluster (tansu has no transactions): SIGKILL loops with
//! exact output, a rescale through a savepoint, per-partition watermarks,
//! and the errors of bad settings.

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::checkpoints::{committed, kill_loop, start, stop_with_savepoint_after, word_counts, wordcount_pipeline};
use crate::harness::{S3, free_port, lit, root, run_toml, temp_dir, tool, wait_for_port};
use crate::postgres::{Pg, expected_updates};

/// A tansu broker of one test (memory storage), killed by its pid on drop.
pub(crate) struct Tansu {
    port: u16,
    child: Child,
}

impl Tansu {
    /// A broker keeping its data in memory.
    pub(crate) fn start() -> Tansu {
        Self::spawn(free_port(), None)
    }

    /// A broker on `port` (a fresh one if 0) keeping its data in the bucket
    /// `tansu` of `s3`, so it can be stopped and started again.
    fn start_on_s3(port: u16, s3: &S3) -> Tansu {
        Self::spawn(if port == 0 { free_port() } else { port }, Some(s3.port))
    }

    fn spawn(port: u16, s3: Option<u16>) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let mut cmd = Command::new(tool("tansu"));
        cmd.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--silent"]);
        match s3 {
            None => cmd.args(["--storage-engine", "memory://tansu/"]),
            Some(s3) => cmd
                .args(["--storage-engine", "s3://tansu/"])
                .env("AWS_ACCESS_KEY_ID", "sluice")
                .env("AWS_SECRET_ACCESS_KEY", "sluice-secret")
                .env("AWS_ENDPOINT", format!("http://127.0.0.1:{s3}"))
                .env("AWS_ALLOW_HTTP", "true")
                .env("AWS_DEFAULT_REGION", "us-east-1"),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu: scripts/services-setup links it under target/tools");
        wait_for_port(port, "tansu");
        Tansu { port, child }
    }

    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record to produce: partition, key, value, timestamp.
pub(crate) type Produced = (i32, Option<String>, Vec<u8>, Option<i64>);

/// Create `topic` with `partitions` on `brokers`.
pub(crate) fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let results = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap();
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Produce `records` (partition, key, value, timestamp) and wait for every
/// acknowledgement. One record per batch, for two faults of tansu 0.6: it
/// reports a partition's high watermark as its last batch's base offset + 1
/// (and a bounded source ends at the high watermark), and a fetch from an
/// offset inside a batch returns the *next* batch, so a restore from such
/// an offset would skip records. Real Kafka brokers do neither.
pub(crate) fn produce(brokers: &str, topic: &str, records: &[Produced]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .unwrap();
    for (partition, key, value, ts) in records {
        let mut r = BaseRecord::to(topic).partition(*partition).payload(value);
        if let Some(k) = key {
            r = r.key(k.as_bytes());
        }
        if let Some(t) = ts {
            r = r.timestamp(*t);
        }
        loop {
            match p.send(r) {
                Ok(()) => break,
                Err((_, back)) => {
                    r = back;
                    p.poll(Duration::from_millis(10));
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).unwrap();
}

/// A record read back: its `sluice-txn` and `sluice-seq` headers, if any, and its value.
type Record = (Option<(String, String)>, Vec<u8>);

/// The records of `topic` (all partitions), read with `isolation`
/// until `count` have come and then half a second more (so extra records
/// show). Not by end-of-partition events: tansu reports a partition's high
/// watermark as the last *batch*'s offset + 1.
fn read_all(brokers: &str, topic: &str, partitions: i32, isolation: &str, count: usize) -> Vec<Record> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-test-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_until: Option<Instant> = None;
    while quiet_until.is_none_or(|q| Instant::now() < q) && Instant::now() < deadline {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let header = |name: &str| {
                    m.headers().and_then(|h| {
                        (0..h.count())
                            .map(|i| h.get(i))
                            .find(|x| x.key == name)
                            .and_then(|x| x.value)
                            .map(|v| String::from_utf8_lossy(v).into_owned())
                    })
                };
                let txn = header("sluice-txn").zip(header("sluice-seq"));
                out.push((txn, m.payload().unwrap_or_default().to_vec()));
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
        if out.len() >= count && quiet_until.is_none() {
            quiet_until = Some(Instant::now() + Duration::from_millis(500));
        }
    }
    out
}

/// The example text's lines spread over `partitions` partitions, in order
/// within each.
fn lines(partitions: i32) -> Vec<Produced> {
    std::fs::read_to_string(root().join("examples/data/wordcount.txt"))
        .unwrap()
        .lines()
        .enumerate()
        .map(|(i, l)| ((i as i32) % partitions, None, l.as_bytes().to_vec(), None))
        .collect()
}

fn kafka_source(brokers: &str, parallelism: u32, rate: u64) -> String {
    format!(
        "kind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"lines\"\nbounded = true\nparallelism = {parallelism}\n\
         records_per_second = {rate}"
    )
}

#[test]
fn kafka_source_into_postgres_exactly_once_under_a_sigkill_loop() {
    let kafka = Tansu::start();
    create_topic(&kafka.brokers(), "lines", 3);
    produce(&kafka.brokers(), "lines", &lines(3));
    let pg = Pg::start("kafka-pg", 16);
    let toml = wordcount_pipeline(
        "kafka-pg",
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
        "",
        &kafka_source(&kafka.brokers(), 2, 800),
        2,
        &format!(
            "kind = \"postgres\"\nurl = \"{}\"\ntable = \"counts\"\nparallelism = 2\ndelivery = \"exactly-once\"",
            pg.url()
        ),
    );
    crate::postgres::pg_kill_loop("kafka-pg-kill", &pg, &toml);
}

#[test]
fn kafka_source_rescaled_through_a_savepoint_from_2_to_3_subtasks_continues_exactly() {
    let kafka = Tansu::start();
    create_topic(&kafka.brokers(), "lines", 5);
    produce(&kafka.brokers(), "lines", &lines(5));
    let job = |par: u32, rate: u64| {
        wordcount_pipeline(
            "kafka-rescale",
            r#"{ strategy = "none" }"#,
            "",
            &kafka_source(&kafka.brokers(), par, rate),
            2,
            "kind = \"file\"\npath = \"out\"\nparallelism = 2",
        )
    };
    let dir = temp_dir("kafka-rescale");
    let sp = stop_with_savepoint_after(&job(2, 1000), &dir, 1500, Duration::from_secs(30));
    let partial = committed(&dir.join("out"));
    let expected = expected_updates();
    assert!(!partial.is_empty() && partial.len() < expected.len(), "{}", partial.len());
    start(&job(3, 1_000_000), &dir, Some(sp)).wait().unwrap();
    let lines = committed(&dir.join("out"));
    let got = word_counts(lines.iter().map(|l| l.as_bytes()));
    assert_eq!(got.len(), expected.len(), "updates after the rescale");
    assert!(got == expected, "the rescaled job's output differs from the independent count");
}

#[test]
fn per_partition_watermarks_keep_a_lagging_partitions_records_on_time() {
    let kafka = Tansu::start();
    create_topic(&kafka.brokers(), "events", 3);
    // Partition 0 runs ahead in event time (5 s to 10 s); partition 1 lags
    // (0 s to 5 s); partition 2 stays empty. Within each, time only grows.
    let mut records = Vec::new();
    for i in 0..500i64 {
        let ahead = 5000 + 10 * i;
        let behind = 10 * i;
        for (p, ts) in [(0, ahead), (1, behind)] {
            let user = format!("u{}", i % 3);
            let value = serde_json::json!({"user": user, "ts": ts}).to_string().into_bytes();
            records.push((p, Some(user), value, Some(ts)));
        }
    }
    // All of partition 0 first: a single watermark for the subtask would pass
    // partition 1's times before it is read, making its records late.
    records.sort_by_key(|r| r.0);
    produce(&kafka.brokers(), "events", &records);
    let toml = format!(
        r#"
name = "kafka-watermarks"
[[sources]]
name = "events"
kind = "kafka"
brokers = "{brokers}"
topic = "events"
bounded = true
format = "json"
key_field = "user"
timestamp_field = "ts"
watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 0, interval_ms = 0 }}
[[operators]]
name = "per-second"
kind = "window"
window = {{ assigner = "tumbling", size_ms = 1000, aggregate = "count", allowed_lateness_ms = 0 }}
[[sinks]]
name = "out"
kind = "file"
path = "out.jsonl"
[[sinks]]
name = "late"
kind = "file"
path = "late.jsonl"
[[edges]]
from = "events"
to = "per-second"
partition = "hash"
[[edges]]
from = "per-second"
to = "out"
[[edges]]
from = "per-second"
to = "late"
output = "late"
"#,
        brokers = kafka.brokers()
    );
    let dir = temp_dir("kafka-watermarks");
    run_toml(&toml, &dir).unwrap();
    // Flink's windows: every record in its [k s, k+1 s) window per user.
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (_, user, _, ts) in &records {
        *expected.entry((user.clone().unwrap(), ts.unwrap() / 1000 * 1000)).or_default() += 1;
    }
    let mut got: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for l in std::fs::read_to_string(dir.join("out.jsonl")).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let key = (v["key"].as_str().unwrap().to_owned(), v["start"].as_i64().unwrap());
        assert!(got.insert(key, v["count"].as_i64().unwrap()).is_none(), "a window fired twice: {l}");
    }
    let late = std::fs::read_to_string(dir.join("late.jsonl")).unwrap();
    assert_eq!(late.lines().count(), 0, "late records, the first: {:?}", late.lines().next());
    assert_eq!(got, expected);
}

/// The keyed word count from the example text into the topic `counts` of
/// `brokers`, exactly once, at `rate` lines per second.
fn eo_sink_job(brokers: &str, rate: u64) -> String {
    wordcount_pipeline(
        "kafka-eo",
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
        "",
        &format!(
            "kind = \"file\"\npath = {}\nrecords_per_second = {rate}",
            lit(&root().join("examples/data/wordcount.txt"))
        ),
        2,
        &format!("kind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"counts\"\nparallelism = 2\ndelivery = \"exactly-once\""),
    )
}

/// Check that `counts` on the mock cluster holds the whole count `runs`
/// times over, each record once.
fn check_mock_counts(brokers: &str, runs: usize) {
    let expected = expected_updates();
    let records = read_all(brokers, "counts", 2, "read_committed", expected.len() * runs);
    // librdkafka's mock cluster runs the transaction protocol but keeps no
    // isolation: it sends no aborted-transaction list and its last stable
    // offset is the end, so a transaction a kill cut short stays visible to
    // read_committed there (a real broker hides it). Every record names its
    // transaction and place in it: the same (transaction, place) seen twice
    // must be the same record, and once per place the output must be exact.
    let mut unique: BTreeMap<(String, String), Vec<u8>> = BTreeMap::new();
    for (txn, value) in &records {
        let txn = txn.clone().expect("a record without its sluice-txn header");
        if let Some(before) = unique.insert(txn.clone(), value.clone()) {
            assert_eq!(before, *value, "transaction {txn:?} sent again with other records");
        }
    }
    let got = word_counts(unique.values().map(|v| &v[..]));
    let mut want: Vec<(String, i64)> = Vec::new();
    for _ in 0..runs {
        want.extend(expected.iter().cloned());
    }
    want.sort();
    assert_eq!(got.len(), want.len(), "committed records");
    assert!(got == want, "the committed records differ from the independent count");
}

#[test]
fn kafka_exactly_once_sink_on_the_mock_cluster_under_a_sigkill_loop() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("counts", 2, 1).unwrap();
    let rounds = std::cell::Cell::new(0);
    // Each round of the loop is a fresh run in a new directory (its
    // checkpoint ids start from 1 again) and writes the whole count once more.
    kill_loop(
        "kafka-eo-kill",
        &eo_sink_job(&brokers, 700),
        10,
        || rounds.set(rounds.get() + 1),
        |_| check_mock_counts(&brokers, rounds.get()),
    );
}

#[test]
fn fresh_runs_of_one_kafka_exactly_once_job_each_write_everything() {
    // The same job (so the same transaction prefix) run twice from the
    // start, in new checkpoint directories: the second run's checkpoint ids
    // are the first's again, and must not be taken for them.
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("counts", 2, 1).unwrap();
    for run in 1..=2 {
        let summary = run_toml(&eo_sink_job(&brokers, 5000), &temp_dir("kafka-eo-fresh")).unwrap();
        assert!(summary.checkpoints >= 2, "run {run}: {} checkpoints", summary.checkpoints);
        check_mock_counts(&brokers, run);
    }
}

#[test]
fn kafka_at_least_once_sink_and_bad_settings() {
    let kafka = Tansu::start();
    create_topic(&kafka.brokers(), "in", 2);
    create_topic(&kafka.brokers(), "copy", 1);
    let records: Vec<_> = (0..200i64)
        .map(|i| (i as i32 % 2, Some(format!("k{i}")), format!("v{i}").into_bytes(), Some(1000 + i)))
        .collect();
    produce(&kafka.brokers(), "in", &records);
    let toml = format!(
        r#"
name = "kafka-copy"
[[sources]]
name = "in"
kind = "kafka"
brokers = "{b}"
topic = "in"
bounded = true
group = "copy-group"
[[sinks]]
name = "out"
kind = "kafka"
brokers = "{b}"
topic = "copy"
delivery = "at-least-once"
[[edges]]
from = "in"
to = "out"
"#,
        b = kafka.brokers()
    );
    // Throttled, so the source's lag shows while it runs.
    let slow = toml.replace(
        "group = \"copy-group\"",
        "group = \"copy-group\"\nrecords_per_second = 50\npartition_discovery_ms = 200",
    );
    let handle = start(&slow, &temp_dir("kafka-copy"), None);
    let source = handle.metrics.iter().find(|m| m.name == "in").unwrap().clone();
    let t = Instant::now();
    let lag = loop {
        if let Some(l) = source.lag().filter(|l| *l > 0) {
            break l;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no lag reported");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(lag <= 200, "lag {lag} of 200 records");
    let summary = handle.wait().unwrap();
    let sink = summary.metrics.iter().find(|m| m.name == "out").unwrap();
    assert_eq!(source.bytes_out(), sink.bytes_in());
    assert!(sink.bytes_in() >= 200 * 2, "{}", sink.bytes_in());
    let mut got: Vec<Vec<u8>> = read_all(&kafka.brokers(), "copy", 1, "read_uncommitted", records.len())
        .into_iter()
        .map(|r| r.1)
        .collect();
    got.sort();
    let mut want: Vec<Vec<u8>> = records.iter().map(|r| r.2.clone()).collect();
    want.sort();
    assert_eq!(got, want, "the copied values");

    let run = |t: &str| run_toml(t, &temp_dir("kafka-errors")).unwrap_err().to_string();
    let b = kafka.brokers();
    for (from, to, message) in [
        (
            "topic = \"in\"".to_owned(),
            "topic = \"nope\"".to_owned(),
            "topic `nope` does not exist on 127.0.0.1:".to_owned(),
        ),
        (
            format!("brokers = \"{b}\"\ntopic = \"in\""),
            format!("brokers = \"127.0.0.1:{}\"\ntopic = \"in\"\nconnect_timeout_ms = 1000", free_port()),
            "cannot reach Kafka at 127.0.0.1:".to_owned(),
        ),
        (
            format!("brokers = \"{b}\"\ntopic = \"in\""),
            "topic = \"in\"".to_owned(),
            "a kafka source needs `brokers`".to_owned(),
        ),
        (
            "topic = \"in\"".to_owned(),
            "topic = \"a b\"".to_owned(),
            "is not a Kafka topic name".to_owned(),
        ),
        (
            "group = \"copy-group\"".to_owned(),
            "properties = { \"group.id\" = \"x\" }".to_owned(),
            "`properties` may not set `group.id`".to_owned(),
        ),
        (
            "group = \"copy-group\"".to_owned(),
            "start = \"latest\"".to_owned(),
            "reads nothing".to_owned(),
        ),
        (
            "group = \"copy-group\"".to_owned(),
            "key_field = \"k\"".to_owned(),
            "need format = \"json\"".to_owned(),
        ),
        (
            "topic = \"copy\"".to_owned(),
            "topic = \"absent\"".to_owned(),
            "topic `absent` does not exist".to_owned(),
        ),
        (
            "delivery = \"at-least-once\"".to_owned(),
            "delivery = \"exactly-once\"".to_owned(),
            "the job has no `[checkpoints]`".to_owned(),
        ),
        (
            "delivery = \"at-least-once\"".to_owned(),
            "delivery = \"upsert\"".to_owned(),
            "upsert is for postgres".to_owned(),
        ),
        (
            "group = \"copy-group\"".to_owned(),
            "group = \"copy-group\"\nstream = \"s\"".to_owned(),
            "a kafka source takes `brokers`".to_owned(),
        ),
    ] {
        assert!(toml.contains(&from), "{from}");
        let err = run(&toml.replacen(&from, &to, 1));
        assert!(err.contains(&message), "{message:?} not in: {err}");
    }
    // A password in `properties` is never shown.
    let spec = sluice::job::JobSpec::from_toml(&toml.replace(
        "group = \"copy-group\"",
        "properties = { \"sasl.password\" = \"hunter2\", \"sasl.username\" = \"me\" }",
    ))
    .unwrap();
    let shown = serde_json::to_string(&spec.redacted()).unwrap();
    assert!(!shown.contains("hunter2") && shown.contains("\"me\""), "{shown}");
}

#[test]
fn a_kafka_broker_stopped_mid_run_restarts_the_job_which_completes_once_it_is_back() {
    let s3 = S3::start("broker-stop");
    let kafka = Tansu::start_on_s3(0, &s3);
    let port = kafka.port;
    create_topic(&kafka.brokers(), "lines", 2);
    let text = std::fs::read_to_string(root().join("examples/data/wordcount.txt")).unwrap();
    // tansu over S3 serves about one batch (here: one record) per S3 read,
    // some tens a second: a few hundred lines take seconds.
    let head: Vec<&str> = text.lines().take(300).collect();
    let records: Vec<Produced> = head
        .iter()
        .enumerate()
        .map(|(i, l)| ((i as i32) % 2, None, l.as_bytes().to_vec(), None))
        .collect();
    produce(&kafka.brokers(), "lines", &records);
    let toml = wordcount_pipeline(
        "kafka-stop",
        r#"{ strategy = "fixed-delay", attempts = 100, delay_ms = 200 }"#,
        "",
        &format!(
            "{}\nconnect_timeout_ms = 2000\npartition_discovery_ms = 0",
            kafka_source(&kafka.brokers(), 1, 50)
        ),
        2,
        "kind = \"file\"\npath = \"out\"\nparallelism = 2",
    );
    let dir = temp_dir("kafka-stop");
    let handle = start(&toml, &dir, None);
    // tansu over S3 answers the job's first fetch after some seconds (it
    // reads every batch from S3 first): stop the broker while that fetch is
    // in flight.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    // Stop the broker for three seconds, then start it again on the same
    // port over the same bucket.
    drop(kafka);
    std::thread::sleep(Duration::from_secs(3));
    let _kafka = Tansu::start_on_s3(port, &s3);
    let summary = handle.wait().unwrap();
    eprintln!(
        "broker stop: the job finished {:?} after the stop, restarts={}",
        t.elapsed(),
        summary.restarts
    );
    assert!(summary.restarts >= 1, "the job did not restart while the broker was down");
    // The keyed count of those lines, computed without the engine.
    let mut expected = Vec::new();
    for (w, n) in crate::wordcount::expected_counts(&head.join("\n")) {
        expected.extend((1..=n as i64).map(|i| (w.clone(), i)));
    }
    expected.sort();
    let got = word_counts(committed(&dir.join("out")).iter().map(|l| l.as_bytes()));
    assert_eq!(got.len(), expected.len(), "updates");
    assert!(got == expected, "the output differs from the independent count");
}

#[test]
fn partitions_added_while_a_kafka_source_runs_are_read_from_their_start() {
    let s3 = S3::start("discovery");
    let kafka = Tansu::start_on_s3(0, &s3);
    create_topic(&kafka.brokers(), "grow", 1);
    let line = |i: usize| format!("w{} v{}", i % 7, i % 5);
    let first: Vec<Produced> = (0..30).map(|i| (0, None, line(i).into_bytes(), None)).collect();
    produce(&kafka.brokers(), "grow", &first);
    let toml = wordcount_pipeline(
        "kafka-discovery",
        r#"{ strategy = "none" }"#,
        "",
        &format!(
            "kind = \"kafka\"\nbrokers = \"{}\"\ntopic = \"grow\"\nparallelism = 2\npartition_discovery_ms = 200",
            kafka.brokers()
        ),
        2,
        "kind = \"file\"\npath = \"out\"\nparallelism = 2",
    );
    // The updates of the keyed count of `lines`, computed here.
    let updates = |lines: &[String]| {
        let mut totals: BTreeMap<String, i64> = BTreeMap::new();
        for w in lines.iter().flat_map(|l| l.split_whitespace()) {
            *totals.entry(w.to_owned()).or_default() += 1;
        }
        let mut out: Vec<(String, i64)> = totals.into_iter().flat_map(|(w, n)| (1..=n).map(move |i| (w.clone(), i))).collect();
        out.sort();
        out
    };
    let dir = temp_dir("kafka-discovery");
    let handle = start(&toml, &dir, None);
    let wait_for = |want: &[(String, i64)], what: &str| {
        let t = Instant::now();
        loop {
            let got = word_counts(committed(&dir.join("out")).iter().map(|l| l.as_bytes()));
            if got.len() >= want.len() {
                assert!(got == want, "{what}: the output differs from the independent count");
                return;
            }
            assert!(!handle.is_finished(), "{what}: the job ended");
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{what}: {} of {} updates",
                got.len(),
                want.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut all: Vec<String> = (0..30).map(line).collect();
    wait_for(&updates(&all), "partition 0");

    // tansu 0.6 has no CreatePartitions: grow the topic to 4 partitions in
    // its cluster metadata, which it keeps in the bucket (s3s-fs: a plain
    // file, and beside it the object's ETag; tansu reads the object again
    // when the ETag changed).
    let meta = s3.dir.join("tansu/clusters/tansu_cluster/meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    assert!(text.contains("\"num_partitions\":1"), "{text}");
    std::fs::write(&meta, text.replace("\"num_partitions\":1", "\"num_partitions\":4")).unwrap();
    // s3s-fs's name for the ETag of `tansu/clusters/tansu_cluster/meta.json`:
    // bucket and key in URL-safe base64.
    let etag = s3
        .dir
        .join(".bucket-dGFuc3U.object-Y2x1c3RlcnMvdGFuc3VfY2x1c3Rlci9tZXRhLmpzb24.internal.json");
    assert!(etag.exists(), "s3s-fs keeps ETags elsewhere now");
    std::fs::write(&etag, r#"{"e_tag":"5e1ce0000000000000000000000000a1"}"#).unwrap();
    // tansu reads its metadata again after a few seconds.
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", kafka.brokers()).create().unwrap();
    let t = Instant::now();
    while c.fetch_metadata(Some("grow"), Duration::from_secs(5)).unwrap().topics()[0]
        .partitions()
        .len()
        < 4
    {
        assert!(t.elapsed() < Duration::from_secs(30), "tansu did not take the new partitions");
        std::thread::sleep(Duration::from_millis(200));
    }
    let later: Vec<Produced> = (30..60).map(|i| (1 + (i % 3) as i32, None, line(i).into_bytes(), None)).collect();
    produce(&kafka.brokers(), "grow", &later);
    all.extend((30..60).map(line));
    wait_for(&updates(&all), "the new partitions");
    handle.cancel();
    let _ = handle.wait();
    let got = word_counts(committed(&dir.join("out")).iter().map(|l| l.as_bytes()));
    assert!(got == updates(&all), "after the cancel");
}

#[test]
fn kafka_subtasks_without_partitions_are_idle_and_hold_no_watermark_back() {
    // One partition, three source subtasks: two own nothing. Were they not
    // idle, the windows after them would wait for their watermarks forever
    // (the job is unbounded), as in Flink before readers without splits
    // were marked idle.
    let kafka = Tansu::start();
    create_topic(&kafka.brokers(), "solo", 1);
    let records: Vec<Produced> = (0..300i64)
        .map(|i| {
            let (user, ts) = (format!("u{}", i % 4), 10 * i);
            let value = serde_json::json!({"user": user, "ts": ts}).to_string().into_bytes();
            (0, Some(user), value, Some(ts))
        })
        .collect();
    produce(&kafka.brokers(), "solo", &records);
    let toml = format!(
        r#"
name = "kafka-idle"
[[sources]]
name = "events"
kind = "kafka"
brokers = "{brokers}"
topic = "solo"
parallelism = 3
format = "json"
key_field = "user"
timestamp_field = "ts"
watermarks = {{ strategy = "bounded", max_out_of_orderness_ms = 0, interval_ms = 0 }}
[[operators]]
name = "per-second"
kind = "window"
window = {{ assigner = "tumbling", size_ms = 1000, aggregate = "count" }}
[[sinks]]
name = "out"
kind = "file"
path = "out.jsonl"
[[edges]]
from = "events"
to = "per-second"
partition = "hash"
[[edges]]
from = "per-second"
to = "out"
"#,
        brokers = kafka.brokers()
    );
    // The windows the watermark has passed (it stops at 2989: the last
    // record's time minus 1): [0 s, 1 s) and [1 s, 2 s) per user.
    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for (_, user, _, ts) in &records {
        let start = ts.unwrap() / 1000 * 1000;
        if start < 2000 {
            *expected.entry((user.clone().unwrap(), start)).or_default() += 1;
        }
    }
    let dir = temp_dir("kafka-idle");
    let handle = start(&toml, &dir, None);
    let read = || -> BTreeMap<(String, i64), i64> {
        std::fs::read_to_string(dir.join("out.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    (v["key"].as_str().unwrap().to_owned(), v["start"].as_i64().unwrap()),
                    v["count"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    let t = Instant::now();
    while read().len() < expected.len() {
        assert!(!handle.is_finished(), "the job ended");
        assert!(t.elapsed() < Duration::from_secs(30), "windows fired: {:?}", read());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing past the watermark fired.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read(), expected);
    handle.cancel();
    let _ = handle.wait();
}
