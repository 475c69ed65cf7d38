//! The NATS JetStream sink: a write-ahead spool on local disk, published
//! when its checkpoint completes.
//!
//! ```text
//! write              ─► the spool: a transactional file sink's hidden file
//! barrier n          ─► sealed as part-<subtask>-<n> (the checkpoint lists it)
//! checkpoint n done  ─► committed, then published line by line with
//!                       Nats-Msg-Id = <prefix>-<run>-part-<subtask>-<n>-<line>
//!                       (<run>: super::spool::run_of),
//!                       each acknowledged by JetStream, then deleted
//! restore            ─► the spool files the checkpoint lists are committed;
//!                       every committed file not yet deleted is published again
//! ```
//!
//! A message is published only once its checkpoint is complete, so nothing
//! a restore takes back was published. A republished message has the same
//! id, so JetStream's duplicate window (the stream's `duplicate_window`,
//! two minutes by default) drops it: exactly once within that window, at
//! least once beyond it.

use std::path::PathBuf;
use std::time::Duration;

use super::ConnectorError;
use crate::spec::{SinkSpec, redact_url};

/// How long connecting may take unless the spec says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Publishes in flight before the sink waits for their acknowledgements.
const IN_FLIGHT: usize = 512;

fn failed(sink: &str, message: String) -> ConnectorError {
    ConnectorError::Sink {
        sink: sink.to_owned(),
        message,
    }
}

/// Connect to the NATS server at `url` within `timeout`; the error names
/// the server (without secrets) and the cause.
pub(crate) async fn connect(url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
    let at = redact_url(url);
    tokio::time::timeout(
        timeout,
        async_nats::ConnectOptions::new()
            .connection_timeout(timeout)
            .name("sluice")
            .connect(url),
    )
    .await
    .map_err(|_| format!("cannot connect to NATS at {at}: no answer within {} ms", timeout.as_millis()))?
    .map_err(|e| format!("cannot connect to NATS at {at}: {e}"))
}

/// The spool's publisher: each file's lines, acknowledged, then the file deleted
/// (see [`super::spool`]).
pub fn publish_now(spec: &SinkSpec, files: &[(String, PathBuf)]) -> Result<(), ConnectorError> {
    let name = spec.name.as_str();
    let url = spec.url.clone().unwrap_or_default();
    let at = redact_url(&url);
    let subject = spec.subject.clone().unwrap_or_default();
    let prefix = spec.transaction_prefix.clone().unwrap_or_default();
    let timeout = Duration::from_millis(spec.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| failed(name, format!("starting the NATS client's runtime: {e}")))?;
    runtime.block_on(async {
        let client = connect(&url, timeout).await.map_err(|m| failed(name, m))?;
        let js = async_nats::jetstream::new(client);
        for (part, path) in files {
            let writer = super::file_sink::writer_of(part).ok_or_else(|| failed(name, format!("spool file `{part}` names no writer")))?;
            let run = super::spool::run_of(&super::spool::spool(spec), writer)?;
            let text = std::fs::read(path).map_err(|source| ConnectorError::Io {
                path: path.clone(),
                source,
            })?;
            let mut acks = Vec::with_capacity(IN_FLIGHT);
            for (i, line) in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("{prefix}-{run}-{part}-{i}").as_str());
                let ack = js
                    .publish_with_headers(subject.clone(), headers, line.to_vec().into())
                    .await
                    .map_err(|e| failed(name, format!("publishing to `{subject}` at {at}: {e}")))?;
                acks.push(ack);
                if acks.len() >= IN_FLIGHT {
                    for a in acks.drain(..) {
                        a.await
                            .map_err(|e| failed(name, format!("JetStream did not store a message on `{subject}`: {e}")))?;
                    }
                }
            }
            for a in acks {
                a.await
                    .map_err(|e| failed(name, format!("JetStream did not store a message on `{subject}`: {e}")))?;
            }
            std::fs::remove_file(path).map_err(|source| ConnectorError::Io {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    })
}
