//! placeholder
use std::path::Path;
use std::sync::Arc;
/// Run a benchmark.
pub fn run(_e: &Arc<crate::wasm::WasmEngine>, name: &str, _n: Option<u64>, _u: &Path) -> anyhow::Result<String> {
    anyhow::bail!("unknown benchmark {name}")
}
