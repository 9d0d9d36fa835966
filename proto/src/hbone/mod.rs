//! HBONE: TCP tunnelled as HTTP/2 CONNECT streams over mutual TLS, Istio's protocol on port 15008.
//!
//! Wire facts this implementation keeps (shared/HBONE.md): TLS 1.3, ALPN `h2`, no SNI; a plain
//! (not extended) CONNECT whose `:authority` is the destination `ip:port`; `200` once the server
//! has connected upstream, an error status otherwise; then raw bytes both ways, each direction
//! ended on its own (END_STREAM is TCP's FIN). Optional `forwarded`, `baggage`, `traceparent`.
//!
//! - [`client`]: opens tunnels over pooled, multiplexed connections;
//! - [`server`]: accepts tunnels and hands each one, with the peer's identity, to a [`Handler`];
//! - [`stream`]: a tunnel as `AsyncRead + AsyncWrite`.

pub mod client;
mod pool;
pub mod server;
mod socket;
mod stream;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{Client, ClientSettings, ConnectRequest};
pub use server::{
    Handler, InboundRequest, IncomingTunnel, Server, ServerCertificates, ServerSettings,
};
pub use stream::H2Stream;

use crate::tls::TlsError;

/// The HBONE port, on every captured pod's address and on every waypoint.
pub const HBONE_PORT: u16 = 15008;

/// The response header in which a refusing server says why, for humans and `ambit explain`.
pub const REASON_HEADER: &str = "x-ambit-reason";

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    #[error("TLS handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    #[error("peer identity: {0}")]
    PeerIdentity(#[from] TlsError),
    #[error("HTTP/2: {0}")]
    Http2(#[from] h2::Error),
    #[error("server refused the tunnel to {authority} with {status}{}", reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Refused {
        authority: SocketAddr,
        status: http::StatusCode,
        reason: Option<String>,
    },
    #[error("an earlier attempt to connect to {0} on behalf of this request failed: {1}")]
    PooledConnectFailed(SocketAddr, String),
    #[error("invalid tunnel request: {0}")]
    BadRequest(String),
    #[error("the tunnel was already answered")]
    AlreadyAnswered,
}

impl HboneError {
    /// True when the failure is about reaching the peer at all (as opposed to the peer answering
    /// no): the caller may try another endpoint.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            HboneError::Connect { .. }
                | HboneError::ConnectTimeout(_)
                | HboneError::PooledConnectFailed(..)
        )
    }
}

/// HTTP/2 flow-control and framing settings for HBONE connections.
///
/// The windows are Istio ztunnel's (4 MiB per stream, 16 MiB per connection): a window that small
/// would cap one stream at window / RTT, and 4 MiB over a 1 ms RTT is 32 Gbit/s, more than a
/// node's NIC, so larger windows would only add memory per stream.
///
/// The frame size is the largest DATA frame we accept, and ours is smaller than Istio's 1 MiB: a
/// frame is passed on only once it has arrived whole, so 1 MiB frames made the receiving agent
/// buffer (and allocate, past glibc's mmap threshold: a page fault per 4 KiB) a whole megabyte
/// before forwarding its first byte. 64 KiB frames measured 20-25% of direct throughput where 1 MiB
/// frames gave 15-17% (bench/README.md). The value is only what we receive; what we send is
/// bounded by the peer's own setting, so Istio peers interoperate unchanged.
#[derive(Debug, Clone, Copy)]
pub struct Http2Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    pub max_frame_size: u32,
    /// How much data one stream may queue for sending before writes wait.
    pub max_send_buffer: usize,
}

impl Default for Http2Settings {
    fn default() -> Self {
        Http2Settings {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            max_frame_size: 64 * 1024,
            max_send_buffer: 1024 * 1024,
        }
    }
}

/// Timeouts shared by both ends.
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default deadline for a TLS handshake anywhere in the mesh.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Parses `for="<ip:port>"` (or an unquoted `for=<ip>`) out of a `Forwarded` header.
pub fn parse_forwarded_for(value: &str) -> Option<SocketAddr> {
    value
        .split([';', ','])
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
        .and_then(|(_, v)| {
            let v = v.trim().trim_matches('"');
            v.parse::<SocketAddr>().ok().or_else(|| {
                v.parse::<std::net::IpAddr>()
                    .ok()
                    .map(|ip| SocketAddr::new(ip, 0))
            })
        })
}

/// Formats a `Forwarded` header value for `addr` (IPv6 bracketed, always quoted).
pub fn format_forwarded_for(addr: SocketAddr) -> String {
    format!("for=\"{addr}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_round_trips() {
        for addr in ["10.0.0.1:4242", "[fd00::1]:80"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_forwarded_for(&format_forwarded_for(addr)), Some(addr));
        }
        assert_eq!(
            parse_forwarded_for("proto=http; For=10.1.2.3"),
            Some("10.1.2.3:0".parse().unwrap())
        );
        assert_eq!(parse_forwarded_for("for=unknown"), None);
        assert_eq!(parse_forwarded_for("garbage"), None);
    }
}
