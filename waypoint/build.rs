//! Generates the OTLP message types the waypoint exports traces with
//! (`proto/opentelemetry/otlp_trace.proto`), the way `ambit-proto` generates its own: protox, a
//! pure-Rust compiler, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let file = root.join("opentelemetry/otlp_trace.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    // Messages only: spans go out over OTLP/HTTP, not gRPC.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
