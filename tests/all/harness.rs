//! Shared helpers: the engine, component paths, temp dirs, running jobs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sluice::cluster::{JobSummary, RunOptions, run_job};
use sluice::job::{JobError, JobGraph, JobSpec};
use sluice::wasm::WasmEngine;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned()
}

/// The release `sluice` binary (scripts/test builds it before the tests).
pub fn sluice_bin() -> PathBuf {
    let p = root().join("target/release/sluice");
    assert!(p.exists(), "{} is missing: scripts/test builds it", p.display());
    p
}

/// A built component from `udfs/`.
pub fn udf(name: &str) -> PathBuf {
    let p = root().join("udfs/target/wasm32-wasip2/release").join(format!("{name}.wasm"));
    assert!(p.exists(), "{} is missing: run scripts/build-udfs (scripts/test does)", p.display());
    p
}

pub fn engine() -> Arc<WasmEngine> {
    static ENGINE: OnceLock<Arc<WasmEngine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| WasmEngine::new(Some(root().join("target/test-component-cache"))).expect("engine"))
        .clone()
}

/// A fresh, empty directory under the target dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = root()
        .join("target/test-tmp")
        .join(format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Validate and run a TOML job whose relative paths are under `dir`.
pub fn run_toml(toml: &str, dir: &Path) -> Result<JobSummary, JobError> {
    let graph = JobGraph::build(JobSpec::from_toml(toml)?, dir)?;
    run_job(&graph, &engine(), RunOptions::default())?.wait()
}

/// The JSON lines of a file.
pub fn read_json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// A TOML string literal for a path.
pub fn lit(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A tool scripts/services-setup links under target/tools, else from PATH.
pub(crate) fn tool(name: &str) -> PathBuf {
    let linked = root().join("target/tools").join(name);
    if linked.exists() { linked } else { PathBuf::from(name) }
}

pub(crate) fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An s3s-fs S3 server over a directory (access key `sluice`, secret
/// `sluice-secret`), with the buckets `tansu` and `sluice-ha`; killed by its
/// pid on drop.
pub(crate) struct S3 {
    pub(crate) port: u16,
    child: Option<Child>,
    pub(crate) dir: PathBuf,
}

impl S3 {
    pub(crate) fn start(name: &str) -> S3 {
        let dir = temp_dir(&format!("s3-{name}"));
        for b in ["tansu", "sluice-ha"] {
            std::fs::create_dir_all(dir.join(b)).unwrap();
        }
        let mut s3 = S3 {
            port: free_port(),
            child: None,
            dir,
        };
        s3.resume();
        s3
    }

    /// SIGKILL the server (the directory stays).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory.
    pub(crate) fn resume(&mut self) {
        self.stop();
        let child = Command::new(tool("s3s-fs"))
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--access-key",
                "sluice",
                "--secret-key",
                "sluice-secret",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs: scripts/services-setup links it under target/tools");
        self.child = Some(child);
        wait_for_port(self.port, "s3s-fs");
    }

    /// The `AWS_*` variables of a client of this server.
    pub(crate) fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "sluice".into()),
            ("AWS_SECRET_ACCESS_KEY", "sluice-secret".into()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
