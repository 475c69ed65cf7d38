//! The PostgreSQL sink: rows into a table, exactly once by a two-phase
//! commit tied to checkpoints.
//!
//! ```text
//! first batch after a barrier ─► BEGIN; one INSERT per batch
//! barrier n                   ─► PREPARE TRANSACTION '<prefix>-part-<subtask>-<n>'
//! checkpoint n done           ─► COMMIT PREPARED (on notify, by whoever hosts the subtask)
//! restore of checkpoint n     ─► the prepared transactions it lists are committed,
//!                                every other one of this subtask rolled back
//! ```
//!
//! A batch goes in as one statement: the records' JSON objects as one JSON
//! array, `json_populate_recordset` turning the same-named fields into the
//! table's column types, so PostgreSQL does the conversions and names a
//! field that does not fit. `delivery = "at-least-once"` commits every batch
//! as it comes; `"upsert"` does too, with `ON CONFLICT (key) DO UPDATE`,
//! keeping a key's last record of each batch.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

use super::json_sink::format_record;
use super::{ConnectorError, SinkWriter, off_runtime};
use crate::spec::{Delivery, SinkFormat, SinkSpec};
use crate::types::RecordBatch;

/// How long connecting may take unless the spec says otherwise.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// A PostgreSQL sink subtask.
pub struct PostgresSink {
    sink: String,
    client: Client,
    delivery: Delivery,
    insert: postgres::Statement,
    table: String,
    /// upsert: the key columns, to keep a key's last record of a batch.
    key_columns: Vec<String>,
    prefix: String,
    subtask: u32,
    format: SinkFormat,
    in_transaction: bool,
    /// Prepared transactions not yet known to be committed: (checkpoint, name).
    pending: Vec<(u64, String)>,
    /// The newest completed checkpoint (shared with the coordinator).
    completed: Arc<AtomicU64>,
    rows: Vec<u8>,
}

/// What happened to the prepared transactions found at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Committed: those the restored checkpoint lists.
    pub committed: Vec<String>,
    /// Rolled back: prepared after the restored checkpoint (or by an earlier
    /// run, on a fresh start); their rows are written again.
    pub rolled_back: Vec<String>,
}

fn failed(sink: &str, message: String) -> ConnectorError {
    ConnectorError::Sink {
        sink: sink.to_owned(),
        message,
    }
}

/// A PostgreSQL error with its code, detail and hint (a connection error
/// with its cause).
fn describe_error(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = format!("{} ({})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            m.push_str(&format!("; {d}"));
        }
        if let Some(h) = db.hint() {
            m.push_str(&format!("; hint: {h}"));
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(&format!(": {s}"));
        source = s.source();
    }
    m
}

/// `"name"`, with quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `schema.table` or `table`, quoted.
fn quote_table(table: &str) -> String {
    table.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// Where a config points, for messages: `host:port/database as user`, no secrets.
fn endpoint(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(h) => h.clone(),
                #[cfg(unix)]
                postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let hosts = if hosts.is_empty() {
        "localhost:5432".to_owned()
    } else {
        hosts.join(",")
    };
    let db = config.get_dbname().or(config.get_user()).unwrap_or("postgres");
    format!("{hosts}/{db}")
}

/// Connect as the sink `spec` says; the error names the server and the cause.
fn connect(spec: &SinkSpec) -> Result<(Client, String), ConnectorError> {
    let url = spec.url.as_deref().unwrap_or_default();
    let mut config: Config = url
        .parse()
        .map_err(|e| failed(&spec.name, format!("`url` is not a PostgreSQL connection string: {e}")))?;
    if let Some(p) = &spec.password {
        config.password(p);
    }
    config
        .connect_timeout(Duration::from_millis(spec.connect_timeout_ms.unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS)))
        .keepalives_idle(Duration::from_secs(10))
        .application_name("sluice");
    let at = endpoint(&config);
    let client = config
        .connect(NoTls)
        .map_err(|e| failed(&spec.name, format!("cannot connect to PostgreSQL at {at}: {}", describe_error(&e))))?;
    Ok((client, at))
}

/// The transaction-id prefix of an exactly-once sink (the graph fills in
/// the default).
fn prefix(spec: &SinkSpec) -> String {
    spec.transaction_prefix.clone().unwrap_or_else(|| format!("sluice-{}", spec.name))
}

/// True for the names this sink gives prepared transactions.
fn is_part_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("part-") else { return false };
    let rest = rest.strip_suffix("-end").unwrap_or(rest);
    let mut parts = rest.split('-');
    let ok = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

impl PostgresSink {
    /// Connect, check the table, and settle the prepared transactions of
    /// earlier runs: those `restored` lists (checkpoint, names) are
    /// committed, every other one of this subtask is rolled back.
    pub fn open(
        spec: &SinkSpec,
        subtask: u32,
        restored: Option<(u64, &[String])>,
        completed: Arc<AtomicU64>,
    ) -> Result<(Self, Recovered), ConnectorError> {
        let (mut client, at) = connect(spec)?;
        let name = spec.name.as_str();
        let delivery = spec.delivery.unwrap_or_default();
        let table = spec.table.clone().unwrap_or_default();
        let quoted = quote_table(&table);
        let q = |client: &mut Client, sql: &str, params: &[&(dyn postgres::types::ToSql + Sync)]| client.query(sql, params);
        let columns = q(
            &mut client,
            "SELECT a.attname::text, (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
             FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&quoted],
        )
        .map_err(|e| match e.code() {
            Some(c) if *c == SqlState::UNDEFINED_TABLE || *c == SqlState::INVALID_SCHEMA_NAME => {
                failed(name, format!("table `{table}` does not exist in {at}"))
            }
            _ => failed(name, format!("reading the columns of `{table}` in {at}: {}", describe_error(&e))),
        })?;
        let table_columns: Vec<(String, bool)> = columns.iter().map(|r| (r.get(0), r.get(1))).collect();
        let all: Vec<&str> = table_columns.iter().map(|(c, _)| c.as_str()).collect();
        let columns: Vec<String> = match &spec.columns {
            Some(cols) => {
                if let Some(c) = cols.iter().find(|c| !all.contains(&c.as_str())) {
                    return Err(failed(
                        name,
                        format!("column `{c}` is not in table `{table}` (it has {})", all.join(", ")),
                    ));
                }
                cols.clone()
            }
            None => table_columns
                .iter()
                .filter(|(_, default)| !default)
                .map(|(c, _)| c.clone())
                .collect(),
        };
        if columns.is_empty() {
            return Err(failed(
                name,
                format!("table `{table}` has no column without a default; name the columns to fill in `columns`"),
            ));
        }
        let key_columns = match (delivery, &spec.key_columns) {
            (Delivery::Upsert, Some(k)) => k.clone(),
            (Delivery::Upsert, None) => {
                let pk = q(
                    &mut client,
                    "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a \
                     ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                     WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
                     ORDER BY array_position(i.indkey::int2[], a.attnum)",
                    &[&quoted],
                )
                .map_err(|e| failed(name, format!("reading the primary key of `{table}`: {}", describe_error(&e))))?;
                let pk: Vec<String> = pk.iter().map(|r| r.get(0)).collect();
                if pk.is_empty() {
                    return Err(failed(
                        name,
                        format!("table `{table}` has no primary key; upsert needs one, or `key_columns` naming a unique key"),
                    ));
                }
                pk
            }
            _ => Vec::new(),
        };
        if let Some(k) = key_columns.iter().find(|k| !columns.contains(k)) {
            return Err(failed(name, format!("key column `{k}` is not one of the columns the sink fills")));
        }
        let cols = columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
        let mut sql = format!("INSERT INTO {quoted} ({cols}) SELECT {cols} FROM json_populate_recordset(NULL::{quoted}, $1::text::json)");
        if delivery == Delivery::Upsert {
            let keys = key_columns.iter().map(|c| quote_ident(c)).collect::<Vec<_>>().join(", ");
            let set: Vec<String> = columns
                .iter()
                .filter(|c| !key_columns.contains(c))
                .map(|c| format!("{} = EXCLUDED.{}", quote_ident(c), quote_ident(c)))
                .collect();
            if set.is_empty() {
                sql.push_str(&format!(" ON CONFLICT ({keys}) DO NOTHING"));
            } else {
                sql.push_str(&format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", ")));
            }
        }
        let insert = client
            .prepare(&sql)
            .map_err(|e| failed(name, format!("table `{table}` in {at}: {}", describe_error(&e))))?;
        let prefix = prefix(spec);
        let mut recovered = Recovered::default();
        if delivery == Delivery::ExactlyOnce {
            let max: String = q(&mut client, "SHOW max_prepared_transactions", &[])
                .map_err(|e| failed(name, describe_error(&e)))?
                .first()
                .map(|r| r.get(0))
                .unwrap_or_default();
            if max.trim() == "0" {
                return Err(failed(
                    name,
                    format!(
                        "the PostgreSQL server at {at} has max_prepared_transactions = 0, so it cannot prepare transactions, \
                         which delivery = \"exactly-once\" needs; set it to at least the sink's parallelism (in postgresql.conf, \
                         then restart the server), or use delivery = \"at-least-once\" or \"upsert\""
                    ),
                ));
            }
            recovered = settle(&mut client, name, &prefix, subtask, spec.parallelism, restored)?;
        }
        Ok((
            PostgresSink {
                sink: spec.name.clone(),
                client,
                delivery,
                insert,
                table,
                key_columns,
                prefix,
                subtask,
                format: spec.format,
                in_transaction: false,
                pending: Vec::new(),
                completed,
                rows: Vec::new(),
            },
            recovered,
        ))
    }

    /// The batch as one JSON array of objects (upsert: a key's last record).
    fn rows_of(&mut self, batch: &RecordBatch) -> Result<usize, ConnectorError> {
        self.rows.clear();
        self.rows.push(b'[');
        let mut spans = Vec::with_capacity(batch.len);
        for (i, r) in batch.records().enumerate() {
            if i > 0 {
                self.rows.push(b',');
            }
            let start = self.rows.len();
            format_record(self.format, r.key, r.value, r.timestamp, &mut self.rows);
            if self.rows.get(start) != Some(&b'{') {
                let shown = String::from_utf8_lossy(&self.rows[start..self.rows.len().min(start + 80)]).into_owned();
                return Err(failed(
                    &self.sink,
                    format!(
                        "a record's value is not a JSON object, so it has no fields for the columns of `{}`: {shown}",
                        self.table
                    ),
                ));
            }
            spans.push(start..self.rows.len());
        }
        self.rows.push(b']');
        if self.delivery != Delivery::Upsert {
            return Ok(spans.len());
        }
        // Keep each key's last record: one statement may not update a row twice.
        let mut last = std::collections::HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            let obj: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&self.rows[span.clone()])
                .map_err(|e| failed(&self.sink, format!("a record's value is not a JSON object: {e}")))?;
            let key: Vec<&serde_json::Value> = self
                .key_columns
                .iter()
                .map(|k| obj.get(k).unwrap_or(&serde_json::Value::Null))
                .collect();
            last.insert(serde_json::to_string(&key).unwrap_or_default(), i);
        }
        if last.len() == spans.len() {
            return Ok(spans.len());
        }
        let mut keep: Vec<usize> = last.into_values().collect();
        keep.sort_unstable();
        let mut rows = Vec::with_capacity(self.rows.len());
        rows.push(b'[');
        for (n, i) in keep.iter().enumerate() {
            if n > 0 {
                rows.push(b',');
            }
            rows.extend_from_slice(&self.rows[spans[*i].clone()]);
        }
        rows.push(b']');
        self.rows = rows;
        Ok(keep.len())
    }
}

/// Settle the prepared transactions of this subtask (and of the earlier
/// subtasks `i` with `i % parallelism == subtask`, so a rescaled sink leaves
/// none behind): commit those `restored` lists, roll back the rest.
fn settle(
    client: &mut Client,
    sink: &str,
    prefix: &str,
    subtask: u32,
    parallelism: u32,
    restored: Option<(u64, &[String])>,
) -> Result<Recovered, ConnectorError> {
    let head = format!("{prefix}-");
    let rows = client
        .query(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, $1) ORDER BY gid",
            &[&head],
        )
        .map_err(|e| failed(sink, format!("listing prepared transactions: {}", describe_error(&e))))?;
    let keep = restored.map_or(&[][..], |(_, k)| k);
    let mut out = Recovered::default();
    for row in rows {
        let gid: String = row.get(0);
        let name = &gid[head.len()..];
        if !is_part_name(name) {
            continue;
        }
        let writer = name["part-".len()..].split('-').next().and_then(|n| n.parse::<u32>().ok());
        if writer.is_none_or(|w| w % parallelism.max(1) != subtask) {
            continue;
        }
        let commit = keep.iter().any(|k| k == name);
        let sql = format!("{} PREPARED '{gid}'", if commit { "COMMIT" } else { "ROLLBACK" });
        match client.batch_execute(&sql) {
            Ok(()) => {}
            // Another process settled it between the listing and now.
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => return Err(failed(sink, format!("{sql}: {}", describe_error(&e)))),
        }
        if commit {
            out.committed.push(name.to_owned());
        } else {
            out.rolled_back.push(name.to_owned());
        }
    }
    Ok(out)
}

impl SinkWriter for PostgresSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<(), ConnectorError> {
        if batch.len == 0 {
            return Ok(());
        }
        let n = self.rows_of(batch)?;
        if self.delivery == Delivery::ExactlyOnce && !self.in_transaction {
            self.client
                .batch_execute("BEGIN")
                .map_err(|e| failed(&self.sink, format!("BEGIN: {}", describe_error(&e))))?;
            self.in_transaction = true;
        }
        let text = std::str::from_utf8(&self.rows).map_err(|e| failed(&self.sink, format!("rows are not UTF-8: {e}")))?;
        self.client.execute(&self.insert, &[&text]).map_err(|e| {
            failed(
                &self.sink,
                format!("inserting {n} rows into `{}`: {}", self.table, describe_error(&e)),
            )
        })?;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnectorError> {
        // Exactly-once rows become visible when their checkpoint completes;
        // the other deliveries commit every batch.
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ConnectorError> {
        Ok(())
    }

    fn prepare_commit(&mut self, checkpoint: u64, last: bool) -> Result<Vec<String>, ConnectorError> {
        if self.delivery != Delivery::ExactlyOnce {
            return Ok(Vec::new());
        }
        let done = self.completed.load(Ordering::SeqCst);
        self.pending.retain(|(id, _)| *id > done);
        if self.in_transaction {
            let name = format!("part-{}-{checkpoint:08}{}", self.subtask, if last { "-end" } else { "" });
            let sql = format!("PREPARE TRANSACTION '{}-{name}'", self.prefix);
            self.client
                .batch_execute(&sql)
                .map_err(|e| failed(&self.sink, format!("{sql}: {}", describe_error(&e))))?;
            self.in_transaction = false;
            self.pending.push((checkpoint, name));
        }
        Ok(self.pending.iter().map(|(_, n)| n.clone()).collect())
    }
}

/// Commit the prepared transactions `names` of a completed checkpoint
/// (idempotent: one already committed is fine).
pub fn commit(spec: &SinkSpec, names: &[String]) -> Result<(), ConnectorError> {
    if names.is_empty() {
        return Ok(());
    }
    off_runtime(|| commit_now(spec, names)).unwrap_or_else(|| Err(failed(&spec.name, "committing panicked".into())))
}

fn commit_now(spec: &SinkSpec, names: &[String]) -> Result<(), ConnectorError> {
    let (mut client, at) = connect(spec)?;
    let prefix = prefix(spec);
    for name in names {
        if !is_part_name(name) {
            return Err(failed(&spec.name, format!("{name:?} is not a transaction this sink prepared")));
        }
        let sql = format!("COMMIT PREPARED '{prefix}-{name}'");
        match client.batch_execute(&sql) {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::UNDEFINED_OBJECT) => {}
            Err(e) => return Err(failed(&spec.name, format!("{sql} at {at}: {}", describe_error(&e)))),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_names() {
        assert!(is_part_name("part-0-00000003"));
        assert!(is_part_name("part-12-00000003-end"));
        assert!(!is_part_name("part-0"));
        assert!(!is_part_name("part-0-3'; DROP TABLE x; --"));
        assert!(!is_part_name("part-a-1"));
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_table("public.counts"), "\"public\".\"counts\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn endpoints_name_no_secret() {
        let c: Config = "postgres://u:secret@10.0.0.1:6000/db".parse().unwrap();
        assert_eq!(endpoint(&c), "10.0.0.1:6000/db");
    }
}
