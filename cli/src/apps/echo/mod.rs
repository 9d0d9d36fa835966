//! `ambit app echo`: a TCP server for lab pods that shows a client what reached it.
//!
//! A connection whose first bytes are an HTTP/1.x request line is served as HTTP (see [`http`]);
//! any other is raw TCP: the server greets with `hello from <name>; you are <peer>` and echoes
//! every byte back until the client half-closes, then closes its side. Either way the peer
//! address is the one the kernel reports, so a test sees whether a proxy preserved the client's
//! IP. Each accepted connection prints `accepted <peer>` on stdout, each HTTP answer
//! `answered <status> <method> <target>`.
//!
//! A [`Behaviour`] makes it a backend with a problem, for seeing what a proxy in front of it
//! does about that: slow answers, or a share of its requests failed.

pub mod behaviour;
pub mod http;

use std::io::{self, Cursor};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{BindError, listen, say};
pub use behaviour::{Behaviour, Server};

/// How long a silent connection may take to show its first bytes before it is taken for raw
/// TCP and greeted. HTTP clients speak first, but a raw client may wait for the greeting, so the
/// server cannot wait for data forever; a request line arrives well within this on any lab link.
pub const SNIFF_WINDOW: Duration = Duration::from_millis(200);

/// Connections served at once; more wait in the kernel's backlog rather than each costing a
/// task and buffers.
const MAX_CONNECTIONS: usize = 1024;

/// After a failed accept (EMFILE, ENOBUFS), wait before the next, rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Listens on `addr` and serves connections until the process ends.
pub async fn run(addr: SocketAddr, server: Server) -> Result<(), BindError> {
    let listener = listen(addr).await?;
    serve(listener, Arc::new(server)).await;
    Ok(())
}

/// Accepts connections on `listener` forever, each served on its own task.
pub async fn serve(listener: TcpListener, server: Arc<Server>) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = Arc::clone(&limit)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        say(&format!("accepted {peer}"));
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(err) = handle(stream, peer, &server).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// Serves one connection from `peer`, as HTTP or as raw TCP (see the module docs).
pub async fn handle<S>(stream: S, peer: SocketAddr, server: &Server) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let mut first = Vec::new();
    if sniff(&mut reader, &mut first).await? == Protocol::Http {
        let mut reader = BufReader::new(Cursor::new(first).chain(reader));
        http::serve(&mut reader, &mut writer, peer, server).await?;
    } else {
        let greeting = format!("hello from {}; you are {peer}\n", server.name);
        writer.write_all(greeting.as_bytes()).await?;
        writer.write_all(&first).await?;
        tokio::io::copy(&mut reader, &mut writer).await?;
    }
    // Our FIN: for raw TCP the echo is complete once the client's FIN arrived.
    writer.shutdown().await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Raw,
}

/// Reads the connection's first bytes into `first` until they tell HTTP from raw TCP, the client
/// half-closes, or [`SNIFF_WINDOW`] passes.
async fn sniff<R: AsyncRead + Unpin>(reader: &mut R, first: &mut Vec<u8>) -> io::Result<Protocol> {
    let deadline = Instant::now() + SNIFF_WINDOW;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(protocol) = classify(first) {
            return Ok(protocol);
        }
        match tokio::time::timeout_at(deadline, reader.read(&mut chunk)).await {
            Err(_) | Ok(Ok(0)) => return Ok(Protocol::Raw),
            Ok(Ok(read)) => first.extend_from_slice(&chunk[..read]),
            Ok(Err(err)) => return Err(err),
        }
    }
}

/// `Some` once `first` starts with an HTTP method and a space, or can no longer.
fn classify(first: &[u8]) -> Option<Protocol> {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if METHODS.iter().any(|method| first.starts_with(method)) {
        Some(Protocol::Http)
    } else if METHODS.iter().any(|method| method.starts_with(first)) {
        None
    } else {
        Some(Protocol::Raw)
    }
}

#[cfg(test)]
mod tests;
