//! The data path, split by phase: accept a tunnel and detect its protocol (`inbound`, `detect`),
//! serve HTTP on it (`http`) or relay opaque TCP (`tcp`); per request: authorize, route and
//! filter (`request`, `filters`), pick and protect endpoints (`balance`), attempt and retry
//! (`forward`) over upstream connections (`upstream`), answer failures (`respond`) and record
//! (`record`, `body`).

pub mod balance;
pub mod body;
pub mod detect;
pub mod filters;
pub mod forward;
pub mod http;
pub mod inbound;
mod mirror;
pub mod record;
pub mod request;
pub mod respond;
pub mod tcp;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::Identity;
use ambit_proto::certs::{CertError, CertManager, Issued};
use ambit_proto::hbone::{self, HboneError, ServerCertificates};
use ambit_proto::mesh::Workload;
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use rustls::ServerConfig;
use tokio::sync::Semaphore;

use crate::metrics::Metrics;
use crate::state::WaypointConfig;
use crate::trace::Tracer;

/// What a tunnel carries, as detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "http/2",
            Protocol::Tcp => "tcp",
        }
    }
}

/// The waypoint's own certificate: from the mesh CA (renewed by the manager), or fixed (tests).
#[derive(Clone)]
pub enum OwnCertificate {
    Ca {
        manager: Arc<CertManager>,
        identity: Identity,
    },
    Fixed(Issued),
}

impl OwnCertificate {
    pub async fn get(&self) -> Result<Issued, CertError> {
        match self {
            OwnCertificate::Ca { manager, identity } => manager.get(identity).await,
            OwnCertificate::Fixed(issued) => Ok(issued.clone()),
        }
    }
}

/// The HBONE server presents the current certificate on every handshake, so a renewal is
/// picked up by the next connection without a restart.
impl ServerCertificates for OwnCertificate {
    async fn server_config(&self, _local: SocketAddr) -> Result<Arc<ServerConfig>, HboneError> {
        self.get()
            .await
            .map(|issued| issued.server_config)
            .map_err(|e| HboneError::BadRequest(format!("no certificate to serve: {e}")))
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub upstream_hbone_port: u16,
    pub detect_timeout: Duration,
    pub retry_buffer: usize,
    pub tcp_timeouts: Timeouts,
}

/// What every tunnel and request needs; one per waypoint.
pub struct Context {
    pub config: Arc<WaypointConfig>,
    pub certificate: OwnCertificate,
    pub hbone: hbone::Client,
    /// For endpoints outside the mesh (plain TCP).
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    pub backends: balance::Backends,
    pub settings: Settings,
    /// One permit per request in flight, waypoint-wide.
    pub requests: Arc<Semaphore>,
    /// Set when traces are exported (`--otlp-endpoint`).
    pub tracer: Option<Arc<Tracer>>,
}

/// Who a tunnel is from and what it was addressed to.
#[derive(Clone)]
pub struct Downstream {
    /// The original client: the `forwarded` address the agent sent, else the TCP peer (an agent
    /// connects from its client pod's own address).
    pub source_addr: SocketAddr,
    /// Proven by mTLS: the agent presents its client workload's certificate.
    pub source_identity: Identity,
    pub source: Option<Arc<Workload>>,
    /// The CONNECT authority: the original destination (a service VIP or a pod, with port).
    pub authority: SocketAddr,
}

/// Per downstream connection: who it is and the upstream connections opened on its behalf.
pub struct ConnState {
    pub down: Downstream,
    /// The source side of every request's metric labels, built once per connection.
    pub source_labels: Arc<crate::metrics::PeerLabels>,
    pub protocol: Protocol,
    pub cache: upstream::ConnCache,
}
