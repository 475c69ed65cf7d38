//! Writes records as JSON lines, to a file or to standard output.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::de::IgnoredAny;

use super::{ConnectorError, SinkWriter};
use crate::spec::SinkFormat;
use crate::types::RecordBatch;

enum Target {
    File(PathBuf, BufWriter<File>),
    Stdout,
}

/// A JSON-lines sink subtask.
pub struct JsonLinesSink {
    target: Target,
    format: SinkFormat,
    line: Vec<u8>,
    /// Where the file is renamed to when the sink finishes (batch mode:
    /// the output appears whole or not at all).
    commit_to: Option<PathBuf>,
}

impl JsonLinesSink {
    /// Write to `path`, creating its directory and replacing the file.
    pub fn file(path: &Path, format: SinkFormat) -> Result<Self, ConnectorError> {
        let io = |source| ConnectorError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = File::create(path).map_err(io)?;
        Ok(JsonLinesSink {
            target: Target::File(path.to_owned(), BufWriter::with_capacity(256 << 10, file)),
            format,
            line: Vec::new(),
            commit_to: None,
        })
    }

    /// Write to `<path>.inprogress`, renamed to `path` once the sink has
    /// finished: a batch job's output appears whole or not at all (a run
    /// that fails or is killed leaves the previous file as it was).
    pub fn file_at_end(path: &Path, format: SinkFormat) -> Result<Self, ConnectorError> {
        let mut name = path.file_name().unwrap_or_default().to_os_string();
        name.push(".inprogress");
        let mut sink = Self::file(&path.with_file_name(name), format)?;
        sink.commit_to = Some(path.to_owned());
        Ok(sink)
    }

    /// Write to standard output.
    pub fn stdout(format: SinkFormat) -> Self {
        JsonLinesSink {
            target: Target::Stdout,
            format,
            line: Vec::new(),
            commit_to: None,
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), ConnectorError> {
        match &mut self.target {
            Target::File(path, w) => w.write_all(bytes).map_err(|source| ConnectorError::Io {
                path: path.clone(),
                source,
            }),
            Target::Stdout => std::io::stdout().lock().write_all(bytes).map_err(ConnectorError::Stdout),
        }
    }
}

/// Append `bytes` as a JSON value: as is when it is JSON, else as a string.
fn push_json_value(out: &mut Vec<u8>, bytes: &[u8]) {
    if serde_json::from_slice::<IgnoredAny>(bytes).is_ok() {
        out.extend_from_slice(bytes);
    } else {
        // Serializing a str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(bytes));
    }
}

/// Append the records of `batch` to `line` as JSON lines in `format`.
pub(crate) fn format_batch(format: SinkFormat, batch: &RecordBatch, line: &mut Vec<u8>) {
    for r in batch.records() {
        format_record(format, r.key, r.value, r.timestamp, line);
        line.push(b'\n');
    }
}

/// Append one record to `line` as a JSON value in `format` (no newline).
pub(crate) fn format_record(format: SinkFormat, key: Option<&[u8]>, value: &[u8], timestamp: Option<i64>, line: &mut Vec<u8>) {
    match format {
        SinkFormat::Value => push_json_value(line, value),
        SinkFormat::Envelope => {
            line.extend_from_slice(b"{\"key\":");
            match key {
                Some(k) => {
                    let _ = serde_json::to_writer(&mut *line, &String::from_utf8_lossy(k));
                }
                None => line.extend_from_slice(b"null"),
            }
            line.extend_from_slice(b",\"value\":");
            push_json_value(line, value);
            line.extend_from_slice(b",\"timestamp\":");
            match timestamp {
                Some(t) => line.extend_from_slice(t.to_string().as_bytes()),
                None => line.extend_from_slice(b"null"),
            }
            line.push(b'}');
        }
    }
}

impl SinkWriter for JsonLinesSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        let mut line = std::mem::take(&mut self.line);
        line.clear();
        format_batch(self.format, batch, &mut line);
        let r = self.write_all(&line);
        self.line = line;
        r
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        self.flush()?;
        if let (Some(to), Target::File(path, _)) = (self.commit_to.take(), &self.target) {
            std::fs::rename(path, &to).map_err(|source| ConnectorError::Io { path: to.clone(), source })?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        match &mut self.target {
            Target::File(path, w) => w.flush().map_err(|source| ConnectorError::Io {
                path: path.clone(),
                source,
            }),
            Target::Stdout => std::io::stdout().flush().map_err(ConnectorError::Stdout),
        }
    }
}
