//! Listening: the accept loop and the bounds of every connection.
//!
//! ```text
//!  accept ── error (EMFILE, ENFILE, …) ──► sleep 10 ms, doubling to 1 s; at most
//!    │                                      one log line a second, counting the rest
//!    ├── max_connections open ──► "503", closed at once (no task, no buffer)
//!    ▼
//!  connection task: hyper HTTP/1.1
//!    ├─ headers must arrive within header_read_timeout_ms (hyper, with TokioTimer);
//!    │  a kept-alive connection waits as long for its next request
//!    ├─ bodies: admitted by the body budgets, read by body_read_timeout_ms (routes)
//!    └─ idle watchdog: no request being handled and no byte moved either way
//!       for idle_timeout_ms (a client that stopped reading its answer) ─► closed
//! ```
//!
//! Every connection holds a permit of the connection semaphore until its
//! task ends, so the process never holds more sockets than
//! `max_connections` plus the listener. Without the backoff, an accept loop
//! at the file limit spins: `accept` fails at once, again and again, and
//! each failure was a log line.

use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::routes::Server;

/// Shortest and longest pause after a failed accept.
const BACKOFF_MIN: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Least time between two log lines about failed accepts (or refused
/// connections).
const LOG_EVERY: Duration = Duration::from_secs(1);

/// The answer to a connection over `max_connections`, written without
/// waiting (if the socket cannot take it now, the connection is just closed).
static BUSY: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":{"code":"server_busy","message":"the server has max_connections connections open; retry later"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\nretry-after: 1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// A log line at most every [`LOG_EVERY`], counting the events in between.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(events suppressed since the last line)` when a line may be
    /// written now.
    fn hit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The pause after failed accepts: 10 ms, doubling to 1 s, back to none
/// after a success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    delay: Duration,
    log: LogLimit,
}

impl AcceptBackoff {
    /// An accept failed at `now`: how long to pause, and whether to log
    /// (with how many failures went unlogged).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.delay = (self.delay * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
        (self.delay, self.log.hit(now))
    }

    fn succeeded(&mut self) {
        self.delay = Duration::ZERO;
    }
}

/// What a connection did last: when a byte last moved, and how many
/// requests are being handled.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        self.touch_at(Instant::now());
    }

    fn touch_at(&self, now: Instant) {
        let ms = u64::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has been idle at `now` (nothing handled,
    /// nothing moved); zero while a request is being handled.
    fn idle_at(&self, now: Instant) -> Duration {
        if self.busy.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.start)
            .saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Counts a request as being handled while it lives.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: &Arc<Activity>) -> Self {
        a.busy.fetch_add(1, Ordering::Relaxed);
        Busy(a.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Resolves once the connection has been idle for `timeout`.
async fn idle(activity: Arc<Activity>, timeout: Duration) {
    loop {
        let idle = activity.idle_at(Instant::now());
        if idle >= timeout {
            return;
        }
        tokio::time::sleep(timeout - idle).await;
    }
}

/// A stream that records when bytes move.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Serve one connection until it ends, times out or goes idle.
async fn connection(server: Arc<Server>, stream: TcpStream) {
    let limits = server.config.limits.clone();
    let activity = Activity::new();
    activity.touch();
    let io = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let handling = activity.clone();
    let svc = service_fn(move |req| {
        let s = server.clone();
        let busy = Busy::new(&handling);
        async move {
            let reply = s.handle(req).await;
            drop(busy);
            Ok::<_, Infallible>(reply)
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = idle(activity, Duration::from_millis(limits.idle_timeout_ms)) => {
            tracing::debug!(idle_timeout_ms = limits.idle_timeout_ms, "closing an idle connection");
        }
    }
}

/// Run the server until Ctrl-C or SIGTERM; `on_ready` gets the address it
/// listens on. At shutdown every job is cancelled.
pub async fn serve(server: Arc<Server>, on_ready: impl FnOnce(SocketAddr)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&server.config.listen).await?;
    on_ready(listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let slots = Arc::new(Semaphore::new(server.config.limits.max_connections));
    let disk = tokio::spawn(disk_watchdog(server.clone()));
    let mut backoff = AcceptBackoff::default();
    let mut refused = LogLimit::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        let (pause, log) = backoff.failed(Instant::now());
                        if let Some(suppressed) = log {
                            tracing::warn!(error = %e, suppressed, retry_in_ms = pause.as_millis() as u64, "accept failed");
                        }
                        tokio::time::sleep(pause).await;
                        continue;
                    }
                };
                backoff.succeeded();
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    let _ = stream.try_write(&BUSY);
                    if let Some(suppressed) = refused.hit(Instant::now()) {
                        tracing::warn!(max_connections = server.config.limits.max_connections, suppressed, "connection refused: too many open");
                    }
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    connection(server, stream).await;
                    drop(permit);
                });
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    disk.abort();
    tracing::info!("shutting down: cancelling every job");
    server.cancel_all();
    for _ in 0..100 {
        if server.all_jobs_ended() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Every `disk_check_interval_ms`, measure the disk use of tenants with
/// jobs that write, and fail those jobs of a tenant over its quota.
async fn disk_watchdog(server: Arc<Server>) {
    let every = Duration::from_millis(server.config.limits.disk_check_interval_ms);
    loop {
        tokio::time::sleep(every).await;
        let s = server.clone();
        // One measurement at a time: the next waits for this one.
        let _ = tokio::task::spawn_blocking(move || s.enforce_disk_quotas()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_are_logged_once_a_second() {
        let mut b = AcceptBackoff::default();
        let t0 = Instant::now();
        let pauses: Vec<u64> = (0..9).map(|_| b.failed(t0).0.as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // The first failure was logged; the eight after it in the same second were not.
        let (_, log) = b.failed(t0 + Duration::from_millis(999));
        assert_eq!(log, None);
        let (_, log) = b.failed(t0 + Duration::from_secs(1));
        assert_eq!(log, Some(9));
        b.succeeded();
        assert_eq!(b.failed(t0 + Duration::from_secs(5)), (BACKOFF_MIN, Some(0)));
    }

    #[test]
    fn the_busy_answer_is_well_formed() {
        let text = std::str::from_utf8(&BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "server_busy");
    }

    #[test]
    fn a_connection_is_idle_only_when_nothing_is_handled_or_moving() {
        let a = Activity::new();
        let t = a.start;
        a.touch_at(t + Duration::from_secs(1));
        assert_eq!(a.idle_at(t + Duration::from_secs(3)), Duration::from_secs(2));
        let busy = Busy::new(&a);
        assert_eq!(a.idle_at(t + Duration::from_secs(10)), Duration::ZERO, "a request is being handled");
        drop(busy);
        // The end of a request counts as activity.
        assert!(a.idle_at(t + Duration::from_secs(10)) >= Duration::from_secs(9));
        a.touch_at(t + Duration::from_secs(10));
        assert_eq!(a.idle_at(t + Duration::from_secs(10)), Duration::ZERO);
    }

    #[tokio::test]
    async fn the_watchdog_fires_after_the_timeout() {
        let a = Activity::new();
        a.touch();
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), idle(a, Duration::from_millis(50)))
            .await
            .expect("the watchdog fired");
        assert!(started.elapsed() >= Duration::from_millis(50));
    }
}
