//! Translation: the Kubernetes objects in a [`ClusterState`] -> the mesh's resources.
//!
//! A pure, deterministic function of its input: the same state always yields the same resources,
//! so versions derived from their content are stable and a restarted controller sends a
//! reconnecting client nothing it already has.
//!
//! Scale (10k pods): one full translation builds per-namespace indexes first, so each pod is
//! matched only against its own namespace's services and policies (O(pods x services-per-
//! namespace)), never against the whole mesh. The push layer diffs the result against what each
//! client holds and sends only what changed.

pub mod authorization;
pub mod peer_auth;
pub mod service;
pub mod waypoint;
pub mod workload;

use std::collections::{BTreeMap, HashMap};

use ambit_proto::api;
use k8s_openapi::api::core::v1::Service;

use crate::model::{self, AuthorizationPolicy, ClusterState, Object};

/// Mesh-wide settings translation depends on.
#[derive(Debug, Clone)]
pub struct Settings {
    pub trust_domain: String,
    /// Policies here without a selector apply mesh-wide (Istio's `istio-system` by default).
    pub root_namespace: String,
    pub cluster_id: String,
    pub cluster_domain: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            cluster_id: "Kubernetes".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Why an object cannot be used, and which field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Checks what a schema cannot: policy semantics. Sources call it on every object they accept.
pub fn validate(object: &Object) -> Result<(), ValidationError> {
    match object {
        Object::AuthorizationPolicy(p) => {
            authorization::translate(p, &Settings::default()).map(drop)
        }
        Object::PeerAuthentication(pa) => {
            if !pa.spec.port_level_mtls.is_empty() {
                return Err(ValidationError::new(
                    "spec.portLevelMtls",
                    "port-level mTLS modes are not supported yet; set spec.mtls.mode",
                ));
            }
            Ok(())
        }
        Object::Gateway(gw) if waypoint::is_waypoint(gw) => match waypoint::waypoint_for(gw) {
            "service" | "workload" | "all" | "none" => Ok(()),
            other => Err(ValidationError::new(
                format!("metadata.labels[{}]", waypoint::WAYPOINT_FOR),
                format!("{other:?} is not one of service, workload, all, none"),
            )),
        },
        _ => Ok(()),
    }
}

/// The mesh's resources, keyed as they are named on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By uid.
    pub workloads: BTreeMap<String, api::Workload>,
    /// By "<namespace>/<hostname>".
    pub services: BTreeMap<String, api::Service>,
    /// By "<namespace>/<name>".
    pub authorizations: BTreeMap<String, api::Authorization>,
}

/// Per-namespace views of the state, built once per translation.
pub struct Index<'a> {
    services: HashMap<&'a str, Vec<&'a Service>>,
    selector_policies: HashMap<&'a str, Vec<&'a AuthorizationPolicy>>,
}

impl<'a> Index<'a> {
    pub fn new(state: &'a ClusterState) -> Self {
        let mut services: HashMap<&str, Vec<&Service>> = HashMap::new();
        for svc in state.services() {
            services
                .entry(model::namespace(&svc.metadata))
                .or_default()
                .push(svc);
        }
        let mut selector_policies: HashMap<&str, Vec<&AuthorizationPolicy>> = HashMap::new();
        for p in state
            .authorization_policies()
            .filter(|p| p.spec.selector.is_some())
        {
            selector_policies
                .entry(model::namespace(&p.metadata))
                .or_default()
                .push(p);
        }
        Index {
            services,
            selector_policies,
        }
    }

    pub fn services_in(&self, namespace: &str) -> impl Iterator<Item = &'a Service> + '_ {
        self.services.get(namespace).into_iter().flatten().copied()
    }

    /// Selector policies that may select a workload of `namespace`: its own namespace's and, as
    /// Istio does, the root namespace's (which select across the mesh).
    pub fn selector_policies_for<'s>(
        &'s self,
        namespace: &'s str,
        root: &'s str,
    ) -> impl Iterator<Item = &'a AuthorizationPolicy> + 's {
        let root = (namespace != root).then_some(root);
        [Some(namespace), root]
            .into_iter()
            .flatten()
            .flat_map(|ns| {
                self.selector_policies
                    .get(ns)
                    .into_iter()
                    .flatten()
                    .copied()
            })
    }
}

/// `matchLabels` semantics: every selector label present with the same value.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Translates the whole state. Objects that fail translation are skipped and logged (sources
/// validate on the way in, so this is a last line of defence, not the reporting path).
pub fn translate(state: &ClusterState, settings: &Settings) -> Snapshot {
    let index = Index::new(state);
    let mut snapshot = Snapshot::default();
    for pod in state.pods() {
        if let Some(w) = workload::translate(pod, state, &index, settings) {
            snapshot.workloads.insert(w.uid.clone(), w);
        }
    }
    for svc in state.services() {
        if let Some(s) = service::translate(svc, state, settings) {
            snapshot
                .services
                .insert(format!("{}/{}", s.namespace, s.hostname), s);
        }
    }
    for policy in state.authorization_policies() {
        match authorization::translate(policy, settings) {
            Ok(a) => {
                snapshot
                    .authorizations
                    .insert(format!("{}/{}", a.namespace, a.name), a);
            }
            Err(e) => tracing::warn!(
                policy = %format!("{}/{}", model::namespace(&policy.metadata), model::name(&policy.metadata)),
                "skipping invalid AuthorizationPolicy: {e}"
            ),
        }
    }
    snapshot
}
