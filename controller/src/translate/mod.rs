//! Translation: the Kubernetes objects in a [`ClusterState`] -> the mesh's resources.
//!
//! A pure, deterministic function of its input: the same state always yields the same resources,
//! so versions derived from their content are stable and a restarted controller sends a
//! reconnecting client nothing it already has.
//!
//! Scale (10k pods): a pod is matched only against its own namespace's services and policies (the
//! state is sorted by kind and namespace, so those are a range, never a scan of the mesh). After
//! the first state, translation is incremental ([`incremental`]): a change re-translates only the
//! objects it can affect, so one pod change costs one pod's translation, not 10k.

pub mod attach;
pub mod authorization;
pub mod backend;
pub mod incremental;
pub mod peer_auth;
pub mod route;
pub mod service;
pub mod waypoint;
pub mod workload;

use std::collections::BTreeMap;
use std::sync::Arc;

use ambit_proto::api;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use incremental::{Changes, Translator};

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

    /// The same error, its field seen from an enclosing object ("matches[0]" + "path.type").
    pub fn under(mut self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.field = if self.field.is_empty() {
            prefix
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
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
        Object::HttpRoute(r) => route::validate(r),
        Object::HttpFault(f) => route::fault(&f.spec).map(drop),
        Object::DestinationRule(d) => backend::validate(d),
        Object::Gateway(gw) if waypoint::is_waypoint(gw) => validate_waypoint(gw),
        _ => Ok(()),
    }
}

fn validate_waypoint(gw: &model::Gateway) -> Result<(), ValidationError> {
    match waypoint::waypoint_for(gw) {
        "service" | "workload" | "all" | "none" => {}
        other => {
            return Err(ValidationError::new(
                format!("metadata.labels[{}]", waypoint::WAYPOINT_FOR),
                format!("{other:?} is not one of service, workload, all, none"),
            ));
        }
    }
    let account = gw
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(waypoint::FOR_SERVICE_ACCOUNT));
    let field = || format!("metadata.annotations[{}]", waypoint::FOR_SERVICE_ACCOUNT);
    match account.map(String::as_str) {
        Some("") => Err(ValidationError::new(field(), "names no service account")),
        // The waypoint's own identity is sa/<gateway>: named like the account it serves, it
        // would hold the identity of those workloads, and its ServiceAccount would be theirs.
        Some(sa) if sa == model::name(&gw.metadata) => Err(ValidationError::new(
            field(),
            format!(
                "the Gateway is named like the service account {sa:?} it serves; a waypoint runs \
                 as a ServiceAccount named after its Gateway, so name it otherwise (e.g. {sa}-waypoint)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The mesh's resources, keyed as they are named on the wire. Each resource is shared (`Arc`)
/// with the generations published from it, so holding both costs one copy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// By uid ([`workload::uid`]).
    pub workloads: BTreeMap<String, Arc<api::Workload>>,
    /// By "<namespace>/<hostname>" ([`service::key`]).
    pub services: BTreeMap<String, Arc<api::Service>>,
    /// By "<namespace>/<name>" ([`authorization::key`]).
    pub authorizations: BTreeMap<String, Arc<api::Authorization>>,
    /// By "<namespace>/<name>" ([`route::key`]).
    pub routes: BTreeMap<String, Arc<api::Route>>,
    /// By "<namespace>/<name>" ([`backend::key`]).
    pub backend_policies: BTreeMap<String, Arc<api::BackendPolicy>>,
}

/// Selector policies that may select a workload of `namespace`: its own namespace's and, as
/// Istio does, the root namespace's (which select across the mesh).
pub fn selector_policies_for<'a>(
    state: &'a ClusterState,
    namespace: &'a str,
    root: &'a str,
) -> impl Iterator<Item = &'a AuthorizationPolicy> + 'a {
    let root = (namespace != root).then_some(root);
    [Some(namespace), root]
        .into_iter()
        .flatten()
        .flat_map(|ns| state.authorization_policies_in(ns))
        .filter(|p| p.spec.selector.is_some())
}

/// `matchLabels` semantics: every selector label present with the same value.
pub fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// A full Kubernetes label selector: `matchLabels` and `matchExpressions` (In, NotIn, Exists,
/// DoesNotExist), all of which must hold. An unknown operator matches nothing, as the API
/// server would have refused it.
pub fn label_selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| selector_matches(m, labels));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

/// Translates the whole state. The pipeline translates incrementally instead ([`Translator`]);
/// this is the reference it must always agree with.
pub fn translate(state: &ClusterState, settings: &Settings) -> Snapshot {
    let mut translator = Translator::new(settings.clone());
    translator.rebuild(state);
    translator.into_snapshot()
}
