//! Sample applications that run as processes inside lab pods (`ambit app ...`), so tests and the
//! lab exercise the mesh with real sockets: an echo server and a one-shot client.

pub mod connect;
pub mod echo;

use std::io::Write;

/// Prints one line on stdout and flushes it at once: tests and the lab read these lines from a
/// pipe as events (`listening on ...`, `accepted ...`). A reader must keep draining the pipe, or
/// the app blocks once the pipe is full.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nobody reading stdout any more is no reason to stop serving.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
