//! Generates the control RPC's gRPC client and server (tonic) from the
//! service described here; the messages are prost structs in
//! `src/cluster/rpc.rs`, so no `.proto` file or `protoc` is needed.
//!
//! Also vendors the dashboard's libraries (`ui/vendor/package-lock.json`:
//! dagre for the job graph, uPlot for charts) from the npm registry into
//! `OUT_DIR`, so the binary serves them itself and a page never reaches
//! outside the server.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files the dashboard serves from `/ui/vendor/`, by their path in
/// `node_modules`.
const VENDORED: [(&str, &str); 3] = [
    ("dagre.min.js", "@dagrejs/dagre/dist/dagre.min.js"),
    ("uPlot.iife.min.js", "uplot/dist/uPlot.iife.min.js"),
    ("uPlot.min.css", "uplot/dist/uPlot.min.css"),
];

fn vendor_dashboard() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let src = manifest.join("ui/vendor");
    let work = out.join("ui-vendor");
    println!("cargo:rerun-if-changed=ui/vendor/package.json");
    println!("cargo:rerun-if-changed=ui/vendor/package-lock.json");
    std::fs::create_dir_all(&work).expect("creating OUT_DIR/ui-vendor");
    let mut changed = false;
    for f in ["package.json", "package-lock.json"] {
        let want = std::fs::read(src.join(f)).unwrap_or_else(|e| panic!("reading ui/vendor/{f}: {e}"));
        if std::fs::read(work.join(f)).ok().as_ref() != Some(&want) {
            std::fs::write(work.join(f), &want).expect("writing OUT_DIR/ui-vendor");
            changed = true;
        }
    }
    let present = |w: &Path| VENDORED.iter().all(|(_, p)| w.join("node_modules").join(p).is_file());
    if changed || !present(&work) {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"])
            .current_dir(&work)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!(
                "the dashboard's libraries (host/ui/vendor/package-lock.json) could not be installed: \
                 `npm ci` in {} exited with {s}; it needs the npm registry (or npm's cache)",
                work.display()
            ),
            Err(e) => panic!(
                "the dashboard's libraries are vendored with npm at build time, and npm could not be run: {e}; \
                 install Node.js with npm"
            ),
        }
        assert!(
            present(&work),
            "npm ci did not install the dashboard's libraries in {}",
            work.display()
        );
    }
    let dest = out.join("vendor");
    std::fs::create_dir_all(&dest).expect("creating OUT_DIR/vendor");
    for (name, path) in VENDORED {
        std::fs::copy(work.join("node_modules").join(path), dest.join(name))
            .unwrap_or_else(|e| panic!("copying {path} into OUT_DIR/vendor: {e}"));
    }
}

fn main() {
    vendor_dashboard();
    use tonic_build::manual::{Builder, Method, Service};
    let codec = "tonic_prost::ProstCodec";
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::cluster::rpc::{input}"))
            .output_type(format!("crate::cluster::rpc::{output}"))
            .codec_path(codec)
    };
    let service = Service::builder()
        .name("JobManager")
        .package("sluice.cluster")
        .method(method("register", "Register", "RegisterRequest", "RegisterResponse").build())
        .method(
            method("commands", "Commands", "CommandsRequest", "Command")
                .server_streaming()
                .build(),
        )
        .method(method("heartbeat", "Heartbeat", "Heartbeat", "HeartbeatResponse").build())
        .method(method("report", "Report", "Report", "Empty").build())
        .method(
            method("fetch_component", "FetchComponent", "FetchComponent", "ComponentChunk")
                .server_streaming()
                .build(),
        )
        .build();
    Builder::new().compile(&[service]);
    println!("cargo:rerun-if-changed=build.rs");
}
