//! The `ambit` command's library: the local lab's building blocks, shared with the end-to-end
//! tests in `tests/`, the commands against a Kubernetes cluster (`cluster`), and the sample
//! applications that run inside lab pods.

#![forbid(unsafe_code)]

pub mod apps;
pub mod cluster;
pub mod cmd;
pub mod demo;
pub mod lab;
pub mod mesh;
pub mod target;

/// `err` and its causes, `outer: inner: ...`, as `{:#}` prints an `anyhow::Error`: a message
/// names only its own step and leaves the cause to its source, so printing the message alone
/// would lose the cause. Every part of the command prints its errors with it.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text += &format!(": {cause}");
        source = cause.source();
    }
    text
}
