//! Generates the gRPC sample app's types and stubs (`proto/ambit/lab/v1/echo.proto`) the way
//! `ambit-proto` generates its own: protox, a pure-Rust compiler, so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from("proto");
    let file = root.join("ambit/lab/v1/echo.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
