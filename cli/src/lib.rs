//! The `ambit` command's library: the sample applications that run inside lab pods.

#![forbid(unsafe_code)]

pub mod apps;
