//! What each kind of client is sent.
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

use std::collections::BTreeSet;
use std::sync::Arc;

use ambit_proto::api::{self, type_url};
use tonic::Status;

use super::resources::Generation;
use super::subscription::Allowed;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    NodeAgent { node: String },
    Waypoint { namespace: String, name: String },
}

impl Interest {
    pub fn from_node(node: &api::Node) -> Result<Self, Status> {
        match api::NodeRole::try_from(node.role) {
            Ok(api::NodeRole::NodeAgent) if !node.node_name.is_empty() => Ok(Interest::NodeAgent {
                node: node.node_name.clone(),
            }),
            Ok(api::NodeRole::Waypoint) => match node.waypoint.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() => Ok(Interest::Waypoint {
                    namespace: ns.to_string(),
                    name: name.to_string(),
                }),
                _ => Err(Status::invalid_argument(
                    "a waypoint must name its Gateway as <namespace>/<name> in node.waypoint",
                )),
            },
            Ok(api::NodeRole::NodeAgent) => Err(Status::invalid_argument(
                "a node agent must set node.node_name",
            )),
            _ => Err(Status::invalid_argument(
                "node.role must be NODE_AGENT or WAYPOINT",
            )),
        }
    }

    /// The authorization names this client should hold in `generation`.
    pub fn authorizations(&self, generation: &Generation) -> BTreeSet<String> {
        let Some(policies) = generation.resources(type_url::AUTHORIZATION) else {
            return BTreeSet::new();
        };
        match self {
            Interest::NodeAgent { node } => {
                // Only this node's workloads (a few hundred), never the mesh's.
                let local: Vec<&api::Workload> = generation.workloads_on(node).collect();
                let namespaces: BTreeSet<&str> =
                    local.iter().map(|w| w.namespace.as_str()).collect();
                let selected: BTreeSet<&str> = local
                    .iter()
                    .flat_map(|w| w.authorization_policies.iter().map(String::as_str))
                    .collect();
                policies
                    .iter()
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
            Interest::Waypoint { namespace, name } => {
                let gateway = format!("Gateway/{namespace}/{name}");
                let host_prefix = format!("{name}.{namespace}.svc.");
                let served: BTreeSet<String> = generation
                    .resources(type_url::SERVICE)
                    .into_iter()
                    .flat_map(|s| s.values())
                    .filter_map(|r| r.service())
                    .filter(|s| waypoint_host(s).is_some_and(|h| h.starts_with(&host_prefix)))
                    .map(|s| format!("Service/{}/{}", s.namespace, s.name))
                    .collect();
                policies
                    .iter()
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
        }
    }
}

/// A client's last authorization filter and what it was computed from.
#[derive(Debug, Default)]
pub struct AllowedCache {
    cached: Option<Cached>,
}

#[derive(Debug)]
struct Cached {
    generation: u64,
    node: Option<Arc<BTreeSet<Arc<str>>>>,
    allowed: Allowed,
}

impl Interest {
    /// [`Interest::authorizations`], recomputed only when its inputs changed: for a node agent,
    /// its node's workloads or any authorization; for a waypoint, any service or authorization.
    /// Unchanged, the same `Arc` comes back, which lets the subscription diff only what changed
    /// (at 50 clients, recomputing and fully diffing 500 policies per client and push was most
    /// of a push's cost).
    pub fn allowed(&self, generation: &Generation, cache: &mut AllowedCache) -> Allowed {
        let node = match self {
            Interest::NodeAgent { node } => generation.node_workloads(node).cloned(),
            Interest::Waypoint { .. } => None,
        };
        let unchanged = |since: u64, type_url: &str| {
            generation
                .changed_since(since, type_url)
                .is_some_and(|names| names.is_empty())
        };
        if let Some(c) = &mut cache.cached {
            let same_node = match (&c.node, &node) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            let inputs_same = match self {
                Interest::NodeAgent { .. } => same_node,
                Interest::Waypoint { .. } => unchanged(c.generation, type_url::SERVICE),
            };
            if inputs_same && unchanged(c.generation, type_url::AUTHORIZATION) {
                c.generation = generation.number;
                c.node = node;
                return c.allowed.clone();
            }
        }
        let fresh = self.authorizations(generation);
        // The same names under a new pointer would cost the subscription a full diff.
        let allowed = match cache.cached.take() {
            Some(c) if *c.allowed == fresh => c.allowed,
            _ => Arc::new(fresh),
        };
        cache.cached = Some(Cached {
            generation: generation.number,
            node,
            allowed: allowed.clone(),
        });
        allowed
    }
}

fn waypoint_host(s: &api::Service) -> Option<&str> {
    match s.waypoint.as_ref()?.destination.as_ref()? {
        api::gateway_address::Destination::Hostname(h) => Some(&h.hostname),
        api::gateway_address::Destination::Address(_) => None,
    }
}
