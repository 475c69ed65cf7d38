//! Build tools for guests written in languages whose compilers emit core
//! WebAssembly modules (C, C++, Zig, …), so that `sluice` alone turns them
//! into UDF components:
//!
//! - [`c_bindings`]: the C bindings of a Sluice world, as `wit-bindgen c`
//!   generates them (the same generator, as a library), from the WIT package
//!   built into this binary;
//! - [`componentize`]: a core module (built for `wasm32-wasi`, preview 1)
//!   wrapped into a component with the WASI preview 1 adapter, as
//!   `wasm-tools component new --adapt` does (the same encoder; the adapter
//!   comes from the `wasi-preview1-component-adapter-provider` crate, built for
//!   the wasmtime version the host runs).
//!
//! Both are exposed by the CLI (`sluice c-bindings`, `sluice componentize`),
//! which `scripts/build-guests c` uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use wasi_preview1_component_adapter_provider::{WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER};
use wit_bindgen_c::Opts;
use wit_bindgen_core::Files;
use wit_bindgen_core::wit_parser::Resolve;

/// The WIT package guests are written against (`wit/sluice-udf@0.1.0`).
pub const UDF_WIT: &str = include_str!("../../wit/sluice-udf@0.1.0/udf.wit");

/// The operator worlds a guest may target, by their short WIT names
/// (`stateless`, `keyed-process`, …).
pub fn guest_worlds() -> impl Iterator<Item = &'static str> {
    crate::wasm::WORLDS.iter().map(|w| w.short_name())
}

/// Write the C bindings of `world` into `out_dir`: `<world>.h`, `<world>.c`
/// and `<world>_component_type.o` (the world's type, which the encoder reads
/// back from the linked module). Returns the files written.
pub fn c_bindings(world: &str, out_dir: &Path) -> Result<Vec<PathBuf>> {
    if !guest_worlds().any(|w| w == world) {
        bail!(
            "unknown world `{world}`; a C guest targets one of {}",
            guest_worlds().collect::<Vec<_>>().join(", ")
        );
    }
    let mut resolve = Resolve::default();
    let package = resolve.push_str("udf.wit", UDF_WIT).context("parsing the built-in WIT package")?;
    let world_id = resolve.select_world(&[package], Some(world))?;
    let mut files = Files::default();
    Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .with_context(|| format!("generating C bindings for `{world}`"))?;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut written = Vec::new();
    for (name, contents) in files.iter() {
        let path = out_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Wrap a core module built for `wasm32-wasi` (preview 1, reactor model) and
/// carrying a Sluice world's component type into a component.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>> {
    if !core_module.starts_with(b"\0asm\x01\0\0\0") {
        bail!("not a core WebAssembly module (a component, or not Wasm at all)");
    }
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(core_module)
        .context("reading the module's component type")?
        .adapter(WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER)
        .context("adding the WASI preview 1 adapter")?
        .encode()
        .context("encoding the component")?;
    // A module without the bindings' type information encodes into a
    // component that exports nothing: say what is missing.
    let wit_component::DecodedWasm::Component(resolve, world) = wit_component::decode(&component)? else {
        bail!("the encoder did not produce a component");
    };
    let exports_operator = resolve.worlds[world]
        .exports
        .keys()
        .any(|k| resolve.name_world_key(k).starts_with("sluice:udf/"));
    if !exports_operator {
        bail!(
            "the module exports no Sluice operator interface: link it with the `<world>_component_type.o` and \
             `<world>.c` that `sluice c-bindings` writes, and define the world's exports"
        );
    }
    Ok(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_guest_world_has_c_bindings() {
        let dir = std::env::temp_dir().join(format!("sluice-c-bindings-{}", std::process::id()));
        assert_eq!(guest_worlds().count(), 5);
        for world in guest_worlds() {
            let files = c_bindings(world, &dir).unwrap();
            let names: Vec<_> = files
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            let stem = world.replace('-', "_");
            for f in [format!("{stem}.h"), format!("{stem}.c"), format!("{stem}_component_type.o")] {
                assert!(names.contains(&f), "{world}: {names:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c_bindings("host", &dir).unwrap_err().to_string().contains("unknown world"));
    }

    #[test]
    fn componentize_rejects_what_is_not_a_core_module() {
        assert!(componentize(b"hello").unwrap_err().to_string().contains("not a core"));
        // A module without a component type section names the missing piece.
        let empty_module = b"\0asm\x01\0\0\0";
        let err = format!("{:#}", componentize(empty_module).unwrap_err());
        assert!(err.contains("_component_type.o"), "{err}");
    }
}
