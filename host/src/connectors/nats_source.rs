//! The NATS JetStream source: an ordered consumer on a stream, its position
//! the next stream sequence, kept in checkpoints.
//!
//! ```text
//! open (fresh)        ─► ordered consumer from `start_sequence` (default 1)
//! barrier             ─► position = [next sequence, end]
//! restore             ─► ordered consumer from the checkpointed sequence
//! bounded, at start   ─► end = the stream's last sequence; the source ends
//!                        once it has read everything up to it
//! ```
//!
//! An ordered consumer is ephemeral and unacknowledged: nothing on the
//! server has to be cleaned up or acknowledged, and the checkpoint alone
//! says where to resume, so every message reaches the job's state exactly
//! once. The value of a record is the message payload; its event time is
//! the `timestamp_field` of a JSON payload, else the time JetStream stored
//! the message.
//!
//! With `consumer = "<name>"` the source reads through that durable pull
//! consumer instead, and acknowledges the messages before each barrier once
//! that checkpoint completes — so on a stream with work-queue or interest
//! retention nothing a restore still needs is removed, and the consumer's
//! ack floor shows how far the job got. It acks the last message
//! (AckPolicy::All), or on a work queue, which takes only explicit acks,
//! each message:
//!
//! ```text
//! open / restore ─► next = checkpointed sequence (restore), else start_sequence,
//!                   else the consumer's ack floor + 1 (it exists), else 1;
//!                   the consumer is created again at `next` (a guard consumer
//!                   keeps the stream's interest while it is replaced)
//! barrier n      ─► remember the reply subjects to ack (the last one, or all)
//! n completes    ─► ack them (AckAll: the last acks everything before it)
//! redelivered    ─► dropped (its sequence is before `next`)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use sluice_guest::batch::BatchWriter;
use tokio_stream::StreamExt;

use super::file_source::json_fields;
use super::{ConnectorError, SOURCE_BATCH_BYTES, SourceReader, position_pair};
use crate::spec::{FileFormat, SourceSpec, redact_url};
use crate::types::RecordBatch;

/// The largest message a source takes: a bigger one fails the job, naming
/// its sequence (the server's own default limit is 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// How long `next_batch` waits for a first message before it returns an
/// empty batch (so barriers and cancellation are not held up).
const POLL: Duration = Duration::from_millis(50);

/// How long a durable consumer's message may stay unacknowledged before
/// the server sends it again (the source drops such a redelivery): longer
/// than checkpoints usually take, so redeliveries are rare.
const ACK_WAIT: Duration = Duration::from_secs(300);

/// Checkpoints whose acknowledgement waits for their completion.
const PENDING_ACKS: usize = 16;

/// On a work queue (explicit acks): the most messages read and not yet
/// acknowledged (JetStream's `max_ack_pending`, which bounds the reply
/// subjects kept; the server sends no more until a checkpoint completes).
pub const MAX_UNACKED: i64 = 200_000;

/// The messages of a consumer, ordered or durable.
type Messages = Box<dyn tokio_stream::Stream<Item = Result<jetstream::Message, String>> + Send + Unpin>;

/// A NATS source subtask.
pub struct NatsSource {
    name: String,
    url: String,
    stream: String,
    subject: Option<String>,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    json: bool,
    timeout: Duration,
    runtime: tokio::runtime::Runtime,
    /// Connected on the first read (after a possible seek).
    messages: Option<Messages>,
    /// The durable consumer to read through, if any.
    consumer: Option<String>,
    start_sequence: Option<u64>,
    /// The newest completed checkpoint (durable consumers ack up to it).
    completed: Option<Arc<AtomicU64>>,
    /// Durable: the client, whether every message is acked (a work queue)
    /// or the last (AckAll), the reply subjects to ack since the last
    /// barrier, and per checkpoint those before its barrier.
    client: Option<async_nats::Client>,
    explicit: bool,
    unacked: Vec<async_nats::Subject>,
    pending: Vec<(u64, Vec<async_nats::Subject>)>,
    /// The newest checkpoint whose barrier this source passed.
    last_snapshot: u64,
    /// The next stream sequence to read.
    next: u64,
    /// bounded: the last sequence to read (0 while unknown); u64::MAX: unbounded.
    end: u64,
    bounded: bool,
    /// Resumed from a checkpoint (so a sequence the stream no longer holds is lost data).
    restored: bool,
    done: bool,
}

impl NatsSource {
    /// A source as `spec` says; it connects on its first read.
    pub fn new(spec: &SourceSpec, completed: Option<Arc<AtomicU64>>) -> Result<Self, ConnectorError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(&spec.name, format!("starting the NATS client's runtime: {e}")))?;
        Ok(NatsSource {
            name: spec.name.clone(),
            url: spec.url.clone().unwrap_or_default(),
            stream: spec.stream.clone().unwrap_or_default(),
            subject: spec.subject.clone(),
            key_field: spec.key_field.clone(),
            timestamp_field: spec.timestamp_field.clone(),
            json: spec.format == Some(FileFormat::Json),
            timeout: Duration::from_millis(spec.connect_timeout_ms.unwrap_or(super::nats_sink::DEFAULT_CONNECT_TIMEOUT_MS)),
            runtime,
            messages: None,
            consumer: spec.consumer.clone(),
            start_sequence: spec.start_sequence,
            completed,
            client: None,
            explicit: false,
            unacked: Vec::new(),
            pending: Vec::new(),
            last_snapshot: 0,
            next: spec.start_sequence.unwrap_or(1).max(1),
            end: if spec.bounded { 0 } else { u64::MAX },
            bounded: spec.bounded,
            restored: false,
            done: false,
        })
    }

    fn bad(&self, message: String) -> ConnectorError {
        failed(&self.name, message)
    }

    /// Connect and create the consumer from `self.next` (a durable one,
    /// on a fresh start without `start_sequence`, from after its ack floor).
    fn connect(&mut self) -> Result<(), ConnectorError> {
        let at = redact_url(&self.url);
        let (url, stream, subject, timeout, next) = (self.url.clone(), self.stream.clone(), self.subject.clone(), self.timeout, self.next);
        let (durable, resume) = (self.consumer.clone(), !self.restored && self.start_sequence.is_none());
        type Connected = (Messages, u64, u64, u64, u64, Option<(async_nats::Client, bool)>);
        let result: Result<Connected, String> = self.runtime.block_on(async move {
            let client = super::nats_sink::connect(&url, timeout).await?;
            let js = jetstream::new(client.clone());
            let mut s = tokio::time::timeout(timeout, js.get_stream(&stream))
                .await
                .map_err(|_| format!("NATS at {at}: JetStream did not answer within {} ms", timeout.as_millis()))?
                .map_err(|e| format!("stream `{stream}` at {at}: {e}"))?;
            let info = s.info().await.map_err(|e| format!("stream `{stream}` at {at}: {e}"))?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            // A work queue takes explicit acks only, one consumer per
            // subject, and keeps a message until it is acked.
            let work_queue = info.config.retention == jetstream::stream::RetentionPolicy::WorkQueue;
            let filter_subject = subject.unwrap_or_default();
            let creating = |e: &dyn std::fmt::Display| format!("creating a consumer on stream `{stream}` at {at}: {e}");
            let Some(name) = durable else {
                let consumer = s
                    .create_consumer(OrderedConfig {
                        deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: next },
                        filter_subject,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| creating(&e))?;
                let pending = consumer.cached_info().num_pending;
                let messages = consumer
                    .messages()
                    .await
                    .map_err(|e| format!("reading stream `{stream}` at {at}: {e}"))?;
                let messages: Messages = Box::new(messages.map(|m| m.map_err(|e| e.to_string())));
                return Ok((messages, first, last, pending, next, None));
            };
            let existing = s.consumer_info(&name).await.ok();
            let next = match &existing {
                Some(c) if resume => c.ack_floor.stream_sequence + 1,
                _ => next,
            };
            let config = |durable: &str, ack_policy| jetstream::consumer::pull::Config {
                durable_name: Some(durable.to_owned()),
                // A work queue delivers what is not acked yet, from its start.
                deliver_policy: if work_queue {
                    DeliverPolicy::All
                } else {
                    DeliverPolicy::ByStartSequence { start_sequence: next }
                },
                ack_policy,
                ack_wait: ACK_WAIT,
                max_ack_pending: if ack_policy == AckPolicy::Explicit { MAX_UNACKED } else { -1 },
                filter_subject: filter_subject.clone(),
                ..Default::default()
            };
            // The consumer's start cannot be moved: it is made again. On an
            // interest stream a guard from the same sequence keeps the
            // stream's interest in the messages meanwhile (deleting the only
            // consumer would remove them).
            let guard = format!("{name}-sluice-guard");
            let guarded = existing.is_some() && !work_queue;
            if guarded {
                s.create_consumer(config(&guard, AckPolicy::Explicit))
                    .await
                    .map_err(|e| creating(&e))?;
            }
            if existing.is_some() {
                s.delete_consumer(&name)
                    .await
                    .map_err(|e| format!("replacing consumer `{name}` of stream `{stream}` at {at}: {e}"))?;
            }
            let policy = if work_queue { AckPolicy::Explicit } else { AckPolicy::All };
            let consumer = s.create_consumer(config(&name, policy)).await.map_err(|e| creating(&e));
            if guarded {
                let _ = s.delete_consumer(&guard).await;
            }
            let consumer = consumer?;
            let pending = consumer.cached_info().num_pending;
            let messages = consumer
                .messages()
                .await
                .map_err(|e| format!("reading stream `{stream}` at {at}: {e}"))?;
            let messages: Messages = Box::new(messages.map(|m| m.map_err(|e| e.to_string())));
            Ok((messages, first, last, pending, next, Some((client, work_queue))))
        });
        let (messages, first, last, pending, next, durable) = result.map_err(|m| self.bad(m))?;
        if let Some((client, explicit)) = durable {
            self.client = Some(client);
            self.explicit = explicit;
        }
        if self.restored && self.next < first {
            return Err(self.bad(format!(
                "stream `{}` starts at sequence {first} now; sequence {} the job resumes from was removed (by the stream's limits) \
                 before the job read it",
                self.stream, self.next
            )));
        }
        self.next = next.max(1);
        if self.bounded && self.end == 0 {
            // The first start of a bounded job: it reads what is there now.
            self.end = last;
        }
        if self.bounded && pending == 0 {
            // Nothing (more) matches: done.
            self.next = self.next.max(self.end.saturating_add(1));
        }
        self.messages = Some(messages);
        Ok(())
    }

    /// Durable: acknowledge what was read before the newest completed
    /// checkpoint's barrier, and wait until the server has it.
    fn ack_completed(&mut self) {
        let (Some(done), Some(client)) = (self.completed.as_ref().map(|c| c.load(Ordering::Acquire)), self.client.clone()) else {
            return;
        };
        let Some(i) = self.pending.iter().rposition(|(id, _)| *id <= done) else {
            return;
        };
        let replies = to_ack(self.explicit, self.pending.drain(..=i).flat_map(|(_, r)| r));
        let result = self.runtime.block_on(publish_acks(client, replies, self.timeout));
        if let Err(e) = result {
            tracing::warn!(source = %self.name, "acknowledging stream `{}` up to a completed checkpoint: {e}", self.stream);
        }
    }
}

impl Drop for NatsSource {
    /// At the end of a bounded input the last checkpoint (the final state)
    /// completes after the task has ended: what it covers is acknowledged
    /// then, by [`ack_finished`].
    fn drop(&mut self) {
        self.ack_completed();
        if !self.done {
            return;
        }
        let (Some(client), Some(completed)) = (self.client.take(), self.completed.clone()) else {
            return;
        };
        // The final state's snapshot took what was read last; anything
        // read after it waits for a later checkpoint.
        let after = if self.unacked.is_empty() {
            self.last_snapshot
        } else {
            self.last_snapshot + 1
        };
        let read = std::mem::take(&mut self.pending).into_iter().flat_map(|(_, r)| r);
        let replies = to_ack(self.explicit, read.chain(std::mem::take(&mut self.unacked)));
        if replies.is_empty() {
            return;
        }
        // The client's connection runs on this runtime: it goes along.
        let Ok(spare) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        let runtime = std::mem::replace(&mut self.runtime, spare);
        let mut finished = FINISHED.lock().unwrap_or_else(|p| p.into_inner());
        finished.retain(|f| f.since.elapsed() < FINISHED_KEPT);
        if finished.len() < FINISHED_MAX {
            finished.push(Finished {
                source: self.name.clone(),
                completed,
                after,
                runtime,
                client,
                replies,
                timeout: self.timeout,
                since: std::time::Instant::now(),
            });
        }
    }
}

/// The acknowledgements of a durable consumer's source that reached the end
/// of its input, waiting for the checkpoint with its final state.
struct Finished {
    source: String,
    completed: Arc<AtomicU64>,
    /// The first checkpoint id that holds the final state.
    after: u64,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    replies: Vec<async_nats::Subject>,
    timeout: Duration,
    since: std::time::Instant,
}

static FINISHED: std::sync::Mutex<Vec<Finished>> = std::sync::Mutex::new(Vec::new());

/// How long a finished source's acknowledgements wait for their checkpoint
/// (a job that failed meanwhile never completes it), and how many wait.
const FINISHED_KEPT: Duration = Duration::from_secs(600);
const FINISHED_MAX: usize = 256;

/// A checkpoint completed: acknowledge what finished durable-consumer
/// sources were waiting for (called on every checkpoint notification).
pub fn ack_finished() {
    let ready: Vec<Finished> = {
        let mut finished = FINISHED.lock().unwrap_or_else(|p| p.into_inner());
        if finished.is_empty() {
            return;
        }
        let (ready, waiting): (Vec<Finished>, Vec<Finished>) = std::mem::take(&mut *finished)
            .into_iter()
            .partition(|f| f.completed.load(Ordering::Acquire) >= f.after);
        // A job that failed meanwhile never completes the checkpoint: its
        // entry (and connection) goes after a while.
        *finished = waiting.into_iter().filter(|f| f.since.elapsed() < FINISHED_KEPT).collect();
        ready
    };
    for f in ready {
        let (client, replies, timeout) = (f.client.clone(), f.replies, f.timeout);
        let result = f.runtime.block_on(publish_acks(client, replies, timeout));
        if let Err(e) = result {
            tracing::warn!(source = %f.source, "acknowledging the end of the input: {e}");
        }
    }
}

/// Of the reply subjects of messages read in order, those to ack: every
/// one (explicit acks), else the last (AckAll covers what came before).
fn to_ack(explicit: bool, replies: impl Iterator<Item = async_nats::Subject>) -> Vec<async_nats::Subject> {
    if explicit {
        replies.collect()
    } else {
        replies.last().into_iter().collect()
    }
}

/// Ack `replies` and wait until the server has them.
async fn publish_acks(client: async_nats::Client, replies: Vec<async_nats::Subject>, timeout: Duration) -> Result<(), String> {
    for reply in replies {
        client.publish(reply, "+ACK".into()).await.map_err(|e| e.to_string())?;
    }
    tokio::time::timeout(timeout, client.flush())
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())
}

fn failed(source: &str, message: String) -> ConnectorError {
    ConnectorError::Source {
        source_name: source.to_owned(),
        message,
    }
}

impl SourceReader for NatsSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        self.ack_completed();
        if self.done {
            return Ok(None);
        }
        if self.messages.is_none() {
            self.connect()?;
        }
        if self.next > self.end {
            self.done = true;
            return Ok(None);
        }
        let mut w = BatchWriter::new();
        let Some(messages) = self.messages.as_mut() else { return Ok(None) };
        let (end, from) = (self.end, self.next);
        let mut got: Vec<(u64, i64, async_nats::jetstream::Message)> = Vec::new();
        let (mut bytes, mut past_end, mut caught_up) = (0, false, false);
        let mut seen = Vec::new();
        let polled: Result<(), String> = self.runtime.block_on(async {
            let mut wait = POLL;
            while got.len() < max_records && bytes < SOURCE_BATCH_BYTES {
                // The first message may take up to `POLL`; the rest only
                // what is already here.
                let next = match tokio::time::timeout(wait, messages.next()).await {
                    Err(_) => break,
                    Ok(None) => return Err("the consumer ended".to_owned()),
                    Ok(Some(Err(e))) => return Err(format!("reading the stream: {e}")),
                    Ok(Some(Ok(m))) => m,
                };
                wait = Duration::ZERO;
                let info = next.info().map_err(|e| format!("a message without JetStream metadata: {e}"))?;
                let (seq, pending) = (info.stream_sequence, info.pending);
                let published = (info.published.unix_timestamp_nanos() / 1_000_000) as i64;
                if seq < from {
                    // A durable consumer's redelivery of a message read
                    // before: acked with the next checkpoint (it is before
                    // that checkpoint's position).
                    if let Some(reply) = next.message.reply.clone() {
                        seen.push(reply);
                    }
                    continue;
                }
                if seq > end {
                    past_end = true;
                    break;
                }
                bytes += next.payload.len();
                caught_up = pending == 0;
                got.push((seq, published, next));
                if seq == end {
                    break;
                }
            }
            Ok(())
        });
        polled.map_err(|m| self.bad(m))?;
        if self.explicit {
            self.unacked.extend(seen);
        }
        for (seq, published, m) in got {
            if m.payload.len() > MAX_MESSAGE_BYTES {
                return Err(self.bad(format!(
                    "message {seq} of stream `{}` is {} bytes, over the {MAX_MESSAGE_BYTES}-byte limit",
                    self.stream,
                    m.payload.len()
                )));
            }
            let (key, ts) = if self.json {
                json_fields(&m.payload, self.key_field.as_deref(), self.timestamp_field.as_deref())
                    .map_err(|e| self.bad(format!("message {seq} of stream `{}`: {e}", self.stream)))?
            } else {
                (None, None)
            };
            w.push(key.as_deref(), &m.payload, Some(ts.unwrap_or(published)));
            self.next = seq + 1;
            if self.client.is_some()
                && let Some(reply) = m.message.reply
            {
                if !self.explicit {
                    self.unacked.clear();
                }
                self.unacked.push(reply);
            }
        }
        // Past the end, or nothing more matches the subject now (so nothing
        // at or below the end ever will): a bounded source is done.
        if self.bounded && (past_end || caught_up) {
            self.next = self.next.max(self.end.saturating_add(1));
        }
        if w.is_empty() {
            if self.next > self.end {
                self.done = true;
                return Ok(None);
            }
            return Ok(Some(RecordBatch { bytes: w.finish(), len: 0 }));
        }
        let len = w.len();
        Ok(Some(RecordBatch { bytes: w.finish(), len }))
    }

    fn position(&self) -> Vec<u8> {
        [self.next.to_le_bytes(), self.end.to_le_bytes()].concat()
    }

    fn snapshot_position(&mut self, checkpoint: u64) -> Vec<u8> {
        self.last_snapshot = self.last_snapshot.max(checkpoint);
        if !self.unacked.is_empty() {
            self.pending.push((checkpoint, std::mem::take(&mut self.unacked)));
            if self.pending.len() > PENDING_ACKS && !self.explicit {
                // AckAll: a later checkpoint's ack covers the older ones.
                self.pending.remove(0);
            }
        }
        self.position()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        let bad = |message: String| ConnectorError::BadPosition {
            source_name: self.name.clone(),
            message,
        };
        let Some((next, end)) = position_pair(position) else {
            return Err(bad(format!("a nats position is 16 bytes, not {}", position.len())));
        };
        if next == 0 {
            return Err(bad("the checkpointed stream sequence is 0".into()));
        }
        self.next = next;
        self.end = end;
        self.bounded = end != u64::MAX;
        self.restored = true;
        // Reconnect from the restored sequence on the next read.
        self.messages = None;
        self.unacked.clear();
        self.pending.clear();
        Ok(())
    }
}
