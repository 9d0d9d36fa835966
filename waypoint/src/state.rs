//! The waypoint's config: the shared mesh store (`ambit_proto::mesh`), routes validated before
//! they are applied, the compiled route table cached per config version, and the lookups a
//! request needs (what was it addressed to, which policies apply, which endpoints serve a
//! backend).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ambit_proto::api::{self, resource::Kind, type_url};
use ambit_proto::mesh::{MeshState, Service, Store, Workload};
use ambit_proto::xds::ConfigHandler;

use ambit_proto::routes::{self, RouteTable};

/// What a tunnel was addressed to (its CONNECT authority).
#[derive(Clone)]
pub enum Target {
    /// A service VIP and port.
    Service(Arc<Service>, u16),
    /// A pod address (traffic to a workload that uses this waypoint).
    Workload(Arc<Workload>, u16),
}

impl Target {
    pub fn resolve(state: &MeshState, authority: SocketAddr) -> Option<Target> {
        if let Some(svc) = state.service_by_vip(authority.ip(), authority.port()) {
            return Some(Target::Service(svc.clone(), authority.port()));
        }
        state
            .workload_by_ip(authority.ip())
            .map(|w| Target::Workload(w.clone(), authority.port()))
    }

    pub fn port(&self) -> u16 {
        match self {
            Target::Service(_, p) | Target::Workload(_, p) => *p,
        }
    }

    pub fn service(&self) -> Option<&Arc<Service>> {
        match self {
            Target::Service(s, _) => Some(s),
            Target::Workload(..) => None,
        }
    }

    /// The policy target key of the service, as the controller writes `Authorization.targets`.
    fn policy_key(&self) -> Option<String> {
        self.service()
            .map(|s| format!("Service/{}/{}", s.spec.namespace, s.spec.name))
    }
}

/// One endpoint a request can be sent to.
#[derive(Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    /// Pod IP and target port.
    pub addr: SocketAddr,
}

/// The healthy endpoints of the service `hostname` in `namespace` for service port `port`.
pub fn endpoints(
    state: &MeshState,
    namespace: &str,
    hostname: &str,
    port: u16,
) -> Option<(Arc<Service>, Vec<Endpoint>)> {
    let svc = state.service_by_hostname(namespace, hostname)?;
    let list = state
        .endpoints(svc, port)
        .into_iter()
        .filter(|(w, _)| w.is_healthy())
        .filter_map(|(w, target)| {
            let ip = *w.addresses.first()?;
            Some(Endpoint {
                addr: SocketAddr::new(ip, target),
                workload: w,
            })
        })
        .collect();
    Some((svc.clone(), list))
}

pub struct WaypointConfig {
    pub store: Arc<Store>,
    /// (namespace, name) of the waypoint Gateway.
    pub gateway: (String, String),
    table: Mutex<Option<(u64, Arc<RouteTable>)>>,
}

impl WaypointConfig {
    pub fn new(store: Arc<Store>, gateway: (String, String)) -> Arc<Self> {
        Arc::new(WaypointConfig {
            store,
            gateway,
            table: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.store.current()
    }

    /// The route table for `state`, compiled once per config version.
    pub fn routes(&self, state: &MeshState) -> Arc<RouteTable> {
        let mut cached = self.table.lock().expect("route table");
        match &*cached {
            Some((version, table)) if *version == state.version => table.clone(),
            _ => {
                let table = Arc::new(RouteTable::build(state, &self.gateway));
                *cached = Some((state.version, table.clone()));
                table
            }
        }
    }

    /// The policies bound to this waypoint, or to the service `target` addresses. The
    /// controller sends only policies that target this waypoint or a service it serves; one bound
    /// to another service must not judge this request.
    pub fn policies<'a>(
        &self,
        state: &'a MeshState,
        target: &Target,
    ) -> Vec<&'a api::Authorization> {
        let gateway = format!("Gateway/{}/{}", self.gateway.0, self.gateway.1);
        let service = target.policy_key();
        state
            .policies
            .values()
            .map(|p| p.as_ref())
            .filter(|p| p.scope == api::Scope::Waypoint as i32)
            .filter(|p| {
                p.targets
                    .iter()
                    .any(|t| *t == gateway || Some(t) == service.as_ref())
            })
            .collect()
    }

    /// The backend policy (DestinationRule) for a service.
    pub fn backend_policy(
        &self,
        state: &MeshState,
        svc: &Service,
    ) -> Option<Arc<api::BackendPolicy>> {
        state
            .backend_policies
            .values()
            .find(|p| {
                p.service_namespace == svc.spec.namespace && p.service_hostname == svc.spec.hostname
            })
            .cloned()
    }
}

impl ConfigHandler for WaypointConfig {
    fn apply(
        &self,
        type_url: &str,
        resources: Vec<api::Resource>,
        removed: Vec<String>,
    ) -> Result<(), String> {
        // A route that cannot be compiled is refused with the whole response (NACK), so the
        // waypoint keeps serving the routes it had rather than a partial set.
        if type_url == type_url::ROUTE {
            for r in &resources {
                if let Some(Kind::Route(route)) = &r.kind {
                    routes::check(route).map_err(|e| e.to_string())?;
                }
            }
        }
        self.store
            .apply(type_url, resources, removed)
            .map_err(|e| e.to_string())
    }
}
