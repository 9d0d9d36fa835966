//! Accepting HBONE tunnels.
//!
//! Per connection: an accept permit (the connection limit is backpressure: at the limit the server
//! stops accepting and the kernel's backlog holds new peers), a TLS handshake under a deadline with
//! the certificate for the address the peer dialled, then HTTP/2 with every CONNECT stream handed
//! to the [`Handler`] on a task of its own. Anything a peer sends that is not TLS, HTTP/2 or a
//! well-formed CONNECT ends that connection or stream only; the server keeps serving the others.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument, debug, debug_span, warn};

use super::socket::{BufferedSocket, widen_send_buffer};
use super::{
    H2Stream, HANDSHAKE_TIMEOUT, HboneError, Http2Settings, REASON_HEADER, parse_forwarded_for,
};
use crate::drain;
use crate::identity::Identity;
use crate::tls::peer_identity;

/// Picks the server certificate for a connection by the local address the peer dialled: on a
/// node, each captured pod's IP serves that pod's identity.
pub trait ServerCertificates: Send + Sync + 'static {
    fn server_config(
        &self,
        local: SocketAddr,
    ) -> impl Future<Output = Result<Arc<ServerConfig>, HboneError>> + Send;
}

/// Serves the same configuration for every address (a waypoint, a test server).
impl ServerCertificates for Arc<ServerConfig> {
    async fn server_config(&self, _local: SocketAddr) -> Result<Arc<ServerConfig>, HboneError> {
        Ok(self.clone())
    }
}

/// What a tunnel asks for, and who asks.
#[derive(Debug, Clone)]
pub struct InboundRequest {
    /// The client's identity, proven by its certificate.
    pub peer_identity: Identity,
    /// The TCP peer (a node agent or a waypoint).
    pub peer_addr: SocketAddr,
    /// The address the peer dialled (a pod's IP on 15008).
    pub local_addr: SocketAddr,
    /// The CONNECT target.
    pub authority: SocketAddr,
    /// From the `forwarded` header, when a waypoint relays for the original client.
    pub forwarded_for: Option<SocketAddr>,
    pub headers: HeaderMap,
}

/// Handles accepted tunnels: decides, connects upstream, then answers.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        req: InboundRequest,
        tunnel: IncomingTunnel,
    ) -> impl Future<Output = ()> + Send;
}

/// A tunnel awaiting its answer. Answer with [`accept`](Self::accept) once the upstream is
/// connected, or [`refuse`](Self::refuse). Dropping it unanswered refuses it with 503, so a
/// handler that fails half-way never leaves the client hanging.
pub struct IncomingTunnel {
    respond: Option<SendResponse<Bytes>>,
    body: Option<RecvStream>,
}

impl IncomingTunnel {
    /// Answers 200 and returns the tunnel's byte stream.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let mut respond = self.respond.take().ok_or(HboneError::AlreadyAnswered)?;
        let body = self.body.take().ok_or(HboneError::AlreadyAnswered)?;
        let send = respond.send_response(Response::new(()), false)?;
        Ok(H2Stream::new(send, body, None))
    }

    /// Answers with an error status; `reason` goes in the `x-ambit-reason` header.
    pub fn refuse(mut self, status: StatusCode, reason: &str) {
        if let Some(respond) = self.respond.take() {
            send_refusal(respond, status, reason);
        }
    }
}

impl Drop for IncomingTunnel {
    fn drop(&mut self) {
        if let Some(respond) = self.respond.take() {
            send_refusal(
                respond,
                StatusCode::SERVICE_UNAVAILABLE,
                "tunnel not handled",
            );
        }
    }
}

fn send_refusal(mut respond: SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    if let Ok(value) = http::HeaderValue::from_str(reason) {
        response.headers_mut().insert(REASON_HEADER, value);
    }
    if let Err(e) = respond.send_response(response, true) {
        debug!("could not send refusal: {e}");
    }
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub http2: Http2Settings,
    /// Concurrent CONNECT streams per connection (Istio: 200).
    pub max_concurrent_streams: u32,
    /// Concurrent connections; at the limit, accepting pauses.
    pub max_connections: usize,
    pub handshake_timeout: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            http2: Http2Settings::default(),
            max_concurrent_streams: 200,
            max_connections: 16 * 1024,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

pub struct Server<C, H> {
    listener: TcpListener,
    certs: Arc<C>,
    handler: Arc<H>,
    settings: ServerSettings,
}

impl<C: ServerCertificates, H: Handler> Server<C, H> {
    pub fn new(listener: TcpListener, certs: C, handler: H, settings: ServerSettings) -> Self {
        Server {
            listener,
            certs: Arc::new(certs),
            handler: Arc::new(handler),
            settings,
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `drain` is signalled; then stops accepting and asks every connection to
    /// finish (GOAWAY). Open tunnels keep `drain` held until they end.
    pub async fn run(self, drain: drain::Watch) {
        let limit = Arc::new(Semaphore::new(self.settings.max_connections));
        let settings = Arc::new(self.settings);
        loop {
            let permit = tokio::select! {
                permit = limit.clone().acquire_owned() => permit.expect("never closed"),
                _ = drain.signaled() => break,
            };
            let (tcp, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning on the error.
                        warn!("HBONE accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = drain.signaled() => break,
            };
            let conn = ConnectionTask {
                certs: self.certs.clone(),
                handler: self.handler.clone(),
                settings: settings.clone(),
                drain: drain.clone(),
            };
            // Debug level, like everything logged in it: this task runs every frame of every
            // tunnel on the connection, and an enabled span costs an enter and exit per poll.
            let span = debug_span!("hbone_inbound", peer = %peer, peer_id = tracing::field::Empty);
            tokio::spawn(
                async move {
                    if let Err(e) = conn.serve(tcp, peer).await {
                        debug!("connection ended: {e}");
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
        debug!("HBONE server stopped accepting");
    }
}

struct ConnectionTask<C, H> {
    certs: Arc<C>,
    handler: Arc<H>,
    settings: Arc<ServerSettings>,
    drain: drain::Watch,
}

impl<C: ServerCertificates, H: Handler> ConnectionTask<C, H> {
    async fn serve(self, tcp: TcpStream, peer: SocketAddr) -> Result<(), HboneError> {
        let local = tcp
            .local_addr()
            .map_err(|source| HboneError::Handshake { addr: peer, source })?;
        let _ = tcp.set_nodelay(true);
        let settings = &self.settings;
        // Certificate lookup, TLS and the HTTP/2 preface all fall under one deadline, so a peer
        // that connects and says nothing holds a slot for at most that long.
        let handshake = async {
            let config = self.certs.server_config(local).await?;
            let mut tls = TlsAcceptor::from(config)
                .accept(BufferedSocket::new(tcp))
                .await
                .map_err(|source| HboneError::Handshake { addr: peer, source })?;
            widen_send_buffer(tls.get_mut().1);
            let identity = peer_identity(tls.get_ref().1)?;
            let h2 = settings.http2;
            let conn = h2::server::Builder::new()
                .initial_window_size(h2.stream_window)
                .initial_connection_window_size(h2.connection_window)
                .max_frame_size(h2.max_frame_size)
                .max_send_buffer_size(h2.max_send_buffer)
                .max_concurrent_streams(settings.max_concurrent_streams)
                .handshake::<_, Bytes>(tls)
                .await?;
            Ok::<_, HboneError>((identity, conn))
        };
        let (identity, mut conn) = tokio::time::timeout(settings.handshake_timeout, handshake)
            .await
            .map_err(|_| HboneError::HandshakeTimeout)??;
        tracing::Span::current().record("peer_id", tracing::field::display(&identity));
        debug!("accepted");

        let mut draining = false;
        loop {
            let next = if draining {
                conn.accept().await
            } else {
                tokio::select! {
                    next = conn.accept() => next,
                    _ = self.drain.signaled() => {
                        conn.graceful_shutdown();
                        draining = true;
                        continue;
                    }
                }
            };
            let Some(next) = next else { break };
            let (request, respond) = next?;
            let handler = self.handler.clone();
            let base = (identity.clone(), peer, local);
            let watch = self.drain.clone();
            // Outside this connection's span: the handler opens the tunnel's own, with the peer's
            // identity in it, and one span per poll is cheaper than three nested.
            tokio::spawn(async move {
                dispatch(handler, base, request, respond).await;
                drop(watch);
            });
        }
        Ok(())
    }
}

async fn dispatch<H: Handler>(
    handler: Arc<H>,
    (peer_identity, peer_addr, local_addr): (Identity, SocketAddr, SocketAddr),
    request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let (parts, body) = request.into_parts();
    let tunnel = IncomingTunnel {
        respond: Some(respond),
        body: Some(body),
    };
    if parts.method != Method::CONNECT {
        return tunnel.refuse(StatusCode::METHOD_NOT_ALLOWED, "HBONE accepts only CONNECT");
    }
    let Some(authority) = parts
        .uri
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        return tunnel.refuse(StatusCode::BAD_REQUEST, "authority must be ip:port");
    };
    let forwarded_for = parts
        .headers
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let req = InboundRequest {
        peer_identity,
        peer_addr,
        local_addr,
        authority,
        forwarded_for,
        headers: parts.headers,
    };
    handler.handle(req, tunnel).await;
}
