//! Where a captured outbound connection goes. Pure: a function of the mesh state, the source
//! workload and the original destination, so it is unit-tested here and `ambit explain` can show
//! exactly the path the agent would take.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ambit_proto::Identity;
use ambit_proto::api::{self, gateway_address::Destination};
use ambit_proto::hbone::HBONE_PORT;

use crate::state::{MeshState, Service, Workload};

/// The path for one connection.
#[derive(Debug, Clone)]
pub enum Route {
    /// HBONE to a peer agent (or an HBONE-capable sidecar) or to a waypoint.
    Hbone {
        /// `<ip>:15008` to dial.
        hbone_address: SocketAddr,
        /// The CONNECT authority: the destination the tunnel's far end connects to (the service
        /// VIP when going through a waypoint).
        authority: SocketAddr,
        /// What the far end must prove.
        identity: Identity,
        /// The workload the tunnel ends at (the waypoint, or the destination pod).
        peer: Arc<Workload>,
        /// Set when `peer` is a waypoint: its name, `<ns>/<name>` of its workload.
        waypoint: Option<String>,
        /// The destination workload when known (not when a waypoint will pick the endpoint).
        destination: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// The destination is a captured pod on this node: no tunnel, still authorized.
    Local {
        target: SocketAddr,
        destination: Arc<Workload>,
        service: Option<Arc<Service>>,
    },
    /// Outside the mesh: plain TCP to the original destination (or the endpoint picked).
    Passthrough {
        target: SocketAddr,
        destination: Option<Arc<Workload>>,
        service: Option<Arc<Service>>,
    },
    /// Refused before dialling.
    Refuse { reason: String },
}

/// Picks among a service's endpoints. Round robin over the healthy ones: a shared counter, so
/// spreading is fair across all connections of this agent.
#[derive(Debug, Default)]
pub struct Balancer {
    next: AtomicUsize,
}

impl Balancer {
    fn pick<T: Clone>(&self, candidates: &[T]) -> Option<T> {
        if candidates.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(candidates[i].clone())
    }
}

/// Decides the path from `source` to the original destination `dst`.
pub fn outbound(state: &MeshState, node: &str, dst: SocketAddr, balancer: &Balancer) -> Route {
    if let Some(service) = state.service_by_vip(dst.ip(), dst.port()) {
        if let Some(route) = via_waypoint(state, service.spec.waypoint.as_ref(), dst, balancer) {
            return with_service(route, service);
        }
        let endpoints: Vec<(Arc<Workload>, u16)> = state
            .endpoints(service, dst.port())
            .into_iter()
            .filter(|(w, _)| w.is_healthy() && !w.addresses.is_empty())
            .collect();
        let Some((endpoint, port)) = balancer.pick(&endpoints) else {
            return Route::Refuse {
                reason: format!(
                    "service {} has no healthy endpoint for port {}",
                    service.spec.hostname,
                    dst.port()
                ),
            };
        };
        let target = SocketAddr::new(endpoint.addresses[0], port);
        // Service traffic honours the service's waypoint only; the endpoint's own waypoint is
        // for traffic addressed to the pod directly (Istio's rule).
        return with_service(direct(node, target, endpoint), service);
    }
    match state.workload_by_ip(dst.ip()) {
        Some(workload) => {
            if let Some(route) = via_waypoint(state, workload.spec.waypoint.as_ref(), dst, balancer)
            {
                return route;
            }
            direct(node, dst, workload.clone())
        }
        None => Route::Passthrough {
            target: dst,
            destination: None,
            service: None,
        },
    }
}

/// To a known workload without a waypoint in between.
fn direct(node: &str, target: SocketAddr, workload: Arc<Workload>) -> Route {
    if workload.spec.node == node && workload.spec.node_captured {
        return Route::Local {
            target,
            destination: workload,
            service: None,
        };
    }
    if workload.speaks_hbone() {
        return Route::Hbone {
            hbone_address: SocketAddr::new(target.ip(), HBONE_PORT),
            authority: target,
            identity: workload.identity.clone(),
            peer: workload.clone(),
            waypoint: None,
            destination: Some(workload),
            service: None,
        };
    }
    Route::Passthrough {
        target,
        destination: Some(workload),
        service: None,
    }
}

/// HBONE to the waypoint named by `gateway`, if any. A waypoint that cannot be resolved refuses
/// the connection: skipping it would skip the L7 policy it enforces.
fn via_waypoint(
    state: &MeshState,
    gateway: Option<&api::GatewayAddress>,
    dst: SocketAddr,
    balancer: &Balancer,
) -> Option<Route> {
    let gateway = gateway?;
    let port = match gateway.hbone_mtls_port {
        0 => HBONE_PORT,
        p => u16::try_from(p).unwrap_or(HBONE_PORT),
    };
    let instances: Vec<Arc<Workload>> = match &gateway.destination {
        Some(Destination::Hostname(h)) => {
            match state.service_by_hostname(&h.namespace, &h.hostname) {
                Some(svc) => state
                    .endpoints(svc, port)
                    .into_iter()
                    .map(|(w, _)| w)
                    .filter(|w| w.is_healthy() && !w.addresses.is_empty())
                    .collect(),
                None => Vec::new(),
            }
        }
        Some(Destination::Address(a)) => a
            .parse::<IpAddr>()
            .ok()
            .and_then(|ip| state.workload_by_ip(ip).cloned())
            .into_iter()
            .collect(),
        None => Vec::new(),
    };
    let Some(waypoint) = balancer.pick(&instances) else {
        return Some(Route::Refuse {
            reason: format!("waypoint {} has no ready instance", describe(gateway)),
        });
    };
    Some(Route::Hbone {
        hbone_address: SocketAddr::new(waypoint.addresses[0], port),
        authority: dst,
        identity: waypoint.identity.clone(),
        waypoint: Some(waypoint.display_name()),
        peer: waypoint,
        destination: None,
        service: None,
    })
}

fn with_service(mut route: Route, svc: &Arc<Service>) -> Route {
    match &mut route {
        Route::Hbone { service, .. }
        | Route::Local { service, .. }
        | Route::Passthrough { service, .. } => *service = Some(svc.clone()),
        Route::Refuse { .. } => {}
    }
    route
}

fn describe(gateway: &api::GatewayAddress) -> String {
    match &gateway.destination {
        Some(Destination::Hostname(h)) => format!("{}/{}", h.namespace, h.hostname),
        Some(Destination::Address(a)) => a.clone(),
        None => "(unnamed)".into(),
    }
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
