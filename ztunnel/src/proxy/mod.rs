//! The data path, split by phase: accept (here), route (`route`), authorize (`inbound`, with
//! `ambit_proto::authz`), dial and copy (`outbound`, `inbound`), record (`record`). Open
//! connections stay revocable through `tracker`.

pub mod inbound;
pub mod outbound;
pub mod record;
pub mod route;
pub mod tracker;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::drain;
use ambit_proto::hbone;
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info_span, warn};

use crate::certs::CertManager;
use crate::metrics::Metrics;
use crate::state::Store;

/// What every connection handler needs; shared by all of them.
pub struct Context {
    pub node: String,
    pub store: Arc<Store>,
    pub certs: Arc<CertManager>,
    pub hbone: hbone::Client,
    /// Marked (never captured) and with the connect timeout.
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    pub tracker: Arc<tracker::Tracker>,
    pub balancer: route::Balancer,
    pub timeouts: Timeouts,
    /// One permit per proxied connection, across all listeners.
    pub limit: Arc<Semaphore>,
}

/// A listener for TPROXY'd connections: IP_TRANSPARENT before bind, or the kernel silently drops
/// the diverted SYNs (NETLAB.md).
pub fn transparent_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    match addr {
        SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(addr))?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Accepts until draining; each connection runs `handle` in its own task and span, holding a
/// connection permit (at the limit, accepting waits: backpressure instead of unbounded tasks)
/// and a drain watch (shutdown waits for it, up to the deadline).
pub async fn serve<H, F>(
    listener: TcpListener,
    ctx: Arc<Context>,
    direction: &'static str,
    drain: drain::Watch,
    handle: H,
) where
    H: Fn(Arc<Context>, TcpStream, SocketAddr) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = drain.signaled() => return,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: wait a little rather than spin.
                    warn!(direction, "accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = drain.signaled() => return,
        };
        let _ = stream.set_nodelay(true);
        let dst = stream.local_addr().ok();
        let span = info_span!("conn", direction, src = %peer, dst = ?dst);
        let watch = drain.clone();
        let fut = handle(ctx.clone(), stream, peer);
        tokio::spawn(
            async move {
                debug!("accepted");
                fut.await;
                drop(permit);
                drop(watch);
            }
            .instrument(span),
        );
    }
}
