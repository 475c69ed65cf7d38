//! Calls into async clients (the object store's, etcd's) from synchronous
//! threads — the checkpoint writers, the coordinator, job threads — and
//! from inside other runtimes: each call runs on one small runtime of its
//! own, bounded in time.

use std::future::Future;
use std::io::ErrorKind;
use std::sync::OnceLock;
use std::time::Duration;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("io-clients")
            .enable_all()
            .build()
            .expect("building the I/O clients' runtime")
    })
}

/// Run `fut` on the I/O clients' runtime from any thread and wait for it,
/// at most `deadline` (then a `TimedOut` error naming `what`).
pub fn block<T: Send + 'static>(
    deadline: Duration,
    what: String,
    fut: impl Future<Output = std::io::Result<T>> + Send + 'static,
) -> std::io::Result<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime().spawn(async move {
        let r = match tokio::time::timeout(deadline, fut).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                ErrorKind::TimedOut,
                format!("{what}: no answer within {} ms", deadline.as_millis()),
            )),
        };
        let _ = tx.send(r);
    });
    rx.recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the I/O clients' runtime stopped")))
}

/// Start `fut` on the I/O clients' runtime and return at once.
pub fn spawn(fut: impl Future<Output = ()> + Send + 'static) {
    runtime().spawn(fut);
}
