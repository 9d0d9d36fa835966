//! Captured outbound TCP (port 15001): identify the source pod, route, dial, copy.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_proto::hbone::{ConnectRequest, HboneError};
use ambit_proto::relay::relay_with;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::Context;
use super::inbound::{self, LocalDelivery};
use super::record::{ConnectionRecord, Peers, Reporter};
use super::route::{self, Route};

pub async fn handle(ctx: Arc<Context>, client: TcpStream, peer: SocketAddr) {
    // TPROXY keeps the original destination as the socket's local address.
    let Ok(dst) = client.local_addr() else {
        return;
    };
    let state = ctx.store.current();
    let source = state
        .workload_by_ip(peer.ip())
        .filter(|w| w.spec.node == ctx.node && w.spec.node_captured)
        .cloned();
    let Some(source) = source else {
        // Only captured pods of this node should reach this port; anything else is refused
        // rather than proxied under an identity it does not have.
        warn!("refusing outbound connection from {peer}: not a captured workload on this node");
        ctx.metrics.refused("unknown_source");
        return;
    };
    let route = route::outbound(&state, &ctx.node, dst, &ctx.balancer);
    debug!(?route, "routed");
    let mut peers = Peers {
        source_addr: Some(peer),
        source_identity: Some(source.identity.clone()),
        source: Some(source.clone()),
        destination_addr: Some(dst),
        ..Default::default()
    };
    match route {
        Route::Refuse { reason } => {
            ConnectionRecord::new(ctx.metrics.clone(), peers, &[Reporter::Source])
                .refuse("NR", &reason);
        }
        Route::Local {
            target,
            destination,
            service,
        } => {
            peers.destination_addr = Some(target);
            peers.destination_identity = Some(destination.identity.clone());
            peers.destination_service = service.map(|s| s.spec.hostname.clone());
            peers.destination = Some(destination.clone());
            peers.path = "local".into();
            // Same node: no tunnel, but the destination's policy still decides, as if the
            // connection had come over HBONE with the source's certificate.
            let delivery = LocalDelivery {
                destination,
                target,
                source_ip: peer.ip(),
                source_identity: Some(source.identity.clone()),
                mtls: true,
            };
            inbound::deliver(
                &ctx,
                client,
                delivery,
                peers,
                &[Reporter::Source, Reporter::Destination],
            )
            .await;
        }
        Route::Passthrough {
            target,
            destination,
            service,
        } => {
            peers.destination_addr = Some(target);
            peers.destination_service = service.map(|s| s.spec.hostname.clone());
            peers.destination = destination;
            peers.path = "passthrough".into();
            let mut record = ConnectionRecord::new(ctx.metrics.clone(), peers, &[Reporter::Source]);
            // From the pod's own address: the destination sees the real client.
            let from = Some((SocketAddr::new(peer.ip(), 0), true));
            match ctx.dialer.connect_from(target, from).await {
                Ok(upstream) => {
                    record.opened();
                    let (t, end) =
                        relay_with(client, upstream, ctx.timeouts, std::future::pending()).await;
                    record.finish(t, &end);
                }
                Err(e) => record.refuse("UF", &format!("connecting to {target}: {e}")),
            }
        }
        Route::Hbone {
            hbone_address,
            authority,
            identity,
            peer: tunnel_peer,
            waypoint,
            destination,
            service,
        } => {
            peers.destination_addr = Some(authority);
            peers.destination_identity = Some(identity.clone());
            peers.destination_service = service.map(|s| s.spec.hostname.clone());
            peers.destination = destination.or(Some(tunnel_peer));
            peers.mtls = true;
            peers.path = match &waypoint {
                Some(w) => format!("waypoint {w}"),
                None => "hbone".into(),
            };
            let mut record = ConnectionRecord::new(ctx.metrics.clone(), peers, &[Reporter::Source]);
            let cert = match ctx.certs.get(&source.identity).await {
                Ok(issued) => issued.cert,
                Err(e) => {
                    // No certificate, no connection: never fall back to plaintext.
                    record.refuse(
                        "UF",
                        &format!("no certificate for {}: {e}", source.identity),
                    );
                    return;
                }
            };
            let request = ConnectRequest {
                source: cert,
                destination_identities: vec![identity],
                hbone_address,
                source_address: Some(peer.ip()),
                authority,
                forwarded_for: Some(peer),
                headers: Vec::new(),
            };
            match ctx.hbone.connect(request).await {
                Ok(tunnel) => {
                    record.opened();
                    let (t, end) =
                        relay_with(client, tunnel, ctx.timeouts, std::future::pending()).await;
                    record.finish(t, &end);
                }
                Err(e) => {
                    let denied = matches!(&e, HboneError::Refused { status, .. }
                        if *status == http::StatusCode::FORBIDDEN);
                    let flag = if denied { "DENY" } else { "UF" };
                    record.refuse(flag, &e.to_string());
                }
            }
        }
    }
}
