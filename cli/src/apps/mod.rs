//! Sample applications that run as processes inside lab pods (`ambit app ...`), so tests and the
//! lab exercise the mesh with real sockets: an echo server (HTTP and raw TCP) and a one-shot
//! client for it, a gRPC echo server and its client, and an OTLP collector that prints spans.

pub mod command;
pub mod connect;
pub mod echo;
pub mod grpc;
pub mod otlp;

use std::io::{self, Write};
use std::net::SocketAddr;

use tokio::net::TcpListener;

/// A sample server could not listen where it was told to.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: io::Error,
}

/// Binds `addr` and prints `listening on <address>`, the bound one (so port 0 works): every
/// sample server's first event line.
pub(crate) async fn listen(addr: SocketAddr) -> Result<TcpListener, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .and_then(|l| l.local_addr().map(|local| (l, local)));
    let (listener, local) = listener.map_err(|source| BindError { addr, source })?;
    say(&format!("listening on {local}"));
    Ok(listener)
}

/// Prints one line on stdout and flushes it at once: tests and the lab read these lines from a
/// pipe as events (`listening on ...`, `accepted ...`). A reader must keep draining the pipe, or
/// the app blocks once the pipe is full.
pub(crate) fn say(line: &str) {
    if cfg!(test) {
        // The test harness captures `print!` only: the apps' unit tests stay quiet.
        println!("{line}");
        return;
    }
    let mut out = std::io::stdout().lock();
    // Nobody reading stdout any more is no reason to stop serving.
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
