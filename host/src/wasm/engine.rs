//! The wasmtime engine and the component cache.
//!
//! A component is compiled once per engine configuration: the compiled form is
//! kept in memory by sha256 digest and serialized to the cache directory as
//! `<digest>-<engine hash>.cwasm`, so a later run (or another job using the
//! same component) loads it in well under a millisecond instead of compiling.
//! The cache directory belongs to the host; nothing a user supplies is ever
//! deserialized without having been compiled here first.

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::compile::{check_compile_limits, compile_in_child, isolation};
use super::host::HostState;
use super::world::ComponentInfo;

/// How often the epoch advances: the granularity of call deadlines.
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(10);

/// A component's sha256, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ComponentDigest(pub String);

impl ComponentDigest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        ComponentDigest(hex::encode(Sha256::digest(bytes)))
    }
}

impl fmt::Display for ComponentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Why a component could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// Reading the file failed.
    #[error("reading component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes are not WebAssembly at all; what they look like and the fix.
    #[error("not a WebAssembly component: {0}")]
    NotWasm(&'static str),
    /// A core module where a component is needed.
    #[error(
        "a core WebAssembly module, not a component: build Rust for the wasm32-wasip2 target (not wasm32-unknown-unknown or \
         wasm32-wasip1); wrap a wasm32-wasi module of another language with `sluice componentize`"
    )]
    CoreModule,
    /// Compilation failed.
    #[error("compiling component: {0}")]
    Compile(String),
    /// It imports something the host does not provide.
    #[error("component cannot be linked: {0}")]
    Link(String),
    /// Setting up the engine failed.
    #[error("configuring the wasm engine: {0}")]
    Engine(String),
    /// The component is bigger than the host compiles (size, functions, or
    /// one function's body): refused before compiling, which could take the
    /// host's memory and minutes of CPU.
    #[error("component too large to compile: {0}")]
    TooLarge(String),
}

/// A compiled component, ready to instantiate many times.
pub struct LoadedComponent {
    /// Its digest.
    pub digest: ComponentDigest,
    /// What it imports, exports and targets.
    pub info: ComponentInfo,
    pub(crate) pre: InstancePre<HostState>,
    /// Whether its engine meters fuel.
    pub(crate) fuel: bool,
}

impl fmt::Debug for LoadedComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedComponent")
            .field("digest", &self.digest)
            .field("info", &self.info)
            .finish()
    }
}

/// Compiled components kept in memory per engine (least recently used
/// first out; a running job keeps its own reference).
pub const MAX_LOADED: usize = 128;
/// Bytes of compiled components kept on disk per cache directory; past it
/// the least recently written are deleted.
pub const MAX_CACHE_BYTES: u64 = 2 << 30;

/// The engine shared by every job of a process (or, on a server, of one
/// tenant: see [`WasmEngine::scoped`]).
pub struct WasmEngine {
    engine: Engine,
    linker: Linker<HostState>,
    cache_dir: Option<PathBuf>,
    engine_hash: String,
    fuel: bool,
    /// Digest → (component, last use).
    loaded: Mutex<Loaded>,
}

#[derive(Default)]
struct Loaded {
    map: HashMap<ComponentDigest, (Arc<LoadedComponent>, u64)>,
    clock: u64,
}

impl Loaded {
    fn get(&mut self, d: &ComponentDigest) -> Option<Arc<LoadedComponent>> {
        self.clock += 1;
        let now = self.clock;
        self.map.get_mut(d).map(|(c, used)| {
            *used = now;
            c.clone()
        })
    }

    fn insert(&mut self, d: ComponentDigest, c: Arc<LoadedComponent>) {
        self.clock += 1;
        while self.map.len() >= MAX_LOADED {
            let Some(oldest) = self.map.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone()) else {
                break;
            };
            self.map.remove(&oldest);
        }
        self.map.insert(d, (c, self.clock));
    }
}

impl fmt::Debug for WasmEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmEngine").field("cache_dir", &self.cache_dir).finish()
    }
}

impl WasmEngine {
    /// An engine whose compiled components are cached in `cache_dir` (none:
    /// memory only). Fails only if wasmtime rejects the configuration.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<Arc<Self>, WasmError> {
        Self::with_fuel(cache_dir, false)
    }

    /// Like [`new`](Self::new); with `fuel`, every guest instruction is
    /// metered (a few percent slower), so usage can be reported and a call
    /// can be given a fuel budget. Code compiled for one setting is not
    /// used by the other (the cache key includes it).
    pub fn with_fuel(cache_dir: Option<PathBuf>, fuel: bool) -> Result<Arc<Self>, WasmError> {
        let engine = Self::config_engine(fuel)?;
        let mut linker = Linker::new(&engine);
        super::host::add_to_linker(&mut linker).map_err(|e| WasmError::Engine(format!("{e:#}")))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let engine_hash = format!("{:016x}", h.finish());
        spawn_epoch_ticker(&engine);
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "component cache directory unusable; compiling in memory only");
        }
        Ok(Arc::new(WasmEngine {
            engine,
            linker,
            cache_dir,
            engine_hash,
            fuel,
            loaded: Mutex::default(),
        }))
    }

    /// An engine sharing this one's compiler and code configuration but with
    /// its own component cache (in memory, and on disk under
    /// `<cache>/scoped/<scope>`): a server gives each tenant one, so how
    /// fast an upload loads never tells whether another tenant has it.
    pub fn scoped(&self, scope: &str) -> Arc<Self> {
        let cache_dir = self.cache_dir.as_ref().map(|d| d.join("scoped").join(scope));
        if let Some(dir) = &cache_dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "component cache directory unusable; compiling in memory only");
        }
        Arc::new(WasmEngine {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            cache_dir,
            engine_hash: self.engine_hash.clone(),
            fuel: self.fuel,
            loaded: Mutex::default(),
        })
    }

    /// The wasmtime engine of Sluice's configuration (also what an
    /// isolated compiler process compiles for).
    pub(crate) fn config_engine(fuel: bool) -> Result<Engine, WasmError> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.consume_fuel(fuel);
        config.wasm_component_model(true);
        config.max_wasm_stack(1 << 20);
        Engine::new(&config).map_err(|e| WasmError::Engine(format!("{e:#}")))
    }

    /// Whether guests of this engine are fuel-metered.
    pub fn meters_fuel(&self) -> bool {
        self.fuel
    }

    /// Forget a component: its compiled form in memory and in the disk
    /// cache (it is compiled again if it is ever loaded again).
    pub fn forget(&self, digest: &ComponentDigest) {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).map.remove(digest);
        if let Some(path) = self.cache_path(digest) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Load a component from a file.
    pub fn load_file(&self, path: &Path) -> Result<Arc<LoadedComponent>, WasmError> {
        let bytes = std::fs::read(path).map_err(|source| WasmError::Read {
            path: path.to_owned(),
            source,
        })?;
        self.load(&bytes)
    }

    /// Load a component from its bytes: validated, compiled (or taken from the
    /// cache), and linked against the host's interfaces.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<LoadedComponent>, WasmError> {
        check_header(bytes)?;
        let digest = ComponentDigest::of(bytes);
        if let Some(c) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(&digest) {
            return Ok(c);
        }
        let component = self.compile(&digest, bytes)?;
        let info = ComponentInfo::of(&self.engine, &component);
        let pre = match self.linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(e) => {
                // Never loadable here: keep no compiled copy of it.
                self.forget(&digest);
                return Err(WasmError::Link(format!("{e:#}")));
            }
        };
        let loaded = Arc::new(LoadedComponent {
            digest: digest.clone(),
            info,
            pre,
            fuel: self.fuel,
        });
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(digest, loaded.clone());
        Ok(loaded)
    }

    fn cache_path(&self, digest: &ComponentDigest) -> Option<PathBuf> {
        self.cache_dir
            .as_ref()
            .map(|d| d.join(format!("{}-{}.cwasm", digest.0, self.engine_hash)))
    }

    fn compile(&self, digest: &ComponentDigest, bytes: &[u8]) -> Result<Component, WasmError> {
        let cached = self.cache_path(digest);
        if let Some(path) = &cached
            && path.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of this
            // engine configuration (the name carries its hash) into the host's
            // own cache directory; user input is never deserialized.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(c) => return Ok(c),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "ignoring unusable cached component"),
            }
        }
        check_compile_limits(bytes)?;
        let started = std::time::Instant::now();
        let (component, code) = match isolation() {
            Some(iso) => {
                let scratch = self.cache_dir.clone().unwrap_or_else(std::env::temp_dir);
                let code = compile_in_child(iso, bytes, self.fuel, &scratch)?;
                // SAFETY: the bytes were written by `precompile_component` of
                // this binary, for this engine configuration, in a child
                // process this host started; they were never in a user's hands.
                let c = unsafe { Component::deserialize(&self.engine, &code) }.map_err(|e| WasmError::Compile(format!("{e:#}")))?;
                (c, Some(code))
            }
            None => (
                Component::new(&self.engine, bytes).map_err(|e| WasmError::Compile(format!("{e:#}")))?,
                None,
            ),
        };
        tracing::debug!(digest = %digest, ms = started.elapsed().as_millis() as u64, "compiled component");
        if let Some(path) = cached {
            match code.map_or_else(|| component.serialize(), Ok) {
                Ok(bytes) => {
                    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
                    if std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, &path)).is_err() {
                        let _ = std::fs::remove_file(&tmp);
                        tracing::warn!(path = %path.display(), "could not write the component cache");
                    }
                    if let Some(dir) = &self.cache_dir {
                        prune_cache(dir, MAX_CACHE_BYTES);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not serialize compiled component"),
            }
        }
        Ok(component)
    }
}

/// Delete the least recently written compiled components of `dir` until
/// it holds at most `max_bytes` of them.
fn prune_cache(dir: &Path, max_bytes: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "cwasm"))
        .filter_map(|e| {
            let m = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            Some((m.modified().ok()?, m.len(), e.path()))
        })
        .collect();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    if total <= max_bytes {
        return;
    }
    files.sort();
    for (_, len, path) in files {
        if total <= max_bytes {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total -= len;
        }
    }
}

fn check_header(bytes: &[u8]) -> Result<(), WasmError> {
    if bytes.starts_with(b"!<arch>\n") {
        return Err(WasmError::NotWasm(
            "it is an archive (a Rust `.rlib` or a static library). A Rust UDF crate needs `[lib] crate-type = [\"cdylib\"]` \
             in its Cargo.toml; `cargo build --release --target wasm32-wasip2` then writes the component to \
             target/wasm32-wasip2/release/<crate>.wasm",
        ));
    }
    if bytes.starts_with(b"\x7fELF") || bytes.starts_with(b"MZ") || bytes.starts_with(&[0xcf, 0xfa, 0xed, 0xfe]) {
        return Err(WasmError::NotWasm(
            "it is a native executable or library, not WebAssembly: build the UDF for the wasm32-wasip2 target",
        ));
    }
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(WasmError::NotWasm("the bytes do not start with the wasm magic number"));
    }
    match bytes[4..8] {
        [0x01, 0x00, 0x00, 0x00] => Err(WasmError::CoreModule),
        _ => Ok(()),
    }
}

/// Advance the engine's epoch every tick for as long as the engine lives.
fn spawn_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new().name("sluice-epoch".into()).spawn(move || {
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            std::thread::sleep(EPOCH_TICK);
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the epoch thread: guest calls will have no deadline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_cache_is_pruned_oldest_first_to_its_bound() {
        let dir = std::env::temp_dir().join(format!("sluice-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..5 {
            std::fs::write(dir.join(format!("c{i}.cwasm")), vec![0u8; 1000]).unwrap();
            // Distinct modification times, oldest first.
            let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + i);
            std::fs::File::options()
                .write(true)
                .open(dir.join(format!("c{i}.cwasm")))
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::write(dir.join("other.txt"), vec![0u8; 5000]).unwrap();
        prune_cache(&dir, 2500);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["c3.cwasm", "c4.cwasm", "other.txt"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
