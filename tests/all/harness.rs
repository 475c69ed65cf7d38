//! Shared helpers: the engine, component paths, temp dirs, running jobs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

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
