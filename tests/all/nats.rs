//! The NATS JetStream source against a real `nats-server -js` (Debian's),
//! started per test on free ports: exactly once into the transactional file
//! sink under a SIGKILL loop, a subject filter, and the errors of bad settings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::checkpoints::{committed, kill_loop, word_counts, wordcount_pipeline};
use crate::harness::{lit, root, run_toml, temp_dir};
use crate::postgres::expected_updates;

/// A `nats-server` of one test, killed by its pid on drop.
struct Nats {
    port: u16,
    child: Child,
    dir: PathBuf,
    runtime: tokio::runtime::Runtime,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Nats {
    fn start(name: &str) -> Nats {
        let dir = temp_dir(&format!("nats-{name}"));
        let (port, monitor) = (free_port(), free_port());
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor.to_string(), "-js", "-sd"])
            .arg(dir.join("js"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is not installed; scripts/test installs it (Debian's nats-server)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Nats { port, child, dir, runtime }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Create stream `stream` on `subjects.>` and publish `messages` (subject,
    /// payload), each acknowledged by JetStream.
    fn publish(&self, stream: &str, messages: &[(String, Vec<u8>)]) {
        self.publish_to(stream, Default::default(), messages)
    }

    /// [`Nats::publish`] into a stream with `retention` (created if missing).
    fn publish_to(&self, stream: &str, retention: async_nats::jetstream::stream::RetentionPolicy, messages: &[(String, Vec<u8>)]) {
        let url = self.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            js.get_or_create_stream(async_nats::jetstream::stream::Config {
                name: stream.to_owned(),
                subjects: vec![format!("{stream}.>")],
                retention,
                ..Default::default()
            })
            .await
            .unwrap();
            let mut acks = Vec::new();
            for (subject, payload) in messages {
                acks.push(js.publish(subject.clone(), payload.clone().into()).await.unwrap());
                if acks.len() >= 256 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        });
    }
}

impl Nats {
    /// Delete stream `stream` if it exists, and create it empty on `stream.>`.
    fn reset(&self, stream: &str) {
        let url = self.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let _ = js.delete_stream(stream).await;
        });
        self.publish(stream, &[]);
    }

    /// Every message payload of `stream`, in order.
    fn read(&self, stream: &str) -> Vec<Vec<u8>> {
        use tokio_stream::StreamExt;
        let url = self.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(stream).await.unwrap();
            let count = s.info().await.unwrap().state.messages as usize;
            let consumer = s
                .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
                .await
                .unwrap();
            let mut messages = consumer.messages().await.unwrap();
            let mut out = Vec::with_capacity(count);
            while out.len() < count {
                let m = tokio::time::timeout(Duration::from_secs(10), messages.next())
                    .await
                    .expect("reading the stream back")
                    .unwrap()
                    .unwrap();
                out.push(m.payload.to_vec());
            }
            out
        })
    }
}

impl Nats {
    /// Messages in `stream` now, and the ack floor (stream sequence) of its
    /// consumer `consumer`.
    fn state(&self, stream: &str, consumer: &str) -> (u64, u64) {
        let url = self.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let js = async_nats::jetstream::new(client);
            let mut s = js.get_stream(stream).await.unwrap();
            let messages = s.info().await.unwrap().state.messages;
            let floor = s.consumer_info(consumer).await.unwrap().ack_floor.stream_sequence;
            (messages, floor)
        })
    }

    fn delete_stream(&self, stream: &str) {
        let url = self.url();
        self.runtime.block_on(async {
            let client = async_nats::connect(url).await.unwrap();
            let _ = async_nats::jetstream::new(client).delete_stream(stream).await;
        });
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The keyed word count reading the lines from NATS into a file sink.
fn job(nats: &Nats, rate: u64) -> String {
    wordcount_pipeline(
        "nats-wc",
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
        "",
        &format!(
            "kind = \"nats\"\nurl = \"{}\"\nstream = \"lines\"\nbounded = true\nrecords_per_second = {rate}",
            nats.url()
        ),
        2,
        "kind = \"file\"\npath = \"out\"\nparallelism = 2",
    )
}

/// The committed `(word, count)` updates under `dir`, sorted.
fn updates(dir: &Path) -> Vec<(String, i64)> {
    word_counts(committed(dir).iter().map(|l| l.as_bytes()))
}

fn lines() -> Vec<(String, Vec<u8>)> {
    std::fs::read_to_string(root().join("examples/data/wordcount.txt"))
        .unwrap()
        .lines()
        .map(|l| ("lines.text".to_owned(), l.as_bytes().to_vec()))
        .collect()
}

#[test]
fn nats_source_under_a_sigkill_loop_loses_and_duplicates_nothing() {
    let nats = Nats::start("kill");
    nats.publish("lines", &lines());
    let expected = expected_updates();
    let toml = job(&nats, 1500);
    kill_loop(
        "nats-kill",
        &toml,
        10,
        || {},
        |dir| {
            let got = updates(&dir.join("out"));
            assert_eq!(got.len(), expected.len(), "updates");
            assert!(got == expected, "the output differs from the independent count");
        },
    );
}

#[test]
fn nats_source_filters_subjects_reads_json_fields_and_names_bad_settings() {
    let nats = Nats::start("filter");
    // Two subjects; the job reads one. JSON payloads give the key and the
    // event time.
    let mut messages = Vec::new();
    for i in 0..300i64 {
        let subject = if i % 3 == 0 { "lines.skip" } else { "lines.text" };
        let payload = serde_json::json!({"user": format!("u{}", i % 7), "ts": 1000 * i, "n": i});
        messages.push((subject.to_owned(), payload.to_string().into_bytes()));
    }
    nats.publish("lines", &messages);
    let toml = format!(
        r#"
name = "nats-json"
[[sources]]
name = "events"
kind = "nats"
url = "{url}"
stream = "lines"
subject = "lines.text"
bounded = true
format = "json"
key_field = "user"
timestamp_field = "ts"
[[sinks]]
name = "out"
kind = "file"
path = "out.jsonl"
format = "envelope"
[[edges]]
from = "events"
to = "out"
"#,
        url = nats.url()
    );
    let dir = temp_dir("nats-json");
    run_toml(&toml, &dir).unwrap();
    let got: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<i64> = (0..300).filter(|i| i % 3 != 0).collect();
    assert_eq!(got.iter().map(|v| v["value"]["n"].as_i64().unwrap()).collect::<Vec<_>>(), expected);
    for v in &got {
        let n = v["value"]["n"].as_i64().unwrap();
        assert_eq!(v["key"], format!("u{}", n % 7));
        assert_eq!(v["timestamp"], 1000 * n);
    }
    // A subject nothing matches: a bounded job ends at once, empty.
    let dir = temp_dir("nats-none");
    run_toml(&toml.replace("subject = \"lines.text\"", "subject = \"lines.none\""), &dir).unwrap();
    assert_eq!(std::fs::read_to_string(dir.join("out.jsonl")).unwrap(), "");
    // Bad settings.
    let run = |t: &str| run_toml(t, &temp_dir("nats-errors")).unwrap_err().to_string();
    for (from, to, message) in [
        (
            "stream = \"lines\"".to_owned(),
            "stream = \"nope\"".to_owned(),
            "stream `nope` at nats://127.0.0.1:".to_owned(),
        ),
        (
            nats.url(),
            format!("nats://127.0.0.1:{}", free_port()),
            "cannot connect to NATS at nats://127.0.0.1:".to_owned(),
        ),
        (
            "stream = \"lines\"\n".to_owned(),
            String::new(),
            "a nats source needs `stream`".to_owned(),
        ),
        (
            "bounded = true".to_owned(),
            "bounded = true\nparallelism = 2".to_owned(),
            "a nats source reads with parallelism 1".to_owned(),
        ),
        (
            "format = \"json\"\n".to_owned(),
            String::new(),
            "`key_field` and `timestamp_field` need format = \"json\"".to_owned(),
        ),
        (
            "bounded = true".to_owned(),
            "bounded = true\npath = \"x\"".to_owned(),
            "a nats source takes `url`".to_owned(),
        ),
        (
            format!("url = \"{}\"", nats.url()),
            "url = \"http://x\"".to_owned(),
            "`url` is a NATS server address".to_owned(),
        ),
    ] {
        let err = run(&toml.replace(&from, &to));
        assert!(err.contains(&message), "{message:?} not in: {err}");
    }
    // The sink's settings.
    let file_sink = "kind = \"file\"\npath = \"out.jsonl\"\nformat = \"envelope\"";
    for (sink, message) in [
        (
            format!("kind = \"nats\"\nurl = \"{}\"\nsubject = \"out.*\"", nats.url()),
            "is not a subject to publish to",
        ),
        (
            format!("kind = \"nats\"\nurl = \"{}\"\nsubject = \"out.x\"", nats.url()),
            "the job has no `[checkpoints]`",
        ),
        (format!("kind = \"nats\"\nurl = \"{}\"", nats.url()), "a nats sink needs `subject`"),
        (
            format!("kind = \"nats\"\nurl = \"{}\"\nsubject = \"out.x\"\npath = \"p\"", nats.url()),
            "a nats sink has no `path`",
        ),
        (
            "kind = \"file\"\npath = \"o\"\nsubject = \"out.x\"".to_owned(),
            "`subject` is a setting of nats sinks, not of file sinks",
        ),
    ] {
        let err = run(&toml.replace(file_sink, &sink));
        assert!(err.contains(message), "{message:?} not in: {err}");
    }
}

#[test]
fn nats_sink_under_a_sigkill_loop_publishes_every_update_once() {
    let nats = Nats::start("sink");
    let sink = format!(
        "kind = \"nats\"\nurl = \"{}\"\nsubject = \"counts.words\"\nparallelism = 2",
        nats.url()
    );
    let toml = wordcount_pipeline(
        "nats-sink",
        r#"{ strategy = "fixed-delay", attempts = 3, delay_ms = 50 }"#,
        "",
        &format!(
            "kind = \"file\"\npath = {}\nrecords_per_second = 1500",
            lit(&root().join("examples/data/wordcount.txt"))
        ),
        2,
        &sink,
    );
    let expected = expected_updates();
    kill_loop(
        "nats-sink",
        &toml,
        10,
        || nats.reset("counts"),
        |_| {
            let mut got: Vec<(String, i64)> = nats
                .read("counts")
                .iter()
                .map(|m| {
                    let v: serde_json::Value = serde_json::from_slice(m).unwrap();
                    (v["word"].as_str().unwrap().to_owned(), v["count"].as_i64().unwrap())
                })
                .collect();
            got.sort();
            assert_eq!(got.len(), expected.len(), "messages in the stream");
            assert!(got == expected, "the stream differs from the independent count");
        },
    );
}

#[test]
fn a_durable_nats_consumer_on_a_work_queue_is_acknowledged_only_after_checkpoints_complete() {
    use async_nats::jetstream::stream::RetentionPolicy;
    // A work queue removes a message once it is acknowledged: had the
    // source acknowledged before its checkpoint completed, a restore would
    // find the messages it still needs gone, and the count would be short.
    let nats = Nats::start("durable");
    let expected = expected_updates();
    let toml = job(&nats, 1500).replace("stream = \"lines\"", "stream = \"lines\"\nconsumer = \"wc\"");
    kill_loop(
        "nats-durable-kill",
        &toml,
        10,
        || {
            nats.delete_stream("lines");
            nats.publish_to("lines", RetentionPolicy::WorkQueue, &lines());
        },
        |dir| {
            let got = updates(&dir.join("out"));
            assert_eq!(got.len(), expected.len(), "updates");
            assert!(got == expected, "the output differs from the independent count");
            // Every message was acknowledged, so the work queue is empty.
            let (left, floor) = nats.state("lines", "wc");
            assert_eq!((left, floor), (0, lines().len() as u64), "messages left, ack floor");
        },
    );
}

#[test]
fn a_fresh_start_with_a_durable_nats_consumer_resumes_after_its_acknowledged_messages() {
    let nats = Nats::start("resume");
    let batch = |from: usize, to: usize| -> Vec<(String, Vec<u8>)> {
        (from..to)
            .map(|i| ("lines.text".to_owned(), format!("w{}", i % 11).into_bytes()))
            .collect()
    };
    nats.publish("lines", &batch(0, 300));
    let toml = job(&nats, 1_000_000).replace("stream = \"lines\"", "stream = \"lines\"\nconsumer = \"wc\"");
    // The keyed count of `w0`…`w10` over messages `from..to`.
    let counts = |from: usize, to: usize| {
        let mut n: BTreeMap<String, i64> = BTreeMap::new();
        let mut out = Vec::new();
        for i in from..to {
            let w = format!("w{}", i % 11);
            let c = n.entry(w.clone()).or_default();
            *c += 1;
            out.push((w, *c));
        }
        out.sort();
        out
    };
    let dir = temp_dir("nats-resume-1");
    run_toml(&toml, &dir).unwrap();
    assert!(updates(&dir.join("out")) == counts(0, 300), "the first run");
    assert_eq!(nats.state("lines", "wc"), (300, 300), "messages, ack floor after the first run");
    // A new run, not restored: it starts after the consumer's ack floor,
    // so it reads (and counts afresh) only what came since.
    nats.publish("lines", &batch(300, 420));
    let dir = temp_dir("nats-resume-2");
    run_toml(&toml, &dir).unwrap();
    assert!(updates(&dir.join("out")) == counts(300, 420), "the second run");
    assert_eq!(nats.state("lines", "wc"), (420, 420));
    // `start_sequence` overrides the ack floor.
    let dir = temp_dir("nats-resume-3");
    run_toml(&toml.replace("consumer = \"wc\"", "consumer = \"wc\"\nstart_sequence = 401"), &dir).unwrap();
    assert!(updates(&dir.join("out")) == counts(400, 420), "from sequence 401");
    let err = run_toml(
        &toml.replace("consumer = \"wc\"", "consumer = \"a.b\""),
        &temp_dir("nats-resume-bad"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`consumer` is a durable consumer name"), "{err}");
}
