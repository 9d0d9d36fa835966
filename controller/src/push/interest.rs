//! What each kind of client is sent.
//!
//! Who a client is comes from its token ([`crate::auth`]), checked before anything is sent; the
//! node it names in its first request must agree, and never widens what it gets. So an agent is
//! served as the node its token is bound to, and a waypoint only its own Gateway's resources.
//!
//! Workloads and services: everything, to node agents and waypoints alike. A destination can be
//! any pod or service in the mesh, and knowing it ahead of the first connection keeps connection
//! setup free of control-plane round trips. At 10k pods that is one shared, already-encoded copy
//! per resource (`Arc`), not one per client.
//!
//! Per client and generation, a node agent's filter reads only its own node's workloads (through
//! the generation's per-node index) and the policies; it never walks the mesh's workloads.
//!
//! Authorizations are filtered: a node agent gets the mesh-wide policies, those of namespaces it
//! runs workloads in, and the selector policies its workloads carry; a waypoint gets the policies
//! that target it or a service it serves. A policy enforced elsewhere never reaches a client.
//!
//! Routes and backend policies go to waypoints only: the routes attached to the waypoint's
//! Gateway or to a service it serves, and the backend policies of the services it serves or its
//! routes send to.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use ambit_proto::api::{self, type_url};
use tonic::Status;

use super::resources::Generation;
use super::subscription::Allowed;
use crate::auth::Caller;

/// What one authenticated caller is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interest(Caller);

impl From<Caller> for Interest {
    fn from(caller: Caller) -> Self {
        Interest(caller)
    }
}

/// A stream whose first request names another client than its token proves.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("the first request must carry node")]
    Missing,
    #[error("the token is {caller}'s, but the request names {declared}")]
    Mismatch { caller: Caller, declared: String },
}

impl NodeError {
    /// The `reason` label of the refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            NodeError::Missing => "bad_request",
            NodeError::Mismatch { .. } => "identity_mismatch",
        }
    }

    pub fn status(&self) -> Status {
        match self {
            NodeError::Missing => Status::invalid_argument(self.to_string()),
            NodeError::Mismatch { .. } => Status::permission_denied(self.to_string()),
        }
    }
}

impl Interest {
    /// The interest of `caller`, whose stream names itself `declared`. The two must agree: the
    /// token decides what is served, and a client that believes it is someone else (a waypoint
    /// started for one Gateway with another's token) is told so rather than served another's
    /// config.
    pub fn of(caller: Caller, declared: Option<&api::Node>) -> Result<Self, NodeError> {
        let declared = declared.ok_or(NodeError::Missing)?;
        let agrees = match (&caller, api::NodeRole::try_from(declared.role)) {
            (Caller::NodeAgent { node }, Ok(api::NodeRole::NodeAgent)) => {
                declared.node_name == *node
            }
            (Caller::Waypoint { namespace, name }, Ok(api::NodeRole::Waypoint)) => {
                declared.waypoint.split_once('/') == Some((namespace.as_str(), name.as_str()))
            }
            _ => false,
        };
        if !agrees {
            let declared = match api::NodeRole::try_from(declared.role) {
                Ok(api::NodeRole::NodeAgent) => format!("node-agent {:?}", declared.node_name),
                Ok(api::NodeRole::Waypoint) => format!("waypoint {:?}", declared.waypoint),
                _ => format!("role {}", declared.role),
            };
            return Err(NodeError::Mismatch { caller, declared });
        }
        Ok(Interest(caller))
    }

    pub fn caller(&self) -> &Caller {
        &self.0
    }

    /// The names of `type_url` this client should hold in `generation`; `None`: every resource
    /// of the type (workloads and services).
    pub fn names(&self, type_url: &str, generation: &Generation) -> Option<BTreeSet<String>> {
        let of = |t: &str| generation.resources(t).into_iter().flat_map(|r| r.iter());
        Some(match (&self.0, type_url) {
            (Caller::NodeAgent { node }, type_url::AUTHORIZATION) => {
                // Only this node's workloads (a few hundred), never the mesh's.
                let local: Vec<&api::Workload> = generation.workloads_on(node).collect();
                let namespaces: BTreeSet<&str> =
                    local.iter().map(|w| w.namespace.as_str()).collect();
                let selected: BTreeSet<&str> = local
                    .iter()
                    .flat_map(|w| w.authorization_policies.iter().map(String::as_str))
                    .collect();
                of(type_url::AUTHORIZATION)
                    .filter(|(name, r)| {
                        r.authorization()
                            .is_some_and(|a| match api::Scope::try_from(a.scope) {
                                Ok(api::Scope::Global) => true,
                                Ok(api::Scope::Namespace) => {
                                    namespaces.contains(a.namespace.as_str())
                                }
                                Ok(api::Scope::WorkloadSelector) => selected.contains(&***name),
                                _ => false,
                            })
                    })
                    .map(|(name, _)| name.to_string())
                    .collect()
            }
            // Node agents do not proxy HTTP.
            (Caller::NodeAgent { .. }, type_url::ROUTE | type_url::BACKEND_POLICY) => {
                BTreeSet::new()
            }
            (Caller::Waypoint { namespace, name }, type_url::AUTHORIZATION) => {
                let gateway = format!("Gateway/{namespace}/{name}");
                let served: BTreeSet<String> = self
                    .served(generation)
                    .into_iter()
                    .map(|(ns, name)| format!("Service/{ns}/{name}"))
                    .collect();
                of(type_url::AUTHORIZATION)
                    .filter(|(_, r)| {
                        r.authorization().is_some_and(|a| {
                            a.scope == api::Scope::Waypoint as i32
                                && a.targets
                                    .iter()
                                    .any(|t| *t == gateway || served.contains(t))
                        })
                    })
                    .map(|(name, _)| name.to_string())
                    .collect()
            }
            (Caller::Waypoint { .. }, type_url::ROUTE) => self
                .routes(generation)
                .map(|(name, _)| name.to_string())
                .collect(),
            (Caller::Waypoint { .. }, type_url::BACKEND_POLICY) => {
                // The services it serves and every service its routes send to or mirror to.
                let mut services: BTreeSet<(String, String)> = self
                    .served(generation)
                    .into_iter()
                    .filter_map(|(ns, name)| {
                        let svc = of(type_url::SERVICE)
                            .filter_map(|(_, r)| r.service())
                            .find(|s| s.namespace == ns && s.name == name)?;
                        Some((ns, svc.hostname.clone()))
                    })
                    .collect();
                for (_, route) in self.routes(generation) {
                    for rule in &route.rules {
                        let mirrors = rule.filters.iter().filter_map(|f| match &f.kind {
                            Some(api::filter::Kind::RequestMirror(m)) => m.backend.as_ref(),
                            _ => None,
                        });
                        for b in rule.backends.iter().chain(mirrors) {
                            services.insert((b.namespace.clone(), b.hostname.clone()));
                        }
                    }
                }
                of(type_url::BACKEND_POLICY)
                    .filter(|(_, r)| {
                        r.backend_policy().is_some_and(|p| {
                            services.contains(&(
                                p.service_namespace.clone(),
                                p.service_hostname.clone(),
                            ))
                        })
                    })
                    .map(|(name, _)| name.to_string())
                    .collect()
            }
            _ => return None,
        })
    }

    /// The services (namespace, name) whose traffic goes through this waypoint.
    fn served(&self, generation: &Generation) -> BTreeSet<(String, String)> {
        let Caller::Waypoint { namespace, name } = &self.0 else {
            return BTreeSet::new();
        };
        let host_prefix = format!("{name}.{namespace}.svc.");
        generation
            .resources(type_url::SERVICE)
            .into_iter()
            .flat_map(|s| s.values())
            .filter_map(|r| r.service())
            .filter(|s| waypoint_host(s).is_some_and(|h| h.starts_with(&host_prefix)))
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect()
    }

    /// The routes this waypoint serves: attached to its Gateway or to a service it serves.
    fn routes<'g>(
        &self,
        generation: &'g Generation,
    ) -> impl Iterator<Item = (&'g str, &'g api::Route)> + 'g {
        let (gateway, served) = match &self.0 {
            Caller::Waypoint { namespace, name } => (
                Some((namespace.clone(), name.clone())),
                self.served(generation),
            ),
            Caller::NodeAgent { .. } => (None, BTreeSet::new()),
        };
        generation
            .resources(type_url::ROUTE)
            .into_iter()
            .flat_map(|r| r.iter())
            .filter_map(|(name, r)| Some((&**name, r.route()?)))
            .filter(move |(_, route)| {
                gateway.is_some()
                    && route.parents.iter().any(|p| {
                        let key = (p.namespace.clone(), p.name.clone());
                        match p.kind.as_str() {
                            "Gateway" => gateway.as_ref() == Some(&key),
                            "Service" => served.contains(&key),
                            _ => false,
                        }
                    })
            })
    }
}

/// A client's last filter per type and what it was computed from.
#[derive(Debug, Default)]
pub struct AllowedCache {
    cached: HashMap<&'static str, Cached>,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    node: Option<Arc<BTreeSet<Arc<str>>>>,
    allowed: Allowed,
}

impl Interest {
    /// The types whose changes can change this client's filter for `type_url` (besides, for a
    /// node agent's policies, its node's workloads).
    fn inputs(&self, type_url: &str) -> &'static [&'static str] {
        match (&self.0, type_url) {
            (Caller::NodeAgent { .. }, type_url::AUTHORIZATION) => &[type_url::AUTHORIZATION],
            (Caller::NodeAgent { .. }, _) => &[],
            (Caller::Waypoint { .. }, type_url::AUTHORIZATION) => {
                &[type_url::SERVICE, type_url::AUTHORIZATION]
            }
            (Caller::Waypoint { .. }, type_url::ROUTE) => &[type_url::SERVICE, type_url::ROUTE],
            (Caller::Waypoint { .. }, _) => {
                &[type_url::SERVICE, type_url::ROUTE, type_url::BACKEND_POLICY]
            }
        }
    }

    /// [`Interest::names`], recomputed only when its inputs changed. Unchanged, the same `Arc`
    /// comes back, which lets the subscription diff only what changed (at 50 clients,
    /// recomputing and fully diffing 500 policies per client and push was most of a push's
    /// cost). `None`: the type is not filtered.
    pub fn allowed(
        &self,
        type_url: &'static str,
        generation: &Generation,
        cache: &mut AllowedCache,
    ) -> Option<Allowed> {
        if !matches!(
            type_url,
            type_url::AUTHORIZATION | type_url::ROUTE | type_url::BACKEND_POLICY
        ) {
            return None;
        }
        let node = match &self.0 {
            Caller::NodeAgent { node } if type_url == type_url::AUTHORIZATION => {
                generation.node_workloads(node).cloned()
            }
            _ => None,
        };
        let unchanged = |since: u64, t: &str| {
            generation
                .changed_since(since, t)
                .is_some_and(|names| names.is_empty())
        };
        if let Some(c) = cache.cached.get_mut(type_url) {
            let same_node = match (&c.node, &node) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same_node
                && self
                    .inputs(type_url)
                    .iter()
                    .all(|t| unchanged(c.generation, t))
            {
                c.generation = generation.number;
                return Some(c.allowed.clone());
            }
        }
        let fresh = self.names(type_url, generation).unwrap_or_default();
        // The same names under a new pointer would cost the subscription a full diff.
        let allowed = match cache.cached.remove(type_url) {
            Some(c) if *c.allowed == fresh => c.allowed,
            _ => Arc::new(fresh),
        };
        cache.cached.insert(
            type_url,
            Cached {
                generation: generation.number,
                node,
                allowed: allowed.clone(),
            },
        );
        Some(allowed)
    }
}

fn waypoint_host(s: &api::Service) -> Option<&str> {
    match s.waypoint.as_ref()?.destination.as_ref()? {
        api::gateway_address::Destination::Hostname(h) => Some(&h.hostname),
        api::gateway_address::Destination::Address(_) => None,
    }
}
