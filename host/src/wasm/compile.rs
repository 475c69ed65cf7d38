//! Turning untrusted bytes into compiled code, boundedly.
//!
//! Cranelift's memory and time grow with a component's shape: a component of
//! a million functions, or one function of megabytes, can exhaust the host's
//! memory; a few hundred KB of nested loops can take minutes of CPU. So:
//!
//! 1. [`check_compile_limits`] parses the sections once (no validation, no
//!    code generation) and refuses components over [`MAX_COMPONENT_BYTES`],
//!    [`MAX_FUNCTIONS`] or [`MAX_FUNCTION_BYTES`] per function;
//! 2. a process that compiles for others (`sluice serve`) sets a
//!    [`CompileIsolation`]: each compile then runs in a child process of the
//!    same binary (`sluice compile-component`, hidden) under a memory and CPU
//!    rlimit, killed at a deadline. The child writes the serialized code; the
//!    parent deserializes only what its own binary compiled for its own
//!    engine configuration.
//!
//! ```text
//!  bytes ─► shape limits ─► isolated? ─no──► Component::new (in process)
//!                              │yes
//!                              ▼
//!             child: setrlimit(DATA, CPU) → precompile → out file
//!             parent: wait ≤ deadline (else kill) → deserialize out file
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::engine::WasmError;

/// Largest component compiled, bytes (the Python guest is ~18 MB).
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// Most function bodies in all of a component's core modules.
pub const MAX_FUNCTIONS: usize = 200_000;
/// Largest single function body, bytes.
pub const MAX_FUNCTION_BYTES: usize = 2 << 20;

/// Check a component's shape against the compile limits: one pass of the
/// parser over its sections, no validation and no code generation.
pub fn check_compile_limits(bytes: &[u8]) -> Result<(), WasmError> {
    if bytes.len() > MAX_COMPONENT_BYTES {
        return Err(WasmError::TooLarge(format!(
            "{} bytes; at most {MAX_COMPONENT_BYTES} are compiled",
            bytes.len()
        )));
    }
    let mut functions = 0usize;
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        // A malformed component is left to the compiler, which names the error.
        let Ok(payload) = payload else { return Ok(()) };
        if let wasmparser::Payload::CodeSectionEntry(body) = payload {
            functions += 1;
            if functions > MAX_FUNCTIONS {
                return Err(WasmError::TooLarge(format!("more than {MAX_FUNCTIONS} functions")));
            }
            let size = usize::try_from(body.range().end - body.range().start).unwrap_or(usize::MAX);
            if size > MAX_FUNCTION_BYTES {
                return Err(WasmError::TooLarge(format!(
                    "a function of {size} bytes; at most {MAX_FUNCTION_BYTES} bytes per function"
                )));
            }
        }
    }
    Ok(())
}

/// How a process compiles components it did not write itself.
#[derive(Debug, Clone)]
pub struct CompileIsolation {
    /// The `sluice` binary (its hidden `compile-component` command).
    pub exe: PathBuf,
    /// Longest a compile may take, wall time; the child is killed after it.
    /// Default 60 s.
    pub timeout: Duration,
    /// The child's data-size limit (RLIMIT_DATA), bytes. Default 2 GiB.
    pub memory_bytes: u64,
    /// Compiles running at once; more wait for one to end. Default 2.
    pub max_concurrent: usize,
}

impl CompileIsolation {
    /// Isolation through `exe` with the default deadline and memory.
    pub fn new(exe: PathBuf) -> Self {
        CompileIsolation {
            exe,
            timeout: Duration::from_secs(60),
            memory_bytes: 2 << 30,
            max_concurrent: 2,
        }
    }
}

static ISOLATION: OnceLock<CompileIsolation> = OnceLock::new();

/// Compiles running now, for [`CompileIsolation::max_concurrent`].
static RUNNING: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

/// One of the `max` compile slots, given back when dropped.
struct CompileSlot;

impl CompileSlot {
    fn take(max: usize) -> Self {
        let (lock, freed) = &RUNNING;
        let mut n = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= max.max(1) {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        CompileSlot
    }
}

impl Drop for CompileSlot {
    fn drop(&mut self) {
        let (lock, freed) = &RUNNING;
        let mut n = lock.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
        freed.notify_one();
    }
}

/// From now on, compile every component of this process in a child process
/// (set once, at start-up, by a process that compiles for others).
pub fn isolate_compiles(isolation: CompileIsolation) {
    let _ = ISOLATION.set(isolation);
}

/// The process's isolation, if set.
pub(crate) fn isolation() -> Option<&'static CompileIsolation> {
    ISOLATION.get()
}

/// Compile `bytes` in a child process under `iso`'s limits; the serialized
/// code, as `Component::serialize` writes it, for an engine with `fuel`.
/// `scratch` is a directory the host owns for the input and output files.
pub(crate) fn compile_in_child(iso: &CompileIsolation, bytes: &[u8], fuel: bool, scratch: &Path) -> Result<Vec<u8>, WasmError> {
    let failed = |m: String| WasmError::Compile(m);
    let _slot = CompileSlot::take(iso.max_concurrent);
    std::fs::create_dir_all(scratch).map_err(|e| failed(format!("{}: {e}", scratch.display())))?;
    let stem = format!("compile-{}-{:?}", std::process::id(), std::thread::current().id()).replace(['(', ')'], "");
    let input = scratch.join(format!("{stem}.wasm"));
    let output = scratch.join(format!("{stem}.cwasm"));
    let cleanup = || {
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
    };
    std::fs::write(&input, bytes).map_err(|e| failed(format!("{}: {e}", input.display())))?;
    // CPU time of all the compiler's threads: the deadline on every core.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get) as u64;
    let cpu_secs = iso.timeout.as_secs().saturating_add(1).saturating_mul(cores);
    let spawned = Command::new(&iso.exe)
        .arg("compile-component")
        .arg(&input)
        .arg(&output)
        .args([
            "--max-memory",
            &iso.memory_bytes.to_string(),
            "--max-cpu-secs",
            &cpu_secs.to_string(),
        ])
        .args(fuel.then_some("--fuel"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            cleanup();
            return Err(failed(format!("starting the compiler process {}: {e}", iso.exe.display())));
        }
    };
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() < iso.timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => break None,
        }
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        cleanup();
        return Err(WasmError::TooLarge(format!(
            "compiling took longer than {} ms; the compiler was stopped",
            iso.timeout.as_millis()
        )));
    };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = (&mut e).take(4096).read_to_string(&mut stderr);
    }
    let result = if status.success() {
        std::fs::read(&output).map_err(|e| failed(format!("reading the compiled component: {e}")))
    } else {
        let why = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned();
        Err(match status.code() {
            // Killed by a signal (SIGXCPU past the CPU limit, SIGKILL) or out
            // of memory under the data limit: the component is too costly.
            None => WasmError::TooLarge(format!(
                "the compiler process was stopped ({status}): the component needs more than {} s of CPU or {} MiB",
                cpu_secs,
                iso.memory_bytes >> 20
            )),
            Some(_) if why.contains("memory allocation") => {
                WasmError::TooLarge(format!("compiling needs more than {} MiB of memory", iso.memory_bytes >> 20))
            }
            Some(_) => failed(why.strip_prefix("error: ").unwrap_or(&why).to_owned()),
        })
    };
    cleanup();
    result
}

/// The child's side (`sluice compile-component IN OUT`): limit itself,
/// compile `input` for an engine with `fuel`, write the serialized code to
/// `output`.
pub fn compile_child_main(input: &Path, output: &Path, fuel: bool, max_memory: u64, max_cpu_secs: u64) -> Result<(), String> {
    limit_self(libc::RLIMIT_DATA, max_memory)?;
    limit_self(libc::RLIMIT_CPU, max_cpu_secs)?;
    let bytes = std::fs::read(input).map_err(|e| format!("{}: {e}", input.display()))?;
    check_compile_limits(&bytes).map_err(|e| e.to_string())?;
    let engine = super::engine::WasmEngine::config_engine(fuel).map_err(|e| e.to_string())?;
    let code = engine.precompile_component(&bytes).map_err(|e| format!("{e:#}"))?;
    let tmp = output.with_extension("tmp");
    std::fs::write(&tmp, code)
        .and_then(|()| std::fs::rename(&tmp, output))
        .map_err(|e| format!("{}: {e}", output.display()))
}

fn limit_self(resource: libc::__rlimit_resource_t, value: u64) -> Result<(), String> {
    let limit = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit reads the struct we pass and touches nothing else.
    let rc = unsafe { libc::setrlimit(resource, &limit) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setrlimit: {}", std::io::Error::last_os_error()))
    }
}

/// A component embedding one core module of `functions` functions
/// `() -> ()`, each `nops` nops long: compiling it costs what its shape
/// says. For tests of the compile limits (here and in the integration tests).
#[doc(hidden)]
pub fn shaped_component(functions: usize, nops: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }
    fn section(id: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend_from_slice(body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(1, &[1, 0x60, 0, 0], &mut module);
    let mut funcs = Vec::new();
    leb(functions, &mut funcs);
    funcs.resize(funcs.len() + functions, 0);
    section(3, &funcs, &mut module);
    let mut code = Vec::new();
    leb(functions, &mut code);
    for _ in 0..functions {
        leb(nops + 2, &mut code);
        code.push(0);
        code.resize(code.len() + nops, 0x01);
        code.push(0x0b);
    }
    section(10, &code, &mut module);
    let mut component = b"\0asm\x0d\0\x01\0".to_vec();
    section(1, &module, &mut component);
    component
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compile_limits_refuse_function_bombs_before_compiling() {
        assert!(check_compile_limits(&shaped_component(100, 10)).is_ok());
        let err = check_compile_limits(&shaped_component(MAX_FUNCTIONS + 1, 0)).unwrap_err();
        assert!(err.to_string().contains(&format!("more than {MAX_FUNCTIONS} functions")), "{err}");
        let err = check_compile_limits(&shaped_component(1, MAX_FUNCTION_BYTES)).unwrap_err();
        assert!(err.to_string().contains("bytes per function"), "{err}");
        assert!(
            check_compile_limits(&shaped_component(1, MAX_FUNCTION_BYTES - 2)).is_ok(),
            "exactly at the limit"
        );
        let err = check_compile_limits(&vec![0; MAX_COMPONENT_BYTES + 1]).unwrap_err();
        assert!(err.to_string().contains("at most"), "{err}");
    }
}
