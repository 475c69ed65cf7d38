//! The buffer timeout: a heap of flush deadlines and the thread that sends a
//! producer's buffer once its deadline is up.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::lock;

/// A buffer the flusher sends when its timeout is up.
pub(super) trait Flush: Send + Sync {
    /// Send the buffer if it has waited `timeout` (or note that it is
    /// overdue, when there is no credit to send it).
    fn flush_due(&self, timeout: Duration);
}

/// Flushes buffers whose timeout is up, on its own thread ([`Flusher::run`]).
pub(super) struct Flusher {
    timeout: Duration,
    stopping: AtomicBool,
    timers: Mutex<BinaryHeap<Due>>,
    timers_cv: Condvar,
    next_due: AtomicU64,
}

/// A buffer's flush deadline (earliest first in the heap).
struct Due {
    at: Instant,
    seq: u64,
    buffer: Weak<dyn Flush>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.at.cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl Flusher {
    /// A flusher of buffers that wait at most `timeout`.
    pub(super) fn new(timeout: Duration) -> Self {
        Flusher {
            timeout,
            stopping: AtomicBool::new(false),
            timers: Mutex::default(),
            timers_cv: Condvar::new(),
            next_due: AtomicU64::new(0),
        }
    }

    /// Look at `buffer` at `at`.
    pub(super) fn schedule<F: Flush + 'static>(&self, at: Instant, buffer: &Arc<F>) {
        let seq = self.next_due.fetch_add(1, Ordering::Relaxed);
        let buffer: Weak<dyn Flush> = Arc::<F>::downgrade(buffer);
        lock(&self.timers).push(Due { at, seq, buffer });
        self.timers_cv.notify_one();
    }

    /// The flusher thread: flushes buffers whose timeout is up, until
    /// [`stop`](Flusher::stop).
    pub(super) fn run(&self) {
        let mut timers = lock(&self.timers);
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let now = Instant::now();
            let wait = match timers.peek() {
                None => Duration::from_secs(1),
                Some(d) if d.at > now => d.at - now,
                Some(_) => {
                    let due = timers.pop();
                    drop(timers);
                    if let Some(buffer) = due.and_then(|d| d.buffer.upgrade()) {
                        buffer.flush_due(self.timeout);
                    }
                    timers = lock(&self.timers);
                    continue;
                }
            };
            timers = self.timers_cv.wait_timeout(timers, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// End the flusher thread.
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.timers_cv.notify_all();
    }
}
