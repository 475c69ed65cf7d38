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
    /// CSV: the first line is a header naming `columns`, not a record.
    pub header: bool,
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
    /// CSV: how each line becomes a record, and its scratch space.
    csv: CsvRecords,
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
            line: 0,
            offset: 0,
            buf: Vec::new(),
            done: false,
            csv: CsvRecords::new(&options.columns, options.key_field.as_deref(), options.timestamp_field.as_deref()),
            options,
        })
    }

    fn bad(&self, message: String) -> ConnectorError {
        ConnectorError::BadRecord {
            path: self.path.clone(),
            line: self.line,
            message,
        }
    }

    fn too_long(&self) -> ConnectorError {
        ConnectorError::BadRecord {
            path: self.path.clone(),
            line: self.line + 1,
            message: format!("the line is longer than {MAX_LINE_BYTES} bytes, the most a record may hold"),
        }
    }

    /// Count and push the line gathered in `buf` (without its newline; it
    /// ended the file when there was none), leaving `buf` empty.
    fn push_gathered(&mut self, w: &mut BatchWriter) -> Result<(), ConnectorError> {
        self.line += 1;
        self.offset += self.buf.len() as u64 + u64::from(!self.done);
        let pushed = push_line(&self.options, &mut self.csv, self.line == 1, &self.buf, w);
        self.buf.clear();
        pushed.map_err(|m| self.bad(m))
    }
}

/// One line (without its newline) as a record in `w`, by the file's
/// format; blank lines of JSON and CSV files are skipped, and the `first`
/// line of a CSV file with a header is checked against the columns.
fn push_line(options: &FileOptions, csv: &mut CsvRecords, first: bool, line: &[u8], w: &mut BatchWriter) -> Result<(), String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if first && options.header && options.format == FileFormat::Csv {
        return csv.check_header(line);
    }
    match options.format {
        FileFormat::Lines => w.push(None, line, None),
        FileFormat::Json | FileFormat::Csv if line.iter().all(u8::is_ascii_whitespace) => {}
        FileFormat::Csv => csv.push(line, w)?,
        FileFormat::Json => {
            let (key, ts) = json_fields(line, options.key_field.as_deref(), options.timestamp_field.as_deref())?;
            w.push(key.as_deref(), line, ts);
        }
    }
    Ok(())
}

/// The key and event time of a JSON record from its `key_field` and
/// `timestamp_field` (integer ms); the error says which is wrong. Only
/// those two fields are decoded: the rest of the document is checked and
/// skipped, not built.
pub(crate) fn json_fields(
    json: &[u8],
    key_field: Option<&str>,
    timestamp_field: Option<&str>,
) -> Result<(Option<Vec<u8>>, Option<i64>), String> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_slice(json);
    let picked = Pick {
        key: key_field,
        timestamp: timestamp_field,
    }
    .deserialize(&mut de)
    .and_then(|p| de.end().map(|()| p))
    .map_err(|e| format!("invalid JSON: {e}"))?;
    let key = match key_field {
        None => None,
        Some(f) => Some(match picked.key {
            Some(serde_json::Value::String(s)) => s.into_bytes(),
            Some(serde_json::Value::Null) | None => return Err(format!("key field `{f}` is missing")),
            Some(other) => other.to_string().into_bytes(),
        }),
    };
    let ts = match timestamp_field {
        None => None,
        Some(f) => Some(
            picked
                .timestamp
                .ok_or_else(|| format!("timestamp field `{f}` is missing or not an integer"))?,
        ),
    };
    Ok((key, ts))
}

/// Decodes the two fields of a JSON document a record needs.
struct Pick<'f> {
    key: Option<&'f str>,
    timestamp: Option<&'f str>,
}

/// What [`Pick`] found: the key field's value, and the timestamp field's
/// if it is an integer (the last of a repeated field, as in a JSON map).
#[derive(Default)]
struct Picked {
    key: Option<serde_json::Value>,
    timestamp: Option<i64>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Pick<'_> {
    type Value = Picked;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Picked, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Pick<'_> {
    type Value = Picked;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON document")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Picked, A::Error> {
        let mut out = Picked::default();
        while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            if Some(&*name) == self.key {
                let v: serde_json::Value = map.next_value()?;
                if Some(&*name) == self.timestamp {
                    out.timestamp = v.as_i64();
                }
                out.key = Some(v);
            } else if Some(&*name) == self.timestamp {
                out.timestamp = map.next_value::<serde_json::Value>()?.as_i64();
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(out)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Picked, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Picked::default())
    }

    fn visit_bool<E>(self, _: bool) -> Result<Picked, E> {
        Ok(Picked::default())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Picked, E> {
        Ok(Picked::default())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Picked, E> {
        Ok(Picked::default())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Picked, E> {
        Ok(Picked::default())
    }
    fn visit_str<E>(self, _: &str) -> Result<Picked, E> {
        Ok(Picked::default())
    }
    fn visit_unit<E>(self) -> Result<Picked, E> {
        Ok(Picked::default())
    }
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
        // Lines are taken from the reader's buffer where they lie whole; only
        // a line that crosses the buffer's end (or, following, is still being
        // written) is gathered in `buf`, and kept there until it is complete.
        while w.len() < max_records && w.byte_len() < super::SOURCE_BATCH_BYTES {
            let io = |source| ConnectorError::Io {
                path: self.path.clone(),
                source,
            };
            let avail = self.reader.fill_buf().map_err(io)?;
            if avail.is_empty() {
                if self.options.follow {
                    break;
                }
                self.done = true;
                if self.buf.is_empty() {
                    break;
                }
                // The last line, without a newline.
                self.push_gathered(&mut w)?;
                break;
            }
            let Some(nl) = avail.iter().position(|b| *b == b'\n') else {
                if self.buf.len() + avail.len() > MAX_LINE_BYTES {
                    return Err(self.too_long());
                }
                let n = avail.len();
                self.buf.extend_from_slice(avail);
                self.reader.consume(n);
                continue;
            };
            if self.buf.is_empty() {
                if nl + 1 > MAX_LINE_BYTES {
                    return Err(self.too_long());
                }
                self.line += 1;
                self.offset += nl as u64 + 1;
                let first = self.line == 1;
                let pushed = push_line(&self.options, &mut self.csv, first, &avail[..nl], &mut w);
                self.reader.consume(nl + 1);
                pushed.map_err(|m| self.bad(m))?;
            } else {
                if self.buf.len() + nl + 1 > MAX_LINE_BYTES {
                    return Err(self.too_long());
                }
                self.buf.extend_from_slice(&avail[..nl]);
                self.reader.consume(nl + 1);
                self.push_gathered(&mut w)?;
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
        self.buf.clear();
        Ok(())
    }
}

/// A CSV field as its line holds it: where it is (in the line, or, when it
/// was quoted, in the scratch string), and what it parses as.
#[derive(Clone, Copy)]
struct Field {
    quoted: bool,
    start: usize,
    end: usize,
    kind: FieldKind,
}

#[derive(Clone, Copy)]
enum FieldKind {
    Int(i64),
    Float(f64),
    Text,
}

/// Turns CSV lines into records without building a document: the fields
/// are split once, each parsed once, the JSON object of the columns (keys
/// in name order, numbers as numbers: what `serde_json` writes for the
/// same map) is written straight into the batch, and key and event time
/// come from their fields.
#[derive(Default)]
struct CsvRecords {
    columns: usize,
    /// `(column, "\"name\":")` in name order, one per distinct name (the
    /// last column of a repeated name wins, as in a JSON map).
    order: Vec<(usize, Vec<u8>)>,
    names: String,
    key: Option<(usize, String)>,
    timestamp: Option<(usize, String)>,
    missing: Option<String>,
    /// The column names, in order (a header must repeat them).
    column_names: Vec<String>,
    fields: Vec<Field>,
    scratch: String,
    key_buf: Vec<u8>,
}

impl CsvRecords {
    fn new(columns: &[String], key_field: Option<&str>, timestamp_field: Option<&str>) -> Self {
        let mut by_name: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for (i, c) in columns.iter().enumerate() {
            by_name.insert(c, i);
        }
        let order = by_name
            .iter()
            .map(|(name, i)| {
                let mut k = serde_json::to_vec(name).unwrap_or_default();
                k.push(b':');
                (*i, k)
            })
            .collect();
        let find = |f: Option<&str>| f.and_then(|f| by_name.get(f).map(|i| (*i, f.to_owned())));
        let missing = match (key_field, timestamp_field) {
            (Some(k), _) if !by_name.contains_key(k) => Some(format!("key field `{k}` is missing")),
            (_, Some(t)) if !by_name.contains_key(t) => Some(format!("timestamp field `{t}` is missing or not an integer")),
            _ => None,
        };
        CsvRecords {
            columns: columns.len(),
            order,
            names: columns.join(","),
            column_names: columns.to_vec(),
            key: find(key_field),
            timestamp: find(timestamp_field),
            missing,
            ..Default::default()
        }
    }

    /// The text of field `f` of `line`.
    fn text<'a>(&'a self, line: &'a str, f: &Field) -> &'a str {
        if f.quoted {
            &self.scratch[f.start..f.end]
        } else {
            &line[f.start..f.end]
        }
    }

    /// Split `line` into `self.fields`.
    fn split(&mut self, line: &str) -> Result<(), String> {
        self.fields.clear();
        self.scratch.clear();
        let bytes = line.as_bytes();
        let mut at = 0;
        loop {
            if bytes.get(at) == Some(&b'"') {
                let start = self.scratch.len();
                let mut i = at + 1;
                loop {
                    let Some(rel) = bytes[i..].iter().position(|b| *b == b'"') else {
                        return Err("a quoted field is not closed".into());
                    };
                    self.scratch.push_str(&line[i..i + rel]);
                    i += rel + 1;
                    if bytes.get(i) == Some(&b'"') {
                        self.scratch.push('"');
                        i += 1;
                    } else {
                        break;
                    }
                }
                self.fields.push(Field {
                    quoted: true,
                    start,
                    end: self.scratch.len(),
                    kind: FieldKind::Text,
                });
                match bytes.get(i) {
                    None => return Ok(()),
                    Some(b',') => at = i + 1,
                    Some(_) => {
                        let c = line[i..].chars().next().unwrap_or('?');
                        return Err(format!("unexpected `{c}` after a quoted field"));
                    }
                }
            } else {
                let end = bytes[at..].iter().position(|b| *b == b',').map_or(bytes.len(), |p| at + p);
                self.fields.push(Field {
                    quoted: false,
                    start: at,
                    end,
                    kind: FieldKind::Text,
                });
                if end == bytes.len() {
                    return Ok(());
                }
                at = end + 1;
            }
        }
    }

    /// Check a header line: it must name the columns, in order.
    fn check_header(&mut self, line: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(line).map_err(|_| "the header line is not UTF-8".to_owned())?;
        self.split(text)?;
        let names: Vec<&str> = self.fields.iter().map(|f| trim(self.text(text, f))).collect();
        if names != self.column_names {
            return Err(format!(
                "the header names the columns {}, but `columns` is {}: fix `columns` (or the file), in the file's order",
                names.join(","),
                self.names
            ));
        }
        Ok(())
    }

    /// One CSV line as a record of `w`.
    fn push(&mut self, line: &[u8], w: &mut BatchWriter) -> Result<(), String> {
        let line = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_owned())?;
        self.split(line)?;
        if self.fields.len() != self.columns {
            return Err(format!(
                "expected {} comma-separated columns ({}), found {}",
                self.columns,
                self.names,
                self.fields.len()
            ));
        }
        if let Some(m) = &self.missing {
            return Err(m.clone());
        }
        for i in 0..self.fields.len() {
            let f = self.fields[i];
            let text = trim(self.text(line, &f));
            // A finite float starts with a digit, a sign or a point: other
            // text (words, mostly) skips the float parser.
            let numeric = text
                .as_bytes()
                .first()
                .is_some_and(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.'));
            let kind = match text.parse::<i64>() {
                Ok(n) => FieldKind::Int(n),
                Err(_) if !numeric => FieldKind::Text,
                Err(_) => match text.parse::<f64>() {
                    Ok(x) if x.is_finite() => FieldKind::Float(x),
                    _ => FieldKind::Text,
                },
            };
            self.fields[i].kind = kind;
        }
        let timestamp = match &self.timestamp {
            None => None,
            Some((i, name)) => match self.fields[*i].kind {
                FieldKind::Int(t) => Some(t),
                _ => return Err(format!("timestamp field `{name}` is missing or not an integer")),
            },
        };
        // The key: a text field's text, a number's JSON.
        let mut key_buf = std::mem::take(&mut self.key_buf);
        key_buf.clear();
        let key = match &self.key {
            None => None,
            Some((i, _)) => {
                let f = self.fields[*i];
                match f.kind {
                    FieldKind::Text => key_buf.extend_from_slice(self.text(line, &f).as_bytes()),
                    FieldKind::Int(n) => {
                        let _ = serde_json::to_writer(&mut key_buf, &n);
                    }
                    FieldKind::Float(x) => {
                        let _ = serde_json::to_writer(&mut key_buf, &x);
                    }
                }
                Some(&key_buf[..])
            }
        };
        w.push_with(key, timestamp, |out| {
            out.push(b'{');
            for (n, (i, name)) in self.order.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(name);
                let f = &self.fields[*i];
                let _ = match f.kind {
                    FieldKind::Int(v) => serde_json::to_writer(&mut *out, &v),
                    FieldKind::Float(v) => serde_json::to_writer(&mut *out, &v),
                    FieldKind::Text => write_json_string(out, self.text(line, f)),
                };
            }
            out.push(b'}');
        });
        self.key_buf = key_buf;
        Ok(())
    }
}

/// `text` without surrounding whitespace; a field with none (the common
/// case: ASCII letters or digits at both ends) is not searched.
#[inline]
fn trim(text: &str) -> &str {
    match (text.as_bytes().first(), text.as_bytes().last()) {
        (Some(a), Some(z)) if a.is_ascii_graphic() && z.is_ascii_graphic() => text,
        _ => text.trim(),
    }
}

/// `text` as a JSON string; text with nothing to escape is copied as is.
#[inline]
fn write_json_string(out: &mut Vec<u8>, text: &str) -> serde_json::Result<()> {
    if text.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        return Ok(());
    }
    serde_json::to_writer(out, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference CSV split (what the source did before [`CsvRecords`]):
    /// split one CSV line: fields separated by commas, a field may be quoted
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

    fn lines_source(name: &str, content: &[u8]) -> FileSource {
        let path = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        let options = FileOptions {
            format: FileFormat::Lines,
            key_field: None,
            timestamp_field: None,
            columns: Vec::new(),
            follow: false,
            header: false,
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

    /// Every value read from `s`, a batch of at most `n` at a time, with
    /// the position after each batch.
    fn read_all(s: &mut FileSource, n: usize) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (mut values, mut positions) = (Vec::new(), Vec::new());
        while let Some(b) = s.next_batch(n).unwrap() {
            values.extend(b.records().map(|r| r.value.to_vec()));
            positions.push(s.position());
        }
        (values, positions)
    }

    #[test]
    fn lines_across_the_read_buffer_come_out_whole_and_positions_resume_exactly() {
        // Lines around and beyond the reader's 256 KiB buffer, CRLF, an
        // empty line, and a last line without a newline.
        let mut lines: Vec<Vec<u8>> = Vec::new();
        for (i, len) in [3usize, 0, 262_140, 262_150, 1, 600_000, 17, 5].into_iter().enumerate() {
            lines.push((0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect());
        }
        let mut content = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            content.extend_from_slice(l);
            match i {
                4 => content.extend_from_slice(b"\r\n"),
                7 => {}
                _ => content.push(b'\n'),
            }
        }
        let (values, positions) = read_all(&mut lines_source("across", &content), 2);
        assert_eq!(values, lines);
        assert_eq!(
            positions.last().map(|p| p[..8].to_vec()),
            Some((content.len() as u64).to_le_bytes().to_vec())
        );
        // Resuming at each batch's position reads exactly the rest.
        for (b, p) in positions.iter().enumerate() {
            let seen = (2 * (b + 1)).min(lines.len());
            let mut s = lines_source("resume", &content);
            s.seek(p).unwrap();
            assert_eq!(read_all(&mut s, 3).0, lines[seen..], "resumed after batch {b}");
        }
    }

    #[test]
    fn a_csv_header_is_checked_against_the_columns_and_is_not_a_record() {
        let open = |name: &str, content: &[u8], header: bool| {
            let path = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
            std::fs::write(&path, content).unwrap();
            let options = FileOptions {
                format: FileFormat::Csv,
                columns: vec!["ts".into(), "word".into()],
                key_field: Some("word".into()),
                header,
                ..Default::default()
            };
            let s = FileSource::open(&path, options).unwrap();
            let _ = std::fs::remove_file(&path);
            s
        };
        let content = b"ts, word\r\n5,a\n7,b\n";
        let (values, positions) = read_all(&mut open("header", content, true), 1);
        assert_eq!(values, [br#"{"ts":5,"word":"a"}"#.to_vec(), br#"{"ts":7,"word":"b"}"#.to_vec()]);
        // A restored position is past the header: the rest is read as rows.
        let mut s = open("header-resume", content, true);
        s.seek(&positions[0]).unwrap();
        assert_eq!(read_all(&mut s, 10).0, values[1..]);
        // Without `header`, the header line is data, and here not a valid row.
        let mut s = open("no-header", b"ts,word\n5,a\n", false);
        let b = s.next_batch(10).unwrap().unwrap();
        assert_eq!(
            b.records().next().map(|r| r.value.to_vec()),
            Some(br#"{"ts":"ts","word":"word"}"#.to_vec())
        );
        let err = open("bad-header", b"word,ts\n5,a\n", true).next_batch(10).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("word,ts") && err.contains("ts,word"),
            "{err}"
        );
        // A header only: no records, no error.
        assert_eq!(read_all(&mut open("only-header", b"ts,word\n", true), 10).0.len(), 0);
    }

    #[test]
    fn a_followed_line_still_being_written_is_read_once_complete() {
        let path = std::env::temp_dir().join(format!("sluice-follow-{}", std::process::id()));
        std::fs::write(&path, b"one\ntw").unwrap();
        let options = FileOptions {
            follow: true,
            ..Default::default()
        };
        let mut s = FileSource::open(&path, options).unwrap();
        let b = s.next_batch(10).unwrap().unwrap();
        assert_eq!(b.records().map(|r| r.value.to_vec()).collect::<Vec<_>>(), [b"one".to_vec()]);
        assert_eq!(s.position()[..8], 4u64.to_le_bytes(), "the partial line is not consumed");
        assert_eq!(s.next_batch(10).unwrap().map(|b| b.len), Some(0));
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"o\nthree\n")
            .unwrap();
        let b = s.next_batch(10).unwrap().unwrap();
        assert_eq!(
            b.records().map(|r| r.value.to_vec()).collect::<Vec<_>>(),
            [b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(s.position()[..8], 14u64.to_le_bytes());
        let _ = std::fs::remove_file(&path);
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

    /// A record as key, event time and value.
    type Made = (Option<Vec<u8>>, Option<i64>, Vec<u8>);

    /// What a CSV line became before the direct path: a JSON map of the
    /// columns through `serde_json`, then its key and event time read back.
    fn csv_through_a_document(columns: &[&str], line: &str, key: Option<&str>, ts: Option<&str>) -> Result<Made, String> {
        let fields = split_csv(line)?;
        if fields.len() != columns.len() {
            return Err("count".into());
        }
        let mut doc = serde_json::Map::new();
        for (name, field) in columns.iter().zip(fields) {
            let value = match field.trim().parse::<i64>() {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => match field.trim().parse::<f64>() {
                    Ok(f) if f.is_finite() => serde_json::Value::from(f),
                    _ => serde_json::Value::String(field),
                },
            };
            doc.insert((*name).to_owned(), value);
        }
        let json = serde_json::to_vec(&doc).unwrap();
        let (k, t) = json_fields(&json, key, ts)?;
        Ok((k, t, json))
    }

    #[test]
    fn json_fields_are_what_the_document_holds() {
        // The reference: the whole document built, the fields looked up.
        let reference = |json: &str, key: Option<&str>, ts: Option<&str>| -> Result<(Option<Vec<u8>>, Option<i64>), String> {
            let doc: serde_json::Value = serde_json::from_str(json).map_err(|e| format!("invalid JSON: {e}"))?;
            let key = match key {
                None => None,
                Some(f) => Some(match doc.get(f) {
                    Some(serde_json::Value::String(s)) => s.as_bytes().to_vec(),
                    Some(serde_json::Value::Null) | None => return Err(format!("key field `{f}` is missing")),
                    Some(other) => other.to_string().into_bytes(),
                }),
            };
            let ts = match ts {
                None => None,
                Some(f) => Some(
                    doc.get(f)
                        .and_then(serde_json::Value::as_i64)
                        .ok_or_else(|| format!("timestamp field `{f}` is missing or not an integer"))?,
                ),
            };
            Ok((key, ts))
        };
        let docs = [
            r#"{"user":"u1","ts":1000,"n":[1,{"a":null}]}"#,
            r#"{"ts":5,"user":7}"#,
            r#"{"user":{"b":1,"a":[true]},"ts":-3}"#,
            r#"{"user":"a\"b\u00e9","ts":1.5}"#,
            r#"{"user":null,"ts":1}"#,
            r#"{"user":"x","user":"y","ts":1,"ts":2}"#,
            r#"{"ts":18446744073709551615,"user":1e300}"#,
            r#"[1,2]"#,
            r#""text""#,
            r#"{"user":"x"} trailing"#,
            r#"{"user":"x","#,
            r#"{"user":1.0,"ts":3}"#,
            r#"{}"#,
        ];
        for doc in docs {
            for (k, t) in [
                (Some("user"), Some("ts")),
                (None, Some("ts")),
                (Some("user"), None),
                (None, None),
                (Some("ts"), Some("ts")),
            ] {
                let got = json_fields(doc.as_bytes(), k, t);
                let want = reference(doc, k, t);
                match (&got, &want) {
                    (Err(a), Err(b)) if a.starts_with("invalid JSON") && b.starts_with("invalid JSON") => {}
                    _ => assert_eq!(got, want, "{doc} with {k:?}, {t:?}"),
                }
            }
        }
    }

    #[test]
    fn csv_records_are_what_the_document_made() {
        // (columns, line, key field, timestamp field)
        type Case<'a> = (&'a [&'a str], &'a str, Option<&'a str>, Option<&'a str>);
        let cases: &[Case] = &[
            (&["ts", "word"], "1000,hello", Some("word"), Some("ts")),
            (&["word", "ts"], "hello, 1000", Some("word"), Some("ts")),
            (&["ts", "word"], "12,42", Some("word"), Some("ts")),
            (&["ts", "word", "x"], r#"5,"a, ""b""",1.5"#, Some("x"), Some("ts")),
            (&["b", "a", "b"], "1,2,3", Some("b"), None),
            (&["ts", "v"], "+7, -0.25e3", None, Some("ts")),
            (&["ts", "v"], "1,\"tab\there \u{e9}\"", Some("v"), Some("ts")),
            (&["ts", "v"], "1e3,x", None, Some("ts")),
            (&["ts", "v"], "1,", Some("v"), Some("ts")),
            (&["ts", "v"], "nan,inf", Some("v"), None),
            (&["ts", "v"], "99999999999999999999,x", Some("ts"), None),
            (&["ts", "v"], "1,x", Some("nope"), None),
            (&["ts", "v"], "1,x", None, Some("nope")),
        ];
        for (columns, line, key, ts) in cases {
            let want = csv_through_a_document(columns, line, *key, *ts);
            let cols: Vec<String> = columns.iter().map(|c| (*c).to_owned()).collect();
            let mut csv = CsvRecords::new(&cols, *key, *ts);
            let mut w = BatchWriter::new();
            let got = csv.push(line.as_bytes(), &mut w).map(|()| {
                let len = w.len();
                let batch = RecordBatch { bytes: w.finish(), len };
                let r = batch.records().next().unwrap();
                (r.key.map(<[u8]>::to_vec), r.timestamp, r.value.to_vec())
            });
            assert_eq!(got, want, "{line:?} with columns {columns:?}");
        }
        let mut csv = CsvRecords::new(&["a".to_owned(), "b".to_owned()], None, None);
        let mut w = BatchWriter::new();
        assert_eq!(
            csv.push(b"1", &mut w).unwrap_err(),
            "expected 2 comma-separated columns (a,b), found 1"
        );
        assert_eq!(csv.push(b"\"x,1", &mut w).unwrap_err(), "a quoted field is not closed");
        assert_eq!(csv.push(b"\"x\"y,1", &mut w).unwrap_err(), "unexpected `y` after a quoted field");
        assert_eq!(csv.push(b"\xff,1", &mut w).unwrap_err(), "the line is not UTF-8");
    }

    #[test]
    fn csv_fields_split_on_commas_and_honour_quotes() {
        assert_eq!(split_csv("1000,hello").unwrap(), ["1000", "hello"]);
        assert_eq!(split_csv(r#"1,"a, ""b""",c"#).unwrap(), ["1", r#"a, "b""#, "c"]);
        assert_eq!(split_csv("a,,").unwrap(), ["a", "", ""]);
        assert!(split_csv(r#""open"#).is_err());
    }
}
