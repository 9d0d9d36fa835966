//! What the node agent and the waypoint share as processes, so the two read and behave the same:
//! - [`flags`]: the control-plane flags (controller address, roots, token, admin ports) and their
//!   checks;
//! - [`process`]: `main` for a proxy binary (flags -> exit 64, logging with a run-time level,
//!   runtime, SIGTERM);
//! - [`admin`]: the admin server (readiness, metrics, log level) on its own thread;
//! - [`config_stream`]: the config stream to the controller, started and stopped as one piece.
#![forbid(unsafe_code)]

pub mod admin;
pub mod config_stream;
pub mod flags;
pub mod process;
