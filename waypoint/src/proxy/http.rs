//! HTTP on one tunnel: hyper's server for the detected version, each request to `request`.
//!
//! Malformed HTTP is hyper's to answer: a bad HTTP/1.1 request gets 400 and ends that
//! connection (the tunnel), a malformed HTTP/2 stream is reset alone while the connection's other
//! streams go on. On drain the connection is shut down gracefully (GOAWAY, or `connection:
//! close` after the request in flight).

use std::convert::Infallible;
use std::sync::Arc;

use ambit_proto::drain;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use super::{ConnState, Context, Downstream, Protocol, request};
use crate::metrics::PeerLabels;

pub async fn serve<S>(
    ctx: Arc<Context>,
    down: Downstream,
    protocol: Protocol,
    io: S,
    drain: drain::Watch,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let source_labels = Arc::new(PeerLabels::new(
        down.source.as_deref(),
        down.source_identity.to_string(),
    ));
    let conn = Arc::new(ConnState {
        source_labels,
        down,
        protocol,
        cache: Default::default(),
    });
    let service = service_fn(move |req| {
        let (ctx, conn) = (ctx.clone(), conn.clone());
        async move { Ok::<_, Infallible>(request::handle(ctx, conn, req).await) }
    });
    let io = TokioIo::new(io);
    let result = match protocol {
        Protocol::Http2 => {
            let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
        _ => {
            let conn = http1::Builder::new().serve_connection(io, service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => r,
                _ = drain.signaled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    if let Err(e) = result {
        debug!("HTTP connection ended: {e}");
    }
}
