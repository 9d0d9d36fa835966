//! Where each kind the commands write lives in the API. A fixed table rather than discovery:
//! the commands only ever write these kinds, a table costs no round trips, and the requests a
//! test expects stay the same whatever the server advertises.

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
#[error("{api_version} {kind}: not a kind ambit writes")]
pub struct UnknownKind {
    pub api_version: String,
    pub kind: String,
}

/// (apiVersion, kind, plural, namespaced)
const KINDS: &[(&str, &str, &str, bool)] = &[
    (
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    ("v1", "Namespace", "namespaces", false),
    ("v1", "ServiceAccount", "serviceaccounts", true),
    ("v1", "Service", "services", true),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRole",
        "clusterroles",
        false,
    ),
    (
        "rbac.authorization.k8s.io/v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        false,
    ),
    ("rbac.authorization.k8s.io/v1", "Role", "roles", true),
    (
        "rbac.authorization.k8s.io/v1",
        "RoleBinding",
        "rolebindings",
        true,
    ),
    ("apps/v1", "Deployment", "deployments", true),
    ("apps/v1", "DaemonSet", "daemonsets", true),
    (
        "policy/v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        true,
    ),
    (
        "gateway.networking.k8s.io/v1",
        "GatewayClass",
        "gatewayclasses",
        false,
    ),
    ("gateway.networking.k8s.io/v1", "Gateway", "gateways", true),
];

/// One object of a rendered manifest: its kind's place in the API and its name.
#[derive(Debug, Clone)]
pub struct Target {
    pub resource: ApiResource,
    pub namespace: Option<String>,
    pub name: String,
}

impl Target {
    pub fn of(object: &Value) -> Result<Target, UnknownKind> {
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        let api_version = text(&object["apiVersion"]);
        let kind = text(&object["kind"]);
        let Some(&(_, _, plural, namespaced)) = KINDS
            .iter()
            .find(|(v, k, _, _)| *v == api_version && *k == kind)
        else {
            return Err(UnknownKind { api_version, kind });
        };
        let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
        let gvk = GroupVersionKind::gvk(group, version, &kind);
        let namespace = namespaced.then(|| text(&object["metadata"]["namespace"]));
        Ok(Target {
            resource: ApiResource::from_gvk_with_plural(&gvk, plural),
            namespace,
            name: text(&object["metadata"]["name"]),
        })
    }

    pub fn api(&self, client: kube::Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(ns) => Api::namespaced_with(client, ns, &self.resource),
            None => Api::all_with(client, &self.resource),
        }
    }

    /// `kind/name` as kubectl prints it (`deployment.apps/ambit-controller`).
    pub fn display(&self) -> String {
        let kind = self.resource.kind.to_lowercase();
        match self.resource.group.as_str() {
            "" => format!("{kind}/{}", self.name),
            group => format!("{kind}.{group}/{}", self.name),
        }
    }
}
