//! Windows, the pure logic: assigners, triggers, allowed lateness,
//! slicing and the built-in aggregates. The window operator that keeps one
//! accumulator (or the elements) per key and window in keyed state is
//! [`crate::operator::window`].
//!
//! ```text
//!  record ─► assigner ─► windows ─► late? ──yes──► `late` side output (or dropped, counted)
//!                                     │ no
//!                                     ▼
//!            add to the window's contents (host keyed state: accumulator bytes or elements)
//!            trigger: timer at window end (event or processing time) / count
//!  watermark or clock passes a timer ─► fire: function(contents) ─► output
//!  watermark passes end + allowed lateness ─► purge the window's state
//! ```

mod assigner;
mod builtin;
mod sliced;

pub use assigner::{Assigner, MAX_WINDOWS_PER_RECORD, Trigger, TriggerKind, Window, WindowConfig, check_windows_per_record};
pub(crate) use builtin::Builtin;
pub(crate) use sliced::{Slices, Slicing};
