//! The waypoint's config: the shared mesh store (`ambit_proto::mesh`), routes validated before
//! they are applied, what a request looks up compiled once per config version (the route table,
//! the policies bound to the waypoint and to each service, the backend policy of each service),
//! and the lookups a request needs (what was it addressed to, which endpoints serve a backend).

use std::collections::HashMap;
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

/// The policies that judge a request: those bound to the waypoint, plus those bound to the
/// service it was addressed to.
pub type Policies = Arc<[Arc<api::Authorization>]>;

/// What requests look up, compiled from one config version: a request then costs a hash lookup
/// rather than a scan of every policy and a key formatted per request.
struct Compiled {
    version: u64,
    routes: Arc<RouteTable>,
    /// Bound to the waypoint only (a request to a workload, or to a service no policy names).
    gateway_policies: Policies,
    /// The waypoint's policies and the service's, by namespace and name of the service (nested
    /// so that a request looks them up by `&str`, allocating nothing).
    service_policies: ByService<Policies>,
    /// DestinationRules by namespace and hostname of their service.
    backend_policies: ByService<Arc<api::BackendPolicy>>,
}

type ByService<T> = HashMap<String, HashMap<String, T>>;

fn lookup<'a, T>(map: &'a ByService<T>, namespace: &str, name: &str) -> Option<&'a T> {
    map.get(namespace)?.get(name)
}

impl Compiled {
    fn build(state: &MeshState, gateway: &(String, String)) -> Compiled {
        // The controller writes `Authorization.targets` as "Kind/namespace/name"; it sends only
        // policies that target this waypoint or a service it serves, but one bound to another
        // service must still not judge this request.
        let gateway_key = format!("Gateway/{}/{}", gateway.0, gateway.1);
        let waypoint_scoped = || {
            state
                .policies
                .values()
                .filter(|p| p.scope == api::Scope::Waypoint as i32)
        };
        let gateway_policies: Vec<_> = waypoint_scoped()
            .filter(|p| p.targets.contains(&gateway_key))
            .cloned()
            .collect();
        let mut per_service: ByService<Vec<Arc<api::Authorization>>> = HashMap::new();
        for p in waypoint_scoped() {
            for t in &p.targets {
                let Some(rest) = t.strip_prefix("Service/") else {
                    continue;
                };
                let Some((ns, name)) = rest.split_once('/') else {
                    continue;
                };
                let list = per_service
                    .entry(ns.to_owned())
                    .or_default()
                    .entry(name.to_owned())
                    .or_insert_with(|| gateway_policies.clone());
                // A policy naming both the waypoint and the service is there once.
                if !list.iter().any(|q| Arc::ptr_eq(q, p)) {
                    list.push(p.clone());
                }
            }
        }
        let mut backend_policies: ByService<_> = HashMap::new();
        for p in state.backend_policies.values() {
            backend_policies
                .entry(p.service_namespace.clone())
                .or_default()
                .insert(p.service_hostname.clone(), p.clone());
        }
        Compiled {
            version: state.version,
            routes: Arc::new(RouteTable::build(state, gateway)),
            gateway_policies: gateway_policies.into(),
            service_policies: per_service
                .into_iter()
                .map(|(ns, names)| (ns, names.into_iter().map(|(n, v)| (n, v.into())).collect()))
                .collect(),
            backend_policies,
        }
    }
}

pub struct WaypointConfig {
    pub store: Arc<Store>,
    /// (namespace, name) of the waypoint Gateway.
    pub gateway: (String, String),
    compiled: Mutex<Option<Arc<Compiled>>>,
}

impl WaypointConfig {
    pub fn new(store: Arc<Store>, gateway: (String, String)) -> Arc<Self> {
        Arc::new(WaypointConfig {
            store,
            gateway,
            compiled: Mutex::new(None),
        })
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.store.current()
    }

    /// The lookups for `state`, compiled once per config version.
    fn compiled(&self, state: &MeshState) -> Arc<Compiled> {
        let mut cached = self.compiled.lock().expect("compiled config");
        match &*cached {
            Some(c) if c.version == state.version => c.clone(),
            _ => {
                let c = Arc::new(Compiled::build(state, &self.gateway));
                *cached = Some(c.clone());
                c
            }
        }
    }

    /// The route table for `state`.
    pub fn routes(&self, state: &MeshState) -> Arc<RouteTable> {
        self.compiled(state).routes.clone()
    }

    /// The policies bound to this waypoint, or to the service `target` addresses.
    pub fn policies(&self, state: &MeshState, target: &Target) -> Policies {
        let c = self.compiled(state);
        target
            .service()
            .and_then(|s| lookup(&c.service_policies, &s.spec.namespace, &s.spec.name))
            .unwrap_or(&c.gateway_policies)
            .clone()
    }

    /// The backend policy (DestinationRule) for a service.
    pub fn backend_policy(
        &self,
        state: &MeshState,
        svc: &Service,
    ) -> Option<Arc<api::BackendPolicy>> {
        let c = self.compiled(state);
        lookup(&c.backend_policies, &svc.spec.namespace, &svc.spec.hostname).cloned()
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
