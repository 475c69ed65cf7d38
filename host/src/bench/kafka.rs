//! `sluice bench kafka`: a Kafka source into a discard sink against a
//! tansu broker this benchmark starts (memory storage, on a free port),
//! beside a plain rdkafka consumer loop over the same topic in the same run.
//!
//! ```text
//! bench=kafka events=N events_per_cpu_s=X native_events_per_cpu_s=Y ratio=X/Y … peak_rss_mb=Z
//! ```
//!
//! Both sides are measured in CPU time of this whole process (librdkafka's
//! threads included; the broker's own CPU is not). tansu is found as the
//! tests find it: `target/tools/tansu` (scripts/services-setup links it),
//! `SLUICE_TANSU`, then `PATH`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::{peak_rss_mb, process_cpu_seconds};
use crate::wasm::WasmEngine;

/// The broker, stopped by its pid on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tansu() -> PathBuf {
    if let Some(p) = std::env::var_os("SLUICE_TANSU") {
        return PathBuf::from(p);
    }
    let linked = PathBuf::from("target/tools/tansu");
    if linked.exists() { linked } else { PathBuf::from("tansu") }
}

fn start_broker() -> anyhow::Result<(Broker, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let bin = tansu();
    let child = Command::new(&bin)
        .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--silent"])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (scripts/services-setup links tansu at target/tools/tansu)",
                bin.display()
            )
        })?;
    let broker = Broker(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("tansu did not listen on 127.0.0.1:{port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((broker, format!("127.0.0.1:{port}")))
}

/// Create the topic (one partition) and fill it with `events` 100-byte
/// records; the last in a batch of its own (tansu reports the high
/// watermark as the last batch's base offset + 1).
fn fill(brokers: &str, events: u64) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    for r in rt.block_on(admin.create_topics(
        &[NewTopic::new("bench", 1, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
    ))? {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .create()?;
    let value = [b'x'; 100];
    let send = |i: u64| -> anyhow::Result<()> {
        let key = format!("key-{}", i % 10_000);
        let mut r = BaseRecord::to("bench").partition(0).key(key.as_bytes()).payload(&value[..]);
        loop {
            match p.send(r) {
                Ok(()) => return Ok(()),
                Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), back)) => {
                    r = back;
                    p.poll(Duration::from_millis(5));
                }
                Err((e, _)) => bail!("producing the benchmark's records: {e}"),
            }
        }
    };
    for i in 0..events.saturating_sub(1) {
        send(i)?;
    }
    p.flush(Duration::from_secs(120))?;
    send(events.saturating_sub(1))?;
    p.flush(Duration::from_secs(30))?;
    Ok(())
}

/// The plain loop: assign partition 0 from the start and count `events`
/// records (touching each payload and key).
fn native(brokers: &str, events: u64) -> anyhow::Result<(f64, u64)> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "sluice-bench-native")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("bench", 0, Offset::Offset(0))?;
    let cpu = process_cpu_seconds();
    c.assign(&tpl)?;
    let (mut n, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    while n < events {
        if Instant::now() > deadline {
            bail!("the plain consumer read {n} of {events} records in 10 minutes");
        }
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m?;
            bytes += (m.payload().map_or(0, <[u8]>::len) + m.key().map_or(0, <[u8]>::len)) as u64;
            n += 1;
        }
    }
    Ok(((process_cpu_seconds() - cpu).max(1e-3), bytes))
}

/// Run the benchmark over `events` records.
pub fn run(engine: &std::sync::Arc<WasmEngine>, events: u64) -> anyhow::Result<String> {
    let (_broker, brokers) = start_broker()?;
    let fill_start = Instant::now();
    fill(&brokers, events)?;
    let fill_s = fill_start.elapsed().as_secs_f64();
    let dir = std::env::temp_dir().join(format!("sluice-bench-kafka-{}", std::process::id()));
    let toml = format!(
        r#"
name = "bench-kafka"
[[sources]]
name = "in"
kind = "kafka"
brokers = "{brokers}"
topic = "bench"
bounded = true
[[sinks]]
name = "out"
kind = "discard"
[[edges]]
from = "in"
to = "out"
"#
    );
    let graph = crate::job::JobGraph::build(crate::job::JobSpec::from_toml(&toml)?, &dir)?;
    let (cpu, wall) = (process_cpu_seconds(), Instant::now());
    let summary = crate::cluster::run_job(&graph, engine, crate::cluster::RunOptions::default())?.wait()?;
    let sluice_cpu = (process_cpu_seconds() - cpu).max(1e-3);
    let sluice_wall = wall.elapsed().as_secs_f64();
    let sluice_peak = peak_rss_mb();
    let _ = std::fs::remove_dir_all(&dir);
    let read = summary.metrics.iter().find(|m| m.name == "out").map_or(0, |m| m.records_in());
    if read != events {
        bail!("the Kafka source read {read} of {events} records");
    }
    let (native_cpu, _) = native(&brokers, events)?;
    let (x, y) = (events as f64 / sluice_cpu, events as f64 / native_cpu);
    Ok(format!(
        "bench=kafka events={events} events_per_cpu_s={x:.0} native_events_per_cpu_s={y:.0} ratio={:.3} events_per_wall_s={:.0} \
         fill_s={fill_s:.1} peak_rss_mb={sluice_peak:.1}",
        x / y,
        events as f64 / sluice_wall
    ))
}
