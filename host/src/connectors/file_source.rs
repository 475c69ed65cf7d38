//! Reads a file line by line: each line a record value, or (JSON lines) a
//! JSON document whose fields can supply the key and event time, or (CSV)
//! named columns turned into a JSON object. In follow mode it keeps reading
//! what is appended to the file, like `tail -f`, until the job is cancelled.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use sluice_guest::batch::BatchWriter;

use super::{ConnectorError, SourceReader};
use crate::spec::FileFormat;
use crate::types::RecordBatch;

/// How a file source reads.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Line format.
    pub format: FileFormat,
    /// Field giving the key (json, csv).
    pub key_field: Option<String>,
    /// Field giving the event time in ms (json, csv).
    pub timestamp_field: Option<String>,
    /// Column names (csv).
    pub columns: Vec<String>,
    /// Keep reading appended lines.
    pub follow: bool,
}

/// A file source subtask.
pub struct FileSource {
    path: PathBuf,
    reader: BufReader<File>,
    options: FileOptions,
    line: u64,
    /// Bytes of the file consumed (complete lines only).
    offset: u64,
    buf: Vec<u8>,
    done: bool,
}

impl FileSource {
    /// Open `path`.
    pub fn open(path: &Path, options: FileOptions) -> Result<Self, ConnectorError> {
        let file = File::open(path).map_err(|source| ConnectorError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(FileSource {
            path: path.to_owned(),
            reader: BufReader::with_capacity(256 << 10, file),
            options,
            line: 0,
            offset: 0,
            buf: Vec::new(),
            done: false,
        })
    }

    /// A CSV line as a JSON object of the columns (numbers stay numbers).
    fn csv_to_json(&self, line: &[u8]) -> Result<Vec<u8>, ConnectorError> {
        let text = std::str::from_utf8(line).map_err(|_| self.bad("the line is not UTF-8".into()))?;
        let fields = split_csv(text).map_err(|m| self.bad(m))?;
        let columns = &self.options.columns;
        if fields.len() != columns.len() {
            return Err(self.bad(format!(
                "expected {} comma-separated columns ({}), found {}",
                columns.len(),
                columns.join(","),
                fields.len()
            )));
        }
        let mut doc = serde_json::Map::with_capacity(columns.len());
        for (name, field) in columns.iter().zip(fields) {
            let value = match field.trim().parse::<i64>() {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => match field.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => serde_json::Value::from(f),
                    _ => serde_json::Value::String(field),
                },
            };
            doc.insert(name.clone(), value);
        }
        serde_json::to_vec(&doc).map_err(|e| self.bad(e.to_string()))
    }

    fn bad(&self, message: String) -> ConnectorError {
        ConnectorError::BadRecord {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }

    fn push_json(&self, w: &mut BatchWriter, line: &[u8]) -> Result<(), ConnectorError> {
        let (key, ts) =
            json_fields(line, self.options.key_field.as_deref(), self.options.timestamp_field.as_deref()).map_err(|m| self.bad(m))?;
        w.push(key.as_deref(), line, ts);
        Ok(())
    }
}

/// The key and event time of a JSON record from its `key_field` and
/// `timestamp_field` (integer ms); the error says which is wrong.
pub(crate) fn json_fields(
    json: &[u8],
    key_field: Option<&str>,
    timestamp_field: Option<&str>,
) -> Result<(Option<Vec<u8>>, Option<i64>), String> {
    let doc: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    let key = match key_field {
        None => None,
        Some(f) => Some(match doc.get(f) {
            Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
            Some(serde_json::Value::Null) | None => return Err(format!("key field `{f}` is missing")),
            Some(other) => other.to_string().into_bytes(),
        }),
    };
    let ts = match timestamp_field {
        None => None,
        Some(f) => Some(
            doc.get(f)
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(|| format!("timestamp field `{f}` is missing or not an integer"))?,
        ),
    };
    Ok((key, ts))
}

/// Longest line a file source reads (with its newline): a longer one fails
/// the job, naming the file and line, before it is held in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

impl SourceReader for FileSource {
    fn next_batch(&mut self, max_records: usize) -> Result<Option<RecordBatch>, ConnectorError> {
        if self.done {
            return Ok(None);
        }
        let mut w = BatchWriter::with_capacity(64 << 10);
        while w.len() < max_records && w.byte_len() < super::SOURCE_BATCH_BYTES {
            self.buf.clear();
            let n = std::io::Read::take(&mut self.reader, MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|source| ConnectorError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            if n > MAX_LINE_BYTES {
                return Err(ConnectorError::BadRecord {
                    path: self.path.clone(),
                    line: self.line + 1,
                    message: format!("the line is longer than {MAX_LINE_BYTES} bytes, the most a record may hold"),
                });
            }
            if n == 0 {
                if !self.options.follow {
                    self.done = true;
                }
                break;
            }
            if self.options.follow && !self.buf.ends_with(b"\n") {
                // A line still being written: read it again once complete.
                self.reader.seek_relative(-(n as i64)).map_err(|source| ConnectorError::Io {
                    path: self.path.clone(),
                    source,
                })?;
                break;
            }
            self.line += 1;
            self.offset += n as u64;
            let mut line = &self.buf[..];
            if let Some(l) = line.strip_suffix(b"\n") {
                line = l;
            }
            if let Some(l) = line.strip_suffix(b"\r") {
                line = l;
            }
            match self.options.format {
                FileFormat::Lines => w.push(None, line, None),
                FileFormat::Json | FileFormat::Csv => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    let doc = match self.options.format {
                        FileFormat::Csv => self.csv_to_json(line)?,
                        _ => line.to_vec(),
                    };
                    self.push_json(&mut w, &doc)?;
                }
            }
        }
        if w.is_empty() && self.done {
            return Ok(None);
        }
        let len = w.len();
        Ok(Some(RecordBatch { bytes: w.finish(), len }))
    }

    fn position(&self) -> Vec<u8> {
        [self.offset.to_le_bytes(), self.line.to_le_bytes()].concat()
    }

    fn seek(&mut self, position: &[u8]) -> Result<(), ConnectorError> {
        let bad = |message: String| ConnectorError::BadPosition {
            source_name: self.path.display().to_string(),
            message,
        };
        let Some((offset, line)) = super::position_pair(position) else {
            return Err(bad(format!("a file position is 16 bytes, not {}", position.len())));
        };
        let len = self.reader.get_ref().metadata().map(|m| m.len()).unwrap_or(0);
        if offset > len {
            return Err(bad(format!(
                "the file has {len} bytes, but the checkpoint read up to byte {offset}"
            )));
        }
        use std::io::Seek;
        self.reader
            .seek(std::io::SeekFrom::Start(offset))
            .map_err(|source| ConnectorError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.offset = offset;
        self.line = line;
        self.done = false;
        Ok(())
    }
}

/// Split one CSV line: fields separated by commas, a field may be quoted
/// with `"` (a doubled `""` inside is one quote).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed".into()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected `{c}` after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_source(name: &str, content: &[u8]) -> FileSource {
        let path = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        let options = FileOptions {
            format: FileFormat::Lines,
            key_field: None,
            timestamp_field: None,
            columns: Vec::new(),
            follow: false,
        };
        let s = FileSource::open(&path, options).unwrap();
        let _ = std::fs::remove_file(&path);
        s
    }

    #[test]
    fn a_line_over_the_limit_fails_naming_file_and_line_before_it_is_held() {
        let mut content = b"short\n".to_vec();
        content.resize(content.len() + MAX_LINE_BYTES + 1, b'x');
        content.push(b'\n');
        let mut s = lines_source("long-line", &content);
        let err = s.next_batch(1).unwrap().map(|b| b.len);
        assert_eq!(err, Some(1), "the short line first");
        let err = s.next_batch(1).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains(&format!("longer than {MAX_LINE_BYTES} bytes")),
            "{err}"
        );
        // A line of exactly the limit (with its newline) is read.
        let mut content = vec![b'y'; MAX_LINE_BYTES - 1];
        content.push(b'\n');
        let b = lines_source("limit-line", &content).next_batch(10).unwrap().unwrap();
        assert_eq!(b.records().next().map(|r| r.value.len()), Some(MAX_LINE_BYTES - 1));
    }

    #[test]
    fn batches_end_at_the_byte_bound_whatever_the_batch_size() {
        let line = vec![b'z'; 1 << 20];
        let mut content = Vec::new();
        for _ in 0..40 {
            content.extend_from_slice(&line);
            content.push(b'\n');
        }
        let mut s = lines_source("big-batch", &content);
        let b = s.next_batch(1 << 20).unwrap().unwrap();
        assert_eq!(b.len, super::super::SOURCE_BATCH_BYTES >> 20, "a batch stops at 16 MiB");
    }

    #[test]
    fn csv_fields_split_on_commas_and_honour_quotes() {
        assert_eq!(split_csv("1000,hello").unwrap(), ["1000", "hello"]);
        assert_eq!(split_csv(r#"1,"a, ""b""",c"#).unwrap(), ["1", r#"a, "b""#, "c"]);
        assert_eq!(split_csv("a,,").unwrap(), ["a", "", ""]);
        assert!(split_csv(r#""open"#).is_err());
    }
}
