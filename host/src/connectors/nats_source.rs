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

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
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
    messages: Option<Ordered>,
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
    pub fn new(spec: &SourceSpec) -> Result<Self, ConnectorError> {
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

    /// Connect and create the ordered consumer from `self.next`.
    fn connect(&mut self) -> Result<(), ConnectorError> {
        let at = redact_url(&self.url);
        let (url, stream, subject, timeout, next) = (self.url.clone(), self.stream.clone(), self.subject.clone(), self.timeout, self.next);
        let result: Result<(Ordered, u64, u64, u64), String> = self.runtime.block_on(async move {
            let client = super::nats_sink::connect(&url, timeout).await?;
            let js = jetstream::new(client);
            let mut s = tokio::time::timeout(timeout, js.get_stream(&stream))
                .await
                .map_err(|_| format!("NATS at {at}: JetStream did not answer within {} ms", timeout.as_millis()))?
                .map_err(|e| format!("stream `{stream}` at {at}: {e}"))?;
            let info = s.info().await.map_err(|e| format!("stream `{stream}` at {at}: {e}"))?;
            let (first, last) = (info.state.first_sequence, info.state.last_sequence);
            let consumer = s
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: next },
                    filter_subject: subject.unwrap_or_default(),
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating a consumer on stream `{stream}` at {at}: {e}"))?;
            let pending = consumer.cached_info().num_pending;
            let messages = consumer
                .messages()
                .await
                .map_err(|e| format!("reading stream `{stream}` at {at}: {e}"))?;
            Ok((messages, first, last, pending))
        });
        let (messages, first, last, pending) = result.map_err(|m| self.bad(m))?;
        if self.restored && self.next < first {
            return Err(self.bad(format!(
                "stream `{}` starts at sequence {first} now; sequence {} the job resumes from was removed (by the stream's limits) \
                 before the job read it",
                self.stream, self.next
            )));
        }
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
}

fn failed(source: &str, message: String) -> ConnectorError {
    ConnectorError::Source {
        source_name: source.to_owned(),
        message,
    }
}

impl SourceReader for NatsSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
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
        let end = self.end;
        let mut got: Vec<(u64, i64, async_nats::jetstream::Message)> = Vec::new();
        let (mut bytes, mut past_end, mut caught_up) = (0, false, false);
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
        Ok(())
    }
}
