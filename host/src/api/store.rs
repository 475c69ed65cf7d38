//! A tenant's directory: its content-addressed components and its file area.
//!
//! ```text
//! <data_dir>/tenants/<id>/components/<sha256>.wasm   the bytes, as uploaded
//!                                   /<sha256>.json   what validation found
//!                        /files/…                    inputs and outputs of jobs
//!                        /jobs/<job id>/checkpoints/ checkpoints and savepoints
//! ```
//!
//! Components are opened through a cap-std [`Dir`], so no name can leave the
//! directory. Files are named by relative paths of plain components only
//! (no `..`, no root, no `.`), checked by [`safe_relative`] before any
//! path is built, and opened through the [`FileArea`], which follows no
//! link and opens no special file. Writes go to a temporary name first and
//! are renamed into place, so a failed upload leaves nothing behind.

use std::io::Write;
use std::path::{Component as PathPart, Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use super::ApiError;
use super::files::{FileArea, Usage, usage};
use crate::wasm::{WasmEngine, WasmError};

/// What the server knows of a stored component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentMeta {
    /// `sha256:<hex>`.
    pub digest: String,
    /// The Sluice world it exports.
    pub world: String,
    /// Size in bytes.
    pub size: u64,
    /// What it imports.
    pub imports: Vec<String>,
    /// Upload time, ms since the Unix epoch.
    pub uploaded_ms: i64,
}

/// Interfaces a component may import: WASI (linked, granting nothing) and
/// Sluice's own.
const ALLOWED_IMPORT_PREFIXES: [&str; 2] = ["wasi:", "sluice:udf/"];

/// The part of a digest that names files: 64 lowercase hex digits.
pub fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))).then_some(hex)
}

/// A digest in its one spelling, `sha256:<hex>`.
pub fn canonical_digest(digest: &str) -> Option<String> {
    digest_hex(digest).map(|hex| format!("sha256:{hex}"))
}

/// Check `bytes` is a component the server will run: Wasm, a component
/// (not a core module), exporting one Sluice world, importing only allowed
/// interfaces, and linking against the host. Nothing is kept of a rejected
/// component, not even its compiled form.
pub fn validate_component(engine: &WasmEngine, bytes: &[u8], now_ms: i64) -> Result<ComponentMeta, ApiError> {
    let invalid = |m: String| ApiError::bad_request("invalid_component", m);
    let loaded = engine.load(bytes).map_err(|e| match e {
        WasmError::NotWasm(_) | WasmError::CoreModule => invalid(e.to_string()),
        other => invalid(format!("the component was rejected: {other}")),
    })?;
    let reject = |m: String| {
        engine.forget(&loaded.digest);
        invalid(m)
    };
    let Some(world) = loaded.info.world else {
        let known = crate::wasm::WORLDS.iter().map(|w| format!("`{w}`")).collect::<Vec<_>>().join(", ");
        return Err(reject(format!(
            "the component exports no Sluice world (it exports {}); a UDF targets one of {known}",
            loaded.info.exports_description()
        )));
    };
    if let Some(bad) = loaded
        .info
        .imports
        .iter()
        .find(|i| !ALLOWED_IMPORT_PREFIXES.iter().any(|p| i.starts_with(p)))
    {
        return Err(reject(format!(
            "the component imports `{bad}`; a UDF may import only `wasi:*` and `sluice:udf/*` interfaces"
        )));
    }
    Ok(ComponentMeta {
        digest: loaded.digest.to_string(),
        world: world.wit_name().to_owned(),
        size: bytes.len() as u64,
        imports: loaded.info.imports.clone(),
        uploaded_ms: now_ms,
    })
}

/// One tenant's directory.
#[derive(Debug)]
pub struct TenantStore {
    root: PathBuf,
    components: Dir,
    files: FileArea,
}

fn io(context: &str, e: std::io::Error) -> ApiError {
    ApiError::internal(format!("{context}: {e}"))
}

impl TenantStore {
    /// Open (creating) the tenant directory `root`.
    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        let files = root.join("files");
        Self::open_with_files(root, files)
    }

    /// Open (creating) the tenant directory `root` with its file area at
    /// `files` (a volume shared by a highly available cluster's processes).
    pub fn open_with_files(root: PathBuf, files: PathBuf) -> std::io::Result<Self> {
        for sub in ["components", "jobs"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::create_dir_all(&files)?;
        let components = Dir::open_ambient_dir(root.join("components"), ambient_authority())?;
        let files = FileArea::open(files)?;
        Ok(TenantStore { root, components, files })
    }

    /// The file area's path (jobs resolve their paths against it).
    pub fn files_dir(&self) -> PathBuf {
        self.files.root().to_owned()
    }

    /// The file area.
    pub fn files(&self) -> &FileArea {
        &self.files
    }

    /// Disk use of the file area and the job directories (checkpoints,
    /// savepoints) together, walking at most `max_entries` entries.
    pub fn disk_usage(&self, max_entries: u64) -> Usage {
        usage(&[self.files.root(), &self.root.join("jobs")], max_entries)
    }

    /// The directory of job `id`.
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.root.join("jobs").join(id)
    }

    /// Absolute path of a stored component's bytes, if stored.
    pub fn component_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest_hex(digest)?;
        let name = format!("{hex}.wasm");
        self.components.exists(&name).then(|| self.root.join("components").join(name))
    }

    /// Every stored component.
    pub fn list_components(&self) -> Result<Vec<ComponentMeta>, ApiError> {
        let mut out = Vec::new();
        for e in self.components.entries().map_err(|e| io("listing components", e))? {
            let name = e.map_err(|e| io("listing components", e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(hex) = name.strip_suffix(".json")
                && let Some(meta) = self.component(hex)?
            {
                out.push(meta);
            }
        }
        out.sort_by(|a, b| a.uploaded_ms.cmp(&b.uploaded_ms).then_with(|| a.digest.cmp(&b.digest)));
        Ok(out)
    }

    /// A stored component's metadata.
    pub fn component(&self, digest: &str) -> Result<Option<ComponentMeta>, ApiError> {
        let Some(hex) = digest_hex(digest) else { return Ok(None) };
        if !self.components.exists(format!("{hex}.wasm")) {
            return Ok(None);
        }
        match self.components.read_to_string(format!("{hex}.json")) {
            Ok(text) => Ok(serde_json::from_str(&text).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading component metadata", e)),
        }
    }

    /// Store a validated component (idempotent: the same bytes are stored
    /// once).
    pub fn put_component(&self, meta: &ComponentMeta, bytes: &[u8]) -> Result<(), ApiError> {
        let hex = digest_hex(&meta.digest).ok_or_else(|| ApiError::internal("bad digest"))?;
        let json = serde_json::to_vec_pretty(meta).map_err(|e| ApiError::internal(e.to_string()))?;
        self.write_atomic(&format!("{hex}.wasm"), bytes)?;
        self.write_atomic(&format!("{hex}.json"), &json)
    }

    fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<(), ApiError> {
        let tmp = format!(".{name}.tmp");
        let r = (|| {
            let mut f = self.components.create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.components.rename(&tmp, &self.components, name)
        })();
        if let Err(e) = r {
            let _ = self.components.remove_file(&tmp);
            return Err(io("storing the component", e));
        }
        Ok(())
    }

    /// Remove a stored component; false if there was none.
    pub fn delete_component(&self, digest: &str) -> Result<bool, ApiError> {
        let Some(hex) = digest_hex(digest) else { return Ok(false) };
        if !self.components.exists(format!("{hex}.wasm")) {
            return Ok(false);
        }
        let _ = self.components.remove_file(format!("{hex}.json"));
        self.components
            .remove_file(format!("{hex}.wasm"))
            .map_err(|e| io("deleting the component", e))?;
        Ok(true)
    }

    /// How many components are stored.
    pub fn component_count(&self) -> usize {
        self.components
            .entries()
            .map(|it| {
                it.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".wasm"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// `path` as a relative path of plain parts (no root, `..` or `.`), or an
/// error naming `what`.
pub fn safe_relative(path: &str, what: &str) -> Result<PathBuf, ApiError> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, PathPart::Normal(_)));
    if ok {
        Ok(p.to_owned())
    } else {
        Err(ApiError::unprocessable(
            "invalid_job",
            format!("{what}: {path:?} must be a relative path inside the tenant's file area (no `..`, no leading `/`)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_relative_paths_are_safe() {
        assert!(safe_relative("in/words.txt", "x").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../b", ".", "./a"] {
            assert!(safe_relative(bad, "x").is_err(), "{bad}");
        }
    }

    #[test]
    fn digests_are_64_lowercase_hex() {
        let h = "a".repeat(64);
        assert_eq!(digest_hex(&format!("sha256:{h}")), Some(h.as_str()));
        assert_eq!(digest_hex(&h), Some(h.as_str()));
        assert_eq!(digest_hex("sha256:../../x"), None);
        assert_eq!(digest_hex(&"A".repeat(64)), None);
    }
}
