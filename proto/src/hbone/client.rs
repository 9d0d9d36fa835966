//! Opening HBONE tunnels.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tracing::{Instrument, debug, debug_span};

use super::pool::{Connection, Pool, PoolKey};
use super::socket::{BufferedSocket, widen_send_buffer};
use super::{
    DEFAULT_CONNECT_TIMEOUT, H2Stream, HANDSHAKE_TIMEOUT, HboneError, Http2Settings, REASON_HEADER,
    format_forwarded_for,
};
use crate::identity::Identity;
use crate::net::Dialer;
use crate::tls::WorkloadCertificate;

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub http2: Http2Settings,
    /// Streams per pooled connection before another connection is opened. Istio servers allow
    /// 200; staying below leaves room for the server to refuse nothing.
    pub max_streams_per_connection: usize,
    /// Pooled connections with no stream for this long are closed.
    pub idle_timeout: Duration,
    pub handshake_timeout: Duration,
    pub dialer: Dialer,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            http2: Http2Settings::default(),
            max_streams_per_connection: 100,
            idle_timeout: Duration::from_secs(60),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            dialer: Dialer::new().with_connect_timeout(DEFAULT_CONNECT_TIMEOUT),
        }
    }
}

/// One tunnel to open.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// The certificate presented: the source workload's (or the waypoint's own).
    pub source: Arc<WorkloadCertificate>,
    /// The server must prove one of these (a service's endpoints may run as different accounts).
    pub destination_identities: Vec<Identity>,
    /// Where the HBONE server listens: `<pod ip>:15008`, or a waypoint's.
    pub hbone_address: SocketAddr,
    /// The address to connect from. A node agent connects from the client pod's own IP
    /// (IP_TRANSPARENT), so the destination sees who is calling without trusting a header; such
    /// connections are pooled per source address.
    pub source_address: Option<IpAddr>,
    /// The CONNECT target: the destination `ip:port` (a service VIP when going via a waypoint).
    pub authority: SocketAddr,
    /// The original client, sent as `forwarded: for="..."` (waypoints set it).
    pub forwarded_for: Option<SocketAddr>,
    /// Extra request headers (`baggage`, `traceparent`).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// An HBONE client. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Client {
    pool: Arc<Pool>,
    settings: Arc<ClientSettings>,
}

impl Client {
    /// Must be called inside a tokio runtime (the pool runs an idle reaper).
    pub fn new(settings: ClientSettings) -> Self {
        Client {
            pool: Pool::new(settings.max_streams_per_connection, settings.idle_timeout),
            settings: Arc::new(settings),
        }
    }

    /// Opens a tunnel; resolves once the server answered 200 (its upstream is connected).
    pub async fn connect(&self, req: ConnectRequest) -> Result<H2Stream, HboneError> {
        let mut destinations = req.destination_identities.clone();
        destinations.sort();
        destinations.dedup();
        let key = PoolKey {
            source: req.source.identity().clone(),
            destinations,
            address: req.hbone_address,
            source_address: req.source_address,
        };
        // A pooled connection can turn out dead (peer restarted, GOAWAY) only when used; one retry
        // on a fresh connection hides that from the caller.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let lease = self
                .pool
                .checkout(&key, || self.connect_peer(&req, &key.destinations))
                .await?;
            let send = lease.conn.send.clone();
            let ready = match send.ready().await {
                Ok(ready) => ready,
                Err(e) if attempts < 2 => {
                    debug!(peer = %req.hbone_address, "pooled connection unusable, reconnecting: {e}");
                    lease.conn.retire();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut send = ready;
            let (response, body) = match send.send_request(build_request(&req)?, false) {
                Ok(sent) => sent,
                Err(e) if attempts < 2 && (e.is_go_away() || e.is_io()) => {
                    lease.conn.retire();
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let response = response.await?;
            let status = response.status();
            if status != StatusCode::OK {
                let reason = response
                    .headers()
                    .get(REASON_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                return Err(HboneError::Refused {
                    authority: req.authority,
                    status,
                    reason,
                });
            }
            return Ok(H2Stream::new(
                body,
                response.into_body(),
                Some(Box::new(lease)),
            ));
        }
    }

    /// Open connections in the pool (for tests and the admin dump).
    pub fn pooled_connections(&self) -> usize {
        self.pool.connection_count()
    }

    async fn connect_peer(
        &self,
        req: &ConnectRequest,
        destinations: &[Identity],
    ) -> Result<Connection, HboneError> {
        let addr = req.hbone_address;
        let span = debug_span!("hbone_connect", peer = %addr, src = %req.source.identity());
        async move {
            let settings = &self.settings;
            let from = req.source_address.map(|ip| (SocketAddr::new(ip, 0), true));
            let tcp = settings
                .dialer
                .connect_from(addr, from)
                .await
                .map_err(|source| {
                    if source.kind() == std::io::ErrorKind::TimedOut {
                        HboneError::ConnectTimeout(addr)
                    } else {
                        HboneError::Connect { addr, source }
                    }
                })?;
            let tls_config = Arc::new(req.source.client_config(destinations));
            let connector = TlsConnector::from(tls_config);
            let server_name = ServerName::IpAddress(addr.ip().into());
            let mut tls = tokio::time::timeout(
                settings.handshake_timeout,
                connector.connect(server_name, BufferedSocket::new(tcp)),
            )
            .await
            .map_err(|_| HboneError::HandshakeTimeout)?
            .map_err(|source| HboneError::Handshake { addr, source })?;
            widen_send_buffer(tls.get_mut().1);
            let h2 = settings.http2;
            let (send, connection) = h2::client::Builder::new()
                .initial_window_size(h2.stream_window)
                .initial_connection_window_size(h2.connection_window)
                .max_frame_size(h2.max_frame_size)
                .max_send_buffer_size(h2.max_send_buffer)
                .enable_push(false)
                .handshake::<_, Bytes>(tls)
                .await?;
            let closed = Arc::new(AtomicBool::new(false));
            let flag = closed.clone();
            // The pooled connection outlives the tunnel that opened it and serves others: it gets
            // a span of its own rather than the first caller's (debug level: it runs every frame).
            let span = debug_span!(parent: None, "hbone_connection", peer = %addr, src = %req.source.identity());
            tokio::spawn(
                async move {
                    if let Err(e) = connection.await {
                        debug!("HBONE connection ended: {e}");
                    }
                    flag.store(true, Ordering::Release);
                }
                .instrument(span),
            );
            debug!("connected");
            Ok(Connection::new(send, closed, self.pool.max_streams()))
        }
        .instrument(span)
        .await
    }
}

fn build_request(req: &ConnectRequest) -> Result<Request<()>, HboneError> {
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(req.authority.to_string());
    if let Some(addr) = req.forwarded_for {
        builder = builder.header(http::header::FORWARDED, format_forwarded_for(addr));
    }
    for (name, value) in &req.headers {
        builder = builder.header(name, value);
    }
    builder
        .body(())
        .map_err(|e| HboneError::BadRequest(e.to_string()))
}
