//! What Ambit's binaries share as processes, so they read and behave the same:
//! - [`flags`]: the control-plane flags (controller address, roots, token, admin ports) and their
//!   checks (the proxies);
//! - [`process`]: `main` for every binary (flags -> exit 64, logging with a run-time level,
//!   runtime, SIGTERM);
//! - [`admin`]: the admin server (readiness, metrics, log level) on its own thread;
//! - [`config_stream`]: the config stream to the controller, started and stopped as one piece;
//! - [`alloc`]: the node agent's malloc settings (the crate's only `unsafe`).
#![deny(unsafe_code)]

pub mod admin;
pub mod alloc;
pub mod config_stream;
pub mod flags;
pub mod process;
