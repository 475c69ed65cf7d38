//! The guest log of one job: the newest lines every guest instance of the
//! job wrote through the WIT `log` import, after the per-instance rate limit.
//!
//! The buffer is bounded (oldest lines go first), so a guest that floods its
//! log costs the host a fixed amount of memory; how many lines the rate
//! limit and the bound dropped is counted and shown with the lines.
//!
//! Guest text is escaped on the way in ([`escape_control`]): a message with a
//! newline, a carriage return or a terminal escape cannot forge a line of
//! the server's own log.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write;
use std::sync::Mutex;

use serde::Serialize;

/// One guest log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogLine {
    /// Processing time it was written, ms since the Unix epoch.
    pub time_ms: i64,
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// The operator whose guest wrote it.
    pub operator: String,
    /// The subtask.
    pub subtask: u32,
    /// The text (cut at 4 KiB).
    pub message: String,
}

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<LogLine>,
    written: u64,
    rate_limited: u64,
}

/// The newest `capacity` guest log lines of a job.
#[derive(Debug)]
pub struct GuestLogBuffer {
    capacity: usize,
    inner: Mutex<Inner>,
}

/// A copy of a job's log.
#[derive(Debug, Clone, Serialize)]
pub struct LogSnapshot {
    /// Lines kept, oldest first.
    pub lines: Vec<LogLine>,
    /// Lines accepted by the rate limit since the job started.
    pub written: u64,
    /// Lines the rate limit dropped.
    pub rate_limited: u64,
    /// Accepted lines no longer kept because newer ones replaced them.
    pub evicted: u64,
}

impl GuestLogBuffer {
    /// A buffer keeping the newest `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        GuestLogBuffer {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keep a line that passed the rate limit.
    pub fn push(&self, line: LogLine) {
        let mut i = self.lock();
        if i.lines.len() == self.capacity {
            i.lines.pop_front();
        }
        i.lines.push_back(line);
        i.written += 1;
    }

    /// A line of the host itself about the job (what a restore did, a
    /// warning about its spec), beside its guests' lines; `operator` is the
    /// node it is about.
    pub fn host(&self, level: &'static str, operator: &str, subtask: u32, message: String) {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        self.push(LogLine {
            time_ms,
            level,
            operator: operator.to_owned(),
            subtask,
            message,
        });
    }

    /// Count lines the rate limit dropped.
    pub fn rate_limited(&self, n: u64) {
        self.lock().rate_limited += n;
    }

    /// The newest `tail` lines and the counters.
    pub fn snapshot(&self, tail: usize) -> LogSnapshot {
        let i = self.lock();
        let skip = i.lines.len().saturating_sub(tail);
        LogSnapshot {
            lines: i.lines.iter().skip(skip).cloned().collect(),
            written: i.written,
            rate_limited: i.rate_limited,
            evicted: i.written - i.lines.len() as u64,
        }
    }
}

/// `text` with every control character (C0, DEL, C1) and the Unicode line
/// and paragraph separators written as an escape: `\n`, `\r`, `\t`, or
/// `\u{..}`. Borrowed when there is none (the common case).
pub fn escape_control(text: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert!(matches!(escape_control("plain text, ünïcode"), Cow::Borrowed(_)));
        assert_eq!(
            escape_control("ok\n2024-01-01T00:00:00Z ERROR forged\r\tx\u{1b}[31m\u{7f}\u{85}\u{2028}"),
            "ok\\n2024-01-01T00:00:00Z ERROR forged\\r\\tx\\u{1b}[31m\\u{7f}\\u{85}\\u{2028}"
        );
        assert!(!escape_control("a\nb\rc").contains(['\n', '\r']));
    }

    fn line(n: usize) -> LogLine {
        LogLine {
            time_ms: 0,
            level: "info",
            operator: "op".into(),
            subtask: 0,
            message: n.to_string(),
        }
    }

    #[test]
    fn keeps_the_newest_lines_and_counts_the_rest() {
        let b = GuestLogBuffer::new(3);
        for n in 0..5 {
            b.push(line(n));
        }
        b.rate_limited(7);
        let s = b.snapshot(2);
        assert_eq!(s.lines.iter().map(|l| l.message.as_str()).collect::<Vec<_>>(), ["3", "4"]);
        assert_eq!((s.written, s.rate_limited, s.evicted), (5, 7, 2));
    }
}
