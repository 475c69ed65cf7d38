//! Window assigners and triggers, and their configuration from a spec.

use crate::spec::{TimeCharacteristic, TriggerKind as SpecTrigger, WindowAssignerKind, WindowSpec};
use crate::time::TimeDomain;

/// Most windows one record may belong to (sliding windows and sliding
/// window joins alike).
pub const MAX_WINDOWS_PER_RECORD: u64 = 10_000;

/// Sliding windows of `size` every `slide` (both positive) put each record
/// in ⌈size / slide⌉ windows: at most [`MAX_WINDOWS_PER_RECORD`].
pub fn check_windows_per_record(size: i64, slide: i64) -> Result<(), String> {
    let per_record = size.unsigned_abs().div_ceil(slide.unsigned_abs().max(1));
    if per_record > MAX_WINDOWS_PER_RECORD {
        return Err(format!(
            "size_ms / slide_ms puts each record in {per_record} windows; at most {MAX_WINDOWS_PER_RECORD} are allowed"
        ));
    }
    Ok(())
}

pub use sluice_guest::Window;

/// Assigns a record's time to windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigner {
    /// Fixed size, no overlap.
    Tumbling {
        /// Length.
        size: i64,
        /// Shift of window starts from the epoch.
        offset: i64,
    },
    /// Fixed size, a new window every `slide`.
    Sliding {
        /// Length.
        size: i64,
        /// Distance between starts.
        slide: i64,
        /// Shift of window starts from the epoch.
        offset: i64,
    },
    /// `[t, t + gap)` per record, merged when they touch.
    Session {
        /// The gap.
        gap: i64,
    },
    /// One window for all time.
    Global,
}

impl Assigner {
    /// The windows of time `t`, appended to `out`.
    pub fn assign(&self, t: i64, out: &mut Vec<Window>) {
        match *self {
            Assigner::Tumbling { size, offset } => {
                let start = t.saturating_sub(t.wrapping_sub(offset).rem_euclid(size));
                out.push(Window {
                    start,
                    end: start.saturating_add(size),
                });
            }
            Assigner::Sliding { size, slide, offset } => {
                let last = t.saturating_sub(t.wrapping_sub(offset).rem_euclid(slide));
                let mut start = last;
                while start > t.saturating_sub(size) {
                    out.push(Window {
                        start,
                        end: start.saturating_add(size),
                    });
                    start = start.saturating_sub(slide);
                    if start == i64::MIN {
                        break;
                    }
                }
            }
            Assigner::Session { gap } => out.push(Window {
                start: t,
                end: t.saturating_add(gap),
            }),
            Assigner::Global => out.push(Window::GLOBAL),
        }
    }

    /// True for assigners whose windows merge.
    pub fn is_merging(&self) -> bool {
        matches!(self, Assigner::Session { .. })
    }
}

/// What fires a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerKind {
    /// When time (the watermark, or the clock) passes the window's end.
    Time(TimeDomain),
    /// Every `n` records of a key and window.
    Count(u64),
    /// Never (a global window without a trigger).
    Never,
}

/// A trigger: what fires a window, and whether firing purges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trigger {
    /// What fires.
    pub kind: TriggerKind,
    /// Clear the window's contents after each firing.
    pub purging: bool,
}

/// A validated window configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowConfig {
    /// Which windows.
    pub assigner: Assigner,
    /// Which time assigns windows.
    pub time: TimeDomain,
    /// When they fire.
    pub trigger: Trigger,
    /// Event time: how long after its end a window still takes records.
    pub allowed_lateness: i64,
}

impl WindowConfig {
    /// Validate a spec; the error says what is wrong.
    pub fn from_spec(spec: &WindowSpec) -> Result<Self, String> {
        let positive = |v: Option<i64>, name: &str| -> Result<i64, String> {
            match v {
                Some(v) if v > 0 => Ok(v),
                Some(v) => Err(format!("`{name}` must be positive, not {v}")),
                None => Err(format!("a {} window needs `{name}`", kind_name(spec.assigner))),
            }
        };
        let unused = |fields: &[(&str, bool)]| -> Result<(), String> {
            match fields.iter().find(|(_, set)| *set) {
                Some((name, _)) => Err(format!("`{name}` does not apply to a {} window", kind_name(spec.assigner))),
                None => Ok(()),
            }
        };
        let time = match spec.time {
            TimeCharacteristic::Event => TimeDomain::EventTime,
            TimeCharacteristic::Processing => TimeDomain::ProcessingTime,
        };
        let (assigner, default_trigger) = match spec.assigner {
            WindowAssignerKind::Tumbling => {
                unused(&[
                    ("slide_ms", spec.slide_ms.is_some()),
                    ("gap_ms", spec.gap_ms.is_some()),
                    ("size", spec.size.is_some()),
                ])?;
                let size = positive(spec.size_ms, "size_ms")?;
                (
                    Assigner::Tumbling {
                        size,
                        offset: spec.offset_ms.rem_euclid(size),
                    },
                    TriggerKind::Time(time),
                )
            }
            WindowAssignerKind::Sliding => {
                unused(&[("gap_ms", spec.gap_ms.is_some()), ("size", spec.size.is_some())])?;
                let size = positive(spec.size_ms, "size_ms")?;
                let slide = positive(spec.slide_ms, "slide_ms")?;
                check_windows_per_record(size, slide)?;
                (
                    Assigner::Sliding {
                        size,
                        slide,
                        offset: spec.offset_ms.rem_euclid(slide),
                    },
                    TriggerKind::Time(time),
                )
            }
            WindowAssignerKind::Session => {
                unused(&[
                    ("size_ms", spec.size_ms.is_some()),
                    ("slide_ms", spec.slide_ms.is_some()),
                    ("size", spec.size.is_some()),
                    ("offset_ms", spec.offset_ms != 0),
                ])?;
                (
                    Assigner::Session {
                        gap: positive(spec.gap_ms, "gap_ms")?,
                    },
                    TriggerKind::Time(time),
                )
            }
            WindowAssignerKind::Global => {
                unused(&[
                    ("size_ms", spec.size_ms.is_some()),
                    ("slide_ms", spec.slide_ms.is_some()),
                    ("gap_ms", spec.gap_ms.is_some()),
                    ("size", spec.size.is_some()),
                ])?;
                (Assigner::Global, TriggerKind::Never)
            }
            WindowAssignerKind::Count => {
                unused(&[
                    ("size_ms", spec.size_ms.is_some()),
                    ("slide_ms", spec.slide_ms.is_some()),
                    ("gap_ms", spec.gap_ms.is_some()),
                ])?;
                let size = match spec.size {
                    Some(n) if n > 0 => n,
                    _ => return Err("a count window needs `size` of at least 1".into()),
                };
                (Assigner::Global, TriggerKind::Count(size))
            }
        };
        let trigger = match &spec.trigger {
            None => Trigger {
                kind: default_trigger,
                purging: spec.assigner == WindowAssignerKind::Count,
            },
            Some(t) => {
                let kind = match t.kind {
                    SpecTrigger::EventTime => TriggerKind::Time(TimeDomain::EventTime),
                    SpecTrigger::ProcessingTime => TriggerKind::Time(TimeDomain::ProcessingTime),
                    SpecTrigger::Count => match t.count {
                        Some(n) if n > 0 => TriggerKind::Count(n),
                        _ => return Err("a count trigger needs `count` of at least 1".into()),
                    },
                };
                if t.count.is_some() && t.kind != SpecTrigger::Count {
                    return Err("`count` applies to a count trigger only".into());
                }
                if let (TriggerKind::Time(_), Assigner::Global) = (kind, assigner) {
                    return Err("a global window never ends, so a time trigger would never fire: use a count trigger".into());
                }
                Trigger { kind, purging: t.purging }
            }
        };
        if spec.allowed_lateness_ms < 0 {
            return Err("`allowed_lateness_ms` must not be negative".into());
        }
        if spec.allowed_lateness_ms > 0 && time == TimeDomain::ProcessingTime {
            return Err("`allowed_lateness_ms` applies to event-time windows only".into());
        }
        Ok(WindowConfig {
            assigner,
            time,
            trigger,
            allowed_lateness: spec.allowed_lateness_ms,
        })
    }

    /// When a window's state is purged, in its time domain; `None` for
    /// windows that never end.
    pub fn cleanup_time(&self, w: &Window) -> Option<i64> {
        if w.is_global() {
            return None;
        }
        Some(match self.time {
            TimeDomain::EventTime => w.max_timestamp().saturating_add(self.allowed_lateness),
            TimeDomain::ProcessingTime => w.max_timestamp(),
        })
    }

    /// True when a window is past its allowed lateness at `watermark`.
    pub fn is_late(&self, w: &Window, watermark: i64) -> bool {
        self.time == TimeDomain::EventTime && self.cleanup_time(w).is_some_and(|c| c <= watermark)
    }
}

fn kind_name(k: WindowAssignerKind) -> &'static str {
    match k {
        WindowAssignerKind::Tumbling => "tumbling",
        WindowAssignerKind::Sliding => "sliding",
        WindowAssignerKind::Session => "session",
        WindowAssignerKind::Global => "global",
        WindowAssignerKind::Count => "count",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(a: Assigner, t: i64) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        a.assign(t, &mut out);
        out.into_iter().map(|w| (w.start, w.end)).collect()
    }

    #[test]
    fn tumbling_and_sliding_windows_cover_the_time() {
        let t = Assigner::Tumbling { size: 1000, offset: 0 };
        assert_eq!(windows(t, 0), [(0, 1000)]);
        assert_eq!(windows(t, 999), [(0, 1000)]);
        assert_eq!(windows(t, -1), [(-1000, 0)]);
        let s = Assigner::Sliding {
            size: 1000,
            slide: 500,
            offset: 0,
        };
        assert_eq!(windows(s, 700), [(500, 1500), (0, 1000)]);
        assert_eq!(windows(s, 500), [(500, 1500), (0, 1000)]);
        assert_eq!(windows(s, 499), [(0, 1000), (-500, 500)]);
    }

    #[test]
    fn window_encoding_sorts_like_windows() {
        let ws = [
            Window { start: -5, end: 3 },
            Window { start: -5, end: 4 },
            Window { start: 0, end: 1 },
            Window::GLOBAL,
        ];
        for w in ws {
            assert_eq!(Window::decode(&w.encode()), Some(w));
        }
        let mut sorted = ws;
        sorted.sort_by_key(Window::encode);
        let mut expected = ws;
        expected.sort();
        assert_eq!(sorted, expected);
    }
}
