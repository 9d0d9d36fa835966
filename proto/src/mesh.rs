//! A proxy's view of the mesh: the workloads, services, policies (and, for waypoints, routes and
//! backend policies) the controller sent, indexed for the lookups a connection needs (by IP, by
//! VIP and port, by hostname). Node agents and waypoints share it, so both resolve a destination
//! the same way.
//!
//! Each applied change produces a new immutable [`MeshState`] behind a watch channel. Connections
//! take an `Arc` of the current one and keep deciding against it; subscribers (capture,
//! certificates, policy re-checks of open connections, a waypoint's route tables) wake on every
//! change. Rebuilding the indexes is O(workloads on the proxy's list) per change, a few
//! milliseconds at 10k workloads; changes arrive coalesced by the controller.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::api::{self, resource::Kind, type_url};
use crate::xds::ConfigHandler;
use crate::{Identity, authz};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{kind} {name:?}: {reason}")]
    Invalid {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("unknown type {0:?}")]
    UnknownType(String),
}

/// A workload with its parsed addresses and identity.
#[derive(Debug)]
pub struct Workload {
    pub spec: api::Workload,
    pub addresses: Vec<IpAddr>,
    pub identity: Identity,
}

impl Workload {
    pub fn is_healthy(&self) -> bool {
        self.spec.status == api::HealthStatus::Healthy as i32
    }

    pub fn speaks_hbone(&self) -> bool {
        self.spec.tunnel_protocol == api::TunnelProtocol::Hbone as i32
    }

    /// `<namespace>/<name>` for logs and metrics.
    pub fn display_name(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.name)
    }
}

#[derive(Debug)]
pub struct Service {
    pub spec: api::Service,
    pub vips: Vec<IpAddr>,
}

impl Service {
    /// `<namespace>/<hostname>`, the key workloads use in `Workload.services`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.spec.namespace, self.spec.hostname)
    }

    pub fn has_port(&self, port: u16) -> bool {
        self.spec
            .ports
            .iter()
            .any(|p| p.service_port == u32::from(port))
    }
}

/// One consistent view of the mesh.
#[derive(Debug, Default)]
pub struct MeshState {
    pub workloads: BTreeMap<String, Arc<Workload>>,
    pub services: BTreeMap<String, Arc<Service>>,
    pub policies: BTreeMap<String, Arc<api::Authorization>>,
    /// Waypoints only: HTTP routes and per-service traffic policies, by "<namespace>/<name>".
    pub routes: BTreeMap<String, Arc<api::Route>>,
    pub backend_policies: BTreeMap<String, Arc<api::BackendPolicy>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    by_vip: HashMap<IpAddr, Vec<Arc<Service>>>,
    by_hostname: HashMap<(String, String), Arc<Service>>,
    /// Service key -> its endpoints, in uid order.
    endpoints: HashMap<String, Vec<Arc<Workload>>>,
    /// How many changes have been applied (the admin dump shows it).
    pub version: u64,
}

impl MeshState {
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }

    pub fn service_by_vip(&self, ip: IpAddr, port: u16) -> Option<&Arc<Service>> {
        self.by_vip.get(&ip)?.iter().find(|s| s.has_port(port))
    }

    pub fn service_by_hostname(&self, namespace: &str, hostname: &str) -> Option<&Arc<Service>> {
        self.by_hostname
            .get(&(namespace.to_string(), hostname.to_string()))
    }

    /// Workloads backing `service`, with the target port each serves `port` on.
    pub fn endpoints(&self, service: &Service, port: u16) -> Vec<(Arc<Workload>, u16)> {
        let key = service.key();
        let Some(list) = self.endpoints.get(&key) else {
            return Vec::new();
        };
        list.iter()
            .filter_map(|w| {
                let ports = w.spec.services.get(&key)?;
                let target = ports
                    .ports
                    .iter()
                    .find(|p| p.service_port == u32::from(port))
                    .map(|p| {
                        if p.target_port == 0 {
                            p.service_port
                        } else {
                            p.target_port
                        }
                    })
                    // A service port the endpoint does not list: same port (Kubernetes default).
                    .unwrap_or(u32::from(port));
                Some((w.clone(), u16::try_from(target).ok()?))
            })
            .collect()
    }

    /// The policies that apply to `workload` at its node agent, in name order.
    pub fn policies_for<'a>(
        &'a self,
        workload: &'a Workload,
    ) -> impl Iterator<Item = &'a api::Authorization> + 'a {
        self.policies.values().map(|p| p.as_ref()).filter(move |p| {
            match api::Scope::try_from(p.scope).unwrap_or(api::Scope::Unspecified) {
                api::Scope::Global => true,
                api::Scope::Namespace => p.namespace == workload.spec.namespace,
                api::Scope::WorkloadSelector => workload
                    .spec
                    .authorization_policies
                    .iter()
                    .any(|k| *k == format!("{}/{}", p.namespace, p.name)),
                // Bound to a waypoint: enforced there. An unknown scope is not guessed at.
                api::Scope::Waypoint | api::Scope::Unspecified => false,
            }
        })
    }

    /// The L4 decision for a connection to `workload`: first, for a `waypoint_only` workload,
    /// whether the client is one of its waypoints; then its policies.
    pub fn authorize(&self, workload: &Workload, attrs: &authz::Attributes<'_>) -> authz::Decision {
        if workload.spec.waypoint_only {
            let (hostnames, identities) = self.waypoints_of(workload);
            if !attrs
                .source_identity
                .is_some_and(|id| identities.contains(id))
            {
                return authz::Decision::DenyBypass {
                    waypoints: hostnames,
                };
            }
        }
        authz::evaluate(self.policies_for(workload), attrs)
    }

    /// The waypoints traffic to `workload` goes through, its own and its services': their
    /// hostnames and the identities of their running pods.
    pub fn waypoints_of(&self, workload: &Workload) -> (Vec<String>, Vec<Identity>) {
        let services = workload
            .spec
            .services
            .keys()
            .filter_map(|key| {
                let (ns, host) = key.split_once('/')?;
                self.service_by_hostname(ns, host)
            })
            .filter_map(|s| s.spec.waypoint.as_ref());
        let mut hostnames = Vec::new();
        let mut identities = Vec::new();
        for gateway in workload.spec.waypoint.iter().chain(services) {
            let Some(api::gateway_address::Destination::Hostname(h)) = &gateway.destination else {
                continue;
            };
            if hostnames.contains(&h.hostname) {
                continue;
            }
            hostnames.push(h.hostname.clone());
            if let Some(svc) = self.service_by_hostname(&h.namespace, &h.hostname) {
                let port = u16::try_from(gateway.hbone_mtls_port).unwrap_or(0);
                for (w, _) in self.endpoints(svc, port) {
                    if !w.spec.waypoint_for.is_empty() && !identities.contains(&w.identity) {
                        identities.push(w.identity.clone());
                    }
                }
            }
        }
        (hostnames, identities)
    }

    /// Whether `identity` belongs to a waypoint the mesh knows (trusted to say who its client
    /// was in the `forwarded` header).
    pub fn is_waypoint(&self, identity: &Identity) -> bool {
        self.workloads
            .values()
            .any(|w| !w.spec.waypoint_for.is_empty() && w.identity == *identity)
    }

    fn index(&mut self) {
        self.by_ip.clear();
        self.by_vip.clear();
        self.by_hostname.clear();
        self.endpoints.clear();
        for w in self.workloads.values() {
            for ip in &w.addresses {
                self.by_ip.insert(*ip, w.clone());
            }
            for key in w.spec.services.keys() {
                self.endpoints
                    .entry(key.clone())
                    .or_default()
                    .push(w.clone());
            }
        }
        for s in self.services.values() {
            for vip in &s.vips {
                self.by_vip.entry(*vip).or_default().push(s.clone());
            }
            self.by_hostname.insert(
                (s.spec.namespace.clone(), s.spec.hostname.clone()),
                s.clone(),
            );
        }
    }
}

/// Holds the current [`MeshState`] and applies config from the controller.
pub struct Store {
    trust_domain: String,
    current: watch::Sender<Arc<MeshState>>,
    /// Serialises appliers, so two changes never race to publish.
    apply_lock: Mutex<()>,
}

impl Store {
    pub fn new(trust_domain: &str) -> Arc<Store> {
        Arc::new(Store {
            trust_domain: trust_domain.to_string(),
            current: watch::Sender::new(Arc::new(MeshState::default())),
            apply_lock: Mutex::new(()),
        })
    }

    pub fn current(&self) -> Arc<MeshState> {
        self.current.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.current.subscribe()
    }

    /// Validates everything first, so a bad response changes nothing (and is NACKed).
    pub fn apply(
        &self,
        type_url: &str,
        resources: Vec<api::Resource>,
        removed: Vec<String>,
    ) -> Result<(), StateError> {
        let _guard = self.apply_lock.lock().expect("apply lock");
        let old = self.current();
        let mut next = MeshState {
            workloads: old.workloads.clone(),
            services: old.services.clone(),
            policies: old.policies.clone(),
            routes: old.routes.clone(),
            backend_policies: old.backend_policies.clone(),
            version: old.version + 1,
            ..Default::default()
        };
        match type_url {
            type_url::WORKLOAD => {
                let parsed: Vec<_> = resources
                    .into_iter()
                    .map(|r| self.workload(r))
                    .collect::<Result<_, _>>()?;
                for name in &removed {
                    next.workloads.remove(name);
                }
                next.workloads.extend(parsed);
            }
            type_url::SERVICE => {
                let parsed: Vec<_> = resources
                    .into_iter()
                    .map(service)
                    .collect::<Result<_, _>>()?;
                for name in &removed {
                    next.services.remove(name);
                }
                next.services.extend(parsed);
            }
            type_url::AUTHORIZATION => {
                let parsed: Vec<_> = resources
                    .into_iter()
                    .map(authorization)
                    .collect::<Result<_, _>>()?;
                for name in &removed {
                    next.policies.remove(name);
                }
                next.policies.extend(parsed);
            }
            type_url::ROUTE => replace(&mut next.routes, resources, &removed, |r| match r {
                Kind::Route(route) => Some(route),
                _ => None,
            })?,
            type_url::BACKEND_POLICY => replace(
                &mut next.backend_policies,
                resources,
                &removed,
                |r| match r {
                    Kind::BackendPolicy(policy) => Some(policy),
                    _ => None,
                },
            )?,
            other => return Err(StateError::UnknownType(other.to_string())),
        }
        next.index();
        self.current.send_replace(Arc::new(next));
        Ok(())
    }

    fn workload(&self, r: api::Resource) -> Result<(String, Arc<Workload>), StateError> {
        let invalid = |reason: String| StateError::Invalid {
            kind: "workload",
            name: r.name.clone(),
            reason,
        };
        let Some(Kind::Workload(spec)) = r.kind.clone() else {
            return Err(invalid("the resource is not a workload".into()));
        };
        let addresses = parse_ips(&spec.addresses).map_err(invalid)?;
        let trust_domain = if spec.trust_domain.is_empty() {
            &self.trust_domain
        } else {
            &spec.trust_domain
        };
        let identity = Identity::new(trust_domain, &spec.namespace, &spec.service_account)
            .map_err(|e| invalid(e.to_string()))?;
        let workload = Workload {
            spec,
            addresses,
            identity,
        };
        Ok((r.name, Arc::new(workload)))
    }
}

fn service(r: api::Resource) -> Result<(String, Arc<Service>), StateError> {
    let invalid = |reason: String| StateError::Invalid {
        kind: "service",
        name: r.name.clone(),
        reason,
    };
    let Some(Kind::Service(spec)) = r.kind.clone() else {
        return Err(invalid("the resource is not a service".into()));
    };
    if let Some(p) = spec
        .ports
        .iter()
        .find(|p| p.service_port > 65535 || p.target_port > 65535)
    {
        return Err(invalid(format!("port {} out of range", p.service_port)));
    }
    let vips = parse_ips(&spec.addresses).map_err(invalid)?;
    Ok((r.name, Arc::new(Service { spec, vips })))
}

fn authorization(r: api::Resource) -> Result<(String, Arc<api::Authorization>), StateError> {
    match r.kind {
        Some(Kind::Authorization(a)) => Ok((r.name, Arc::new(a))),
        _ => Err(StateError::Invalid {
            kind: "authorization",
            name: r.name,
            reason: "the resource is not an authorization".into(),
        }),
    }
}

/// Applies one change to a map of resources the state keeps as sent (validated by their users).
fn replace<T>(
    map: &mut BTreeMap<String, Arc<T>>,
    resources: Vec<api::Resource>,
    removed: &[String],
    pick: impl Fn(Kind) -> Option<T>,
) -> Result<(), StateError> {
    let parsed: Vec<(String, Arc<T>)> = resources
        .into_iter()
        .map(|r| match r.kind.and_then(&pick) {
            Some(value) => Ok((r.name, Arc::new(value))),
            None => Err(StateError::Invalid {
                kind: "resource",
                name: r.name,
                reason: "not of the type it was sent as".into(),
            }),
        })
        .collect::<Result<_, _>>()?;
    for name in removed {
        map.remove(name);
    }
    map.extend(parsed);
    Ok(())
}

fn parse_ips(addresses: &[String]) -> Result<Vec<IpAddr>, String> {
    addresses
        .iter()
        .map(|a| a.parse().map_err(|_| format!("{a:?} is not an IP address")))
        .collect()
}

impl ConfigHandler for Store {
    fn apply(
        &self,
        type_url: &str,
        resources: Vec<api::Resource>,
        removed: Vec<String>,
    ) -> Result<(), String> {
        Store::apply(self, type_url, resources, removed).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
#[path = "mesh_tests.rs"]
mod tests;
