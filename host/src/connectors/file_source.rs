//! Reads a file line by line: each line a record value, or (JSON lines) a
//! JSON document whose fields can supply the key and event time.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use sluice_guest::batch::BatchWriter;

use super::{ConnectorError, SourceReader};
use crate::job::spec::FileFormat;
use crate::runtime::RecordBatch;

/// A file source subtask.
pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    format: FileFormat,
    key_field: Option<String>,
    timestamp_field: Option<String>,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

impl FileSource {
    /// Open `path`.
    pub fn open(
        path: &Path,
        format: FileFormat,
        key_field: Option<String>,
        timestamp_field: Option<String>,
    ) -> Result<Self, ConnectorError> {
        let file = File::open(path).map_err(|source| ConnectorError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(FileSource {
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 << 10, file),
            format,
            key_field,
            timestamp_field,
            line: 0,
            buf: Vec::new(),
            done: false,
        })
    }

    fn bad(&self, message: String) -> ConnectorError {
        ConnectorError::BadRecord {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }

    fn push_json(&self, w: &mut BatchWriter, line: &[u8]) -> Result<(), ConnectorError> {
        let doc: serde_json::Value = serde_json::from_slice(line).map_err(|e| self.bad(format!("invalid JSON: {e}")))?;
        let key = match &self.key_field {
            None => None,
            Some(f) => Some(match doc.get(f) {
                Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
                Some(serde_json::Value::Null) | None => return Err(self.bad(format!("key field `{f}` is missing"))),
                Some(other) => other.to_string().into_bytes(),
            }),
        };
        let ts = match &self.timestamp_field {
            None => None,
            Some(f) => Some(
                doc.get(f)
                    .and_then(serde_json::Value::as_i64)
                    .ok_or_else(|| self.bad(format!("timestamp field `{f}` is missing or not an integer")))?,
            ),
        };
        w.push(key.as_deref(), line, ts);
        Ok(())
    }
}

impl SourceReader for FileSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.done {
            return Ok(None);
        }
        let mut w = BatchWriter::with_capacity(64 << 10);
        while w.len() < max_records {
            self.buf.clear();
            let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|source| ConnectorError::Io {
                path: self.path.clone(),
                source,
            })?;
            if n == 0 {
                self.done = true;
                break;
            }
            self.line += 1;
            let mut line = &self.buf[..];
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l;
            }
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            match self.format {
                FileFormat::Lines => w.push(None, line, None),
                FileFormat::Json => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let line = line.to_vec();
                    self.push_json(&mut w, &line)?;
                }
            }
        }
        if w.is_empty() {
            return Ok(None);
        }
        let len = w.len();
        Ok(Some(RecordBatch { bytes: w.finish(), len }))
    }
}
