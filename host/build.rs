//! Generates the control RPC's gRPC client and server (tonic) from the
//! service described here; the messages are prost structs in
//! `src/cluster/rpc.rs`, so no `.proto` file or `protoc` is needed.

fn main() {
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
