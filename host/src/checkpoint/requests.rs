//! Savepoint requests through files, for a job run by `sluice run` in
//! another process: `sluice savepoint DIR` drops `<name>.request` into the
//! checkpoint directory's `requests/`; the job's JobMaster picks it up, puts
//! it in the coordinator's mailbox and answers in `<name>.done`. A server's
//! jobs are asked through the API instead.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The requests directory of a checkpoint directory.
pub fn requests_dir(checkpoints: &Path) -> PathBuf {
    checkpoints.join("requests")
}

/// Requests waiting in `checkpoints`' requests directory, oldest name
/// first, with their `stop` flag; `seen` are skipped.
pub fn poll(checkpoints: &Path, seen: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let Ok(entries) = std::fs::read_dir(requests_dir(checkpoints)) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, bool)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "request") && !seen.contains(p))
        .map(|p| {
            let stop = std::fs::read_to_string(&p).is_ok_and(|t| t.trim() == "stop");
            (p, stop)
        })
        .collect();
    found.sort();
    found
}

/// Answer a request: `<name>.done` holds the path or the error.
pub fn respond(request: &Path, result: Result<PathBuf, String>) {
    let text = match result {
        Ok(p) => format!("ok {}", p.display()),
        Err(e) => format!("error {e}"),
    };
    let _ = std::fs::write(request.with_extension("done"), text);
    let _ = std::fs::remove_file(request);
}

/// Ask the job whose checkpoints live in `dir` for a savepoint (the job
/// polls for requests), and wait for its path.
pub fn request_savepoint(dir: &Path, stop: bool, timeout: Duration) -> anyhow::Result<PathBuf> {
    let requests = requests_dir(dir);
    std::fs::create_dir_all(&requests)?;
    let name = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
    );
    let tmp = requests.join(format!("{name}.tmp"));
    std::fs::write(&tmp, if stop { "stop" } else { "savepoint" })?;
    let req = requests.join(format!("{name}.request"));
    std::fs::rename(&tmp, &req)?;
    let done = requests.join(format!("{name}.done"));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(text) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            return match text.split_once(' ') {
                Some(("ok", p)) => Ok(PathBuf::from(p)),
                Some((_, e)) => Err(anyhow::anyhow!("{e}")),
                None => Err(anyhow::anyhow!("malformed answer {text:?}")),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&req);
    anyhow::bail!(
        "no answer within {} s: is the job running with checkpoints in {}?",
        timeout.as_secs(),
        dir.display()
    )
}
