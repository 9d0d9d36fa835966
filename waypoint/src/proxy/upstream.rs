//! Sending a request to one endpoint: over HBONE to the endpoint's node agent (or plain TCP to a
//! workload outside the mesh), then HTTP/1.1 or HTTP/2 on that tunnel.
//!
//! Upstream HTTP connections are cached per downstream connection: every tunnel carries one
//! client's address in its `forwarded` header, so a connection opened for one client must never
//! carry another's requests. Reuse is still cheap: the HBONE client multiplexes all those
//! tunnels over a few pooled mTLS connections per destination agent.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context as TaskContext, Poll};

use ambit_proto::hbone::{ConnectRequest, H2Stream, HboneError};
use ambit_proto::relay;
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tracing::{Instrument, debug};

use super::body::Body;
use super::{Context, Downstream, Protocol};
use crate::state::Endpoint;

/// Idle HTTP/1.1 connections kept per endpoint for one downstream connection.
const MAX_IDLE_HTTP1: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing reached the endpoint: safe to retry, on any endpoint.
    #[error("{0}")]
    Connect(String),
    /// The request may have reached the endpoint before the connection broke.
    #[error("{0}")]
    Reset(String),
    /// A connection limit (circuit breaking) kept a new connection from being opened.
    #[error("{0}")]
    Overflow(String),
}

#[derive(Default)]
pub struct ConnCache {
    http1: Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>,
    http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>,
}

enum Sender {
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

impl ConnCache {
    fn cached(&self, addr: SocketAddr, protocol: Protocol) -> Option<Sender> {
        match protocol {
            Protocol::Http2 => {
                let mut map = self.http2.lock().expect("cache");
                match map.get(&addr) {
                    Some(s) if !s.is_closed() => Some(Sender::Http2(s.clone())),
                    Some(_) => {
                        map.remove(&addr);
                        None
                    }
                    None => None,
                }
            }
            _ => {
                let mut map = self.http1.lock().expect("cache");
                let list = map.get_mut(&addr)?;
                list.retain(|s| !s.is_closed());
                let ready = list.iter().position(|s| s.is_ready())?;
                Some(Sender::Http1(list.swap_remove(ready)))
            }
        }
    }

    fn keep(&self, addr: SocketAddr, sender: Sender) {
        match sender {
            Sender::Http2(s) => {
                self.http2.lock().expect("cache").insert(addr, s);
            }
            Sender::Http1(s) => {
                let mut map = self.http1.lock().expect("cache");
                let list = map.entry(addr).or_default();
                if list.len() < MAX_IDLE_HTTP1 {
                    list.push(s);
                }
            }
        }
    }
}

/// Sends `req` to `endpoint`, reusing a cached connection when one is free. `slot` is asked for
/// a connection-limit permit only when a new connection must be opened.
pub async fn send(
    ctx: &Context,
    down: &Downstream,
    cache: &ConnCache,
    endpoint: &Endpoint,
    protocol: Protocol,
    mut req: Request<Body>,
    slot: impl FnOnce() -> Result<Option<OwnedSemaphorePermit>, String>,
) -> Result<Response<Incoming>, (SendError, Option<Request<Body>>)> {
    if let Some(sender) = cache.cached(endpoint.addr, protocol) {
        match try_send(sender, req).await {
            Ok((response, sender)) => {
                cache.keep(endpoint.addr, sender);
                return Ok(response);
            }
            // A cached connection that closed under us: the request was not sent, open anew.
            Err((_, Some(unsent))) => req = unsent,
            Err((e, None)) => return Err((e, None)),
        }
    }
    let permit = match slot() {
        Ok(p) => p,
        Err(e) => return Err((SendError::Overflow(e), Some(req))),
    };
    let sender = match open(ctx, down, endpoint, protocol, permit).await {
        Ok(s) => s,
        Err(e) => return Err((e, Some(req))),
    };
    match try_send(sender, req).await {
        Ok((response, sender)) => {
            cache.keep(endpoint.addr, sender);
            Ok(response)
        }
        Err(e) => Err(e),
    }
}

async fn try_send(
    sender: Sender,
    req: Request<Body>,
) -> Result<(Response<Incoming>, Sender), (SendError, Option<Request<Body>>)> {
    let result = match sender {
        Sender::Http1(mut s) => {
            let r = s.try_send_request(req).await;
            r.map(|resp| (resp, Sender::Http1(s)))
        }
        Sender::Http2(mut s) => {
            let r = s.try_send_request(req).await;
            r.map(|resp| (resp, Sender::Http2(s)))
        }
    };
    result.map_err(|mut e| {
        let unsent = e.take_message();
        let err = e.into_error();
        if unsent.is_some() {
            (
                SendError::Connect(format!("connection closed before sending: {err}")),
                unsent,
            )
        } else {
            (SendError::Reset(err.to_string()), None)
        }
    })
}

/// Opens a tunnel to the endpoint and speaks `protocol` on it.
async fn open(
    ctx: &Context,
    down: &Downstream,
    endpoint: &Endpoint,
    protocol: Protocol,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Sender, SendError> {
    let transport = connect(ctx, down, endpoint).await?;
    handshake(transport, protocol, permit).await
}

/// A byte stream to an endpoint.
pub enum Transport {
    Hbone(H2Stream),
    /// Outside the mesh: plain TCP, as a node agent would pass it through.
    Tcp(TcpStream),
}

/// Connects to the endpoint on behalf of the downstream client: HBONE to its node agent with
/// the client in `forwarded`, or TCP when the endpoint is not in the mesh.
pub async fn connect(
    ctx: &Context,
    down: &Downstream,
    endpoint: &Endpoint,
) -> Result<Transport, SendError> {
    let workload = &endpoint.workload;
    if !workload.speaks_hbone() {
        let tcp = ctx
            .dialer
            .connect(endpoint.addr)
            .await
            .map_err(|e| SendError::Connect(format!("connecting {}: {e}", endpoint.addr)))?;
        return Ok(Transport::Tcp(tcp));
    }
    let cert = ctx
        .certificate
        .get()
        .await
        .map_err(|e| SendError::Connect(format!("no certificate of our own: {e}")))?;
    let request = ConnectRequest {
        source: cert.cert,
        destination_identities: vec![workload.identity.clone()],
        hbone_address: SocketAddr::new(endpoint.addr.ip(), ctx.settings.upstream_hbone_port),
        source_address: None,
        authority: endpoint.addr,
        forwarded_for: Some(down.source_addr),
        headers: Vec::new(),
    };
    let tunnel = ctx.hbone.connect(request).await.map_err(|e| {
        // A refusal by the destination agent (its policy, its pod not answering) also means
        // nothing was sent.
        let what = match &e {
            HboneError::Refused { .. } => "refused by",
            _ => "connecting",
        };
        SendError::Connect(format!("{what} {}: {e}", endpoint.addr))
    })?;
    Ok(Transport::Hbone(tunnel))
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Hbone(s) => Pin::new(s).poll_flush(cx),
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Opaque TCP relays through the tunnel without copying (see `ambit_proto::relay`).
impl relay::Endpoint for Transport {
    fn poll_chunk(
        &mut self,
        cx: &mut TaskContext<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        match self {
            Transport::Hbone(s) => s.poll_chunk(cx, buf),
            Transport::Tcp(s) => s.poll_chunk(cx, buf),
        }
    }

    fn poll_send(&mut self, cx: &mut TaskContext<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        match self {
            Transport::Hbone(s) => s.poll_send(cx, chunk),
            Transport::Tcp(s) => s.poll_send(cx, chunk),
        }
    }

    fn poll_flush(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Hbone(s) => relay::Endpoint::poll_flush(s, cx),
            Transport::Tcp(s) => relay::Endpoint::poll_flush(s, cx),
        }
    }

    fn poll_finish(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self {
            Transport::Hbone(s) => s.poll_finish(cx),
            Transport::Tcp(s) => s.poll_finish(cx),
        }
    }
}

async fn handshake<I>(
    io: I,
    protocol: Protocol,
    permit: Option<OwnedSemaphorePermit>,
) -> Result<Sender, SendError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let io = TokioIo::new(io);
    let failed = |e: hyper::Error| SendError::Connect(format!("HTTP handshake: {e}"));
    match protocol {
        Protocol::Http2 => {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(failed)?;
            tokio::spawn(
                async move {
                    if let Err(e) = conn.await {
                        debug!("upstream HTTP/2 connection ended: {e}");
                    }
                    drop(permit);
                }
                .in_current_span(),
            );
            Ok(Sender::Http2(sender))
        }
        _ => {
            let (sender, conn) = http1::handshake(io).await.map_err(failed)?;
            tokio::spawn(
                async move {
                    if let Err(e) = conn.await {
                        debug!("upstream HTTP/1.1 connection ended: {e}");
                    }
                    drop(permit);
                }
                .in_current_span(),
            );
            Ok(Sender::Http1(sender))
        }
    }
}
