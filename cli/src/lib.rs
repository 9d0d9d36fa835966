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
