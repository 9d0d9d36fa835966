//! Generates the Rust types and gRPC stubs for `proto/ambit/v1/*.proto`.
//!
//! protox is a pure-Rust protobuf compiler, so a fresh `cargo build` needs no system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let files: Vec<PathBuf> = [
        "workload",
        "service",
        "authorization",
        "route",
        "ca",
        "discovery",
    ]
    .iter()
    .map(|name| root.join("ambit/v1").join(format!("{name}.proto")))
    .collect();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
