//! Traffic for this node's captured pods: HBONE tunnels (15008), plaintext (15006) and the
//! same-node short path. All three end in [`deliver`]: authorize, dial the pod from the client's
//! own address, copy, stay revocable.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::Identity;
use ambit_proto::api::MtlsMode;
use ambit_proto::hbone::{self, HboneError, InboundRequest, IncomingTunnel};
use ambit_proto::relay::{Endpoint, relay_with};
use http::StatusCode;
use rustls::ServerConfig;
use tokio::net::TcpStream;
use tracing::{Instrument, debug, info_span, warn};

use super::Context;
use super::record::{ConnectionRecord, Peers, Reporter};
use super::tracker::Authorized;
use crate::state::{MeshState, Workload};

/// A connection to hand to a local pod.
pub struct LocalDelivery {
    pub destination: Arc<Workload>,
    pub target: SocketAddr,
    pub source_ip: IpAddr,
    pub source_identity: Option<Identity>,
    pub mtls: bool,
}

/// How the client is answered once the decision is made: a plain TCP connection is simply
/// closed on refusal, an HBONE tunnel gets a status.
pub trait Downstream: Send {
    type Stream: Endpoint + Send;
    fn accept(self) -> Option<Self::Stream>;
    fn refuse(self, status: StatusCode, reason: &str);
}

impl Downstream for TcpStream {
    type Stream = TcpStream;
    fn accept(self) -> Option<TcpStream> {
        Some(self)
    }
    fn refuse(self, _status: StatusCode, _reason: &str) {}
}

impl Downstream for IncomingTunnel {
    type Stream = hbone::H2Stream;
    fn accept(self) -> Option<hbone::H2Stream> {
        IncomingTunnel::accept(self).ok()
    }
    fn refuse(self, status: StatusCode, reason: &str) {
        IncomingTunnel::refuse(self, status, reason)
    }
}

/// Authorizes, dials the pod spoofing the client's address, relays until done or revoked.
pub async fn deliver<D: Downstream>(
    ctx: &Context,
    downstream: D,
    d: LocalDelivery,
    peers: Peers,
    reporters: &[Reporter],
) {
    let state = ctx.store.current();
    let mut record = ConnectionRecord::new(ctx.metrics.clone(), peers, reporters);
    let authorized = Authorized {
        destination_uid: d.destination.spec.uid.clone(),
        source_identity: d.source_identity.clone(),
        source_ip: d.source_ip,
        destination_ip: d.target.ip(),
        destination_port: d.target.port(),
    };
    let decision = state.authorize(&d.destination, &authorized.attributes());
    if !decision.allowed() {
        debug!("{}", decision.explain());
        ctx.metrics.refused("policy");
        downstream.refuse(StatusCode::FORBIDDEN, &decision.explain());
        record.refuse("DENY", &decision.explain());
        return;
    }
    let from = Some((SocketAddr::new(d.source_ip, 0), true));
    let upstream = match ctx.dialer.connect_from(d.target, from).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("connecting to {}: {e}", d.target);
            downstream.refuse(StatusCode::SERVICE_UNAVAILABLE, &reason);
            record.refuse("UF", &reason);
            return;
        }
    };
    let Some(stream) = downstream.accept() else {
        record.refuse("UF", "the client went away");
        return;
    };
    let mut registration = ctx.tracker.register(authorized);
    record.opened();
    let (t, end) = relay_with(stream, upstream, ctx.timeouts, registration.revoked()).await;
    record.finish(t, &end);
}

/// A captured local pod that `ip` belongs to.
fn local_workload(ctx: &Context, state: &MeshState, ip: IpAddr) -> Option<Arc<Workload>> {
    state
        .workload_by_ip(ip)
        .filter(|w| w.spec.node == ctx.node && w.spec.node_captured)
        .cloned()
}

/// Plaintext for a captured pod (port 15006): accepted unless the pod requires mTLS.
pub async fn handle_plaintext(ctx: Arc<Context>, client: TcpStream, peer: SocketAddr) {
    let Ok(dst) = client.local_addr() else {
        return;
    };
    let state = ctx.store.current();
    let Some(destination) = local_workload(&ctx, &state, dst.ip()) else {
        ctx.metrics.refused("unknown_destination");
        return;
    };
    let peers = Peers {
        source_addr: Some(peer),
        source: state.workload_by_ip(peer.ip()).cloned(),
        destination_addr: Some(dst),
        destination_identity: Some(destination.identity.clone()),
        destination: Some(destination.clone()),
        path: "plaintext".into(),
        ..Default::default()
    };
    if destination.spec.mtls_mode == MtlsMode::Strict as i32 {
        // STRICT PeerAuthentication: only mTLS may reach the pod. Node-originated traffic
        // (kubelet probes) never passes through here: it leaves the node's own stack, not
        // PREROUTING, so probes keep working.
        ctx.metrics.refused("mtls_required");
        ConnectionRecord::new(ctx.metrics.clone(), peers, &[Reporter::Destination])
            .refuse("DENY", "STRICT mTLS: plaintext refused");
        return;
    }
    let delivery = LocalDelivery {
        destination,
        target: dst,
        source_ip: peer.ip(),
        source_identity: None,
        mtls: false,
    };
    deliver(&ctx, client, delivery, peers, &[Reporter::Destination]).await;
}

/// HBONE for this node's pods.
#[derive(Clone)]
pub struct HboneInbound {
    pub ctx: Arc<Context>,
}

impl hbone::Handler for HboneInbound {
    async fn handle(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        let span = info_span!(
            "conn",
            direction = "inbound",
            src = %req.peer_addr,
            dst = %req.authority,
            peer_identity = %req.peer_identity
        );
        self.tunnel(req, tunnel).instrument(span).await
    }
}

impl HboneInbound {
    async fn tunnel(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        let ctx = &self.ctx;
        let _permit = match ctx.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                ctx.metrics.refused("connection_limit");
                tunnel.refuse(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached");
                return;
            }
        };
        // The tunnel may only reach the pod whose address was dialled (HBONE's rule).
        if req.authority.ip() != req.local_addr.ip() {
            ctx.metrics.refused("bad_authority");
            tunnel.refuse(
                StatusCode::BAD_REQUEST,
                "authority differs from the address dialled",
            );
            return;
        }
        let state = ctx.store.current();
        let Some(destination) = local_workload(ctx, &state, req.local_addr.ip()) else {
            ctx.metrics.refused("unknown_destination");
            tunnel.refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no such workload on this node",
            );
            return;
        };
        // The client's address: the TCP peer (agents dial from the client pod's own IP), or
        // what a waypoint says its client was. Only waypoints are trusted to say so.
        let source_ip = match req.forwarded_for {
            Some(f) if state.is_waypoint(&req.peer_identity) => f.ip(),
            _ => req.peer_addr.ip(),
        };
        let peers = Peers {
            source_addr: Some(SocketAddr::new(source_ip, req.peer_addr.port())),
            source: state.workload_by_ip(source_ip).cloned(),
            source_identity: Some(req.peer_identity.clone()),
            destination_addr: Some(req.authority),
            destination_identity: Some(destination.identity.clone()),
            destination: Some(destination.clone()),
            mtls: true,
            path: "hbone".into(),
            ..Default::default()
        };
        let delivery = LocalDelivery {
            destination,
            target: req.authority,
            source_ip,
            source_identity: Some(req.peer_identity),
            mtls: true,
        };
        deliver(ctx, tunnel, delivery, peers, &[Reporter::Destination]).await;
    }
}

/// Serves each local pod's own certificate, chosen by the address the client dialled.
#[derive(Clone)]
pub struct PodCertificates {
    pub ctx: Arc<Context>,
}

impl hbone::ServerCertificates for PodCertificates {
    async fn server_config(&self, local: SocketAddr) -> Result<Arc<ServerConfig>, HboneError> {
        let state = self.ctx.store.current();
        let workload = local_workload(&self.ctx, &state, local.ip()).ok_or_else(|| {
            HboneError::BadRequest(format!(
                "{} is not a captured workload on this node",
                local.ip()
            ))
        })?;
        match self.ctx.certs.get(&workload.identity).await {
            Ok(issued) => Ok(issued.server_config),
            Err(e) => {
                warn!(identity = %workload.identity, "no certificate to serve: {e}");
                Err(HboneError::BadRequest(format!(
                    "no certificate for {}",
                    workload.identity
                )))
            }
        }
    }
}
