//! The cluster commands against a scripted API server: the exact requests they make and what
//! they print. One module per command; `real_cluster` holds the `#[ignore]`d tests that run the
//! same commands against the cluster of KUBECONFIG (see the README's "Kubernetes" section).

#[path = "kubernetes/check.rs"]
mod check;
#[path = "kubernetes/explain.rs"]
mod explain;
#[path = "kubernetes/install.rs"]
mod install;
#[path = "kubernetes/portforward.rs"]
mod portforward;
#[path = "kubernetes/real_cluster.rs"]
mod real_cluster;
#[path = "kubernetes/server.rs"]
mod server;
#[path = "kubernetes/waypoint.rs"]
mod waypoint;
#[path = "kubernetes/ztunnel_config.rs"]
mod ztunnel_config;

use ambit_cli::cluster::render::{self, Values};
use serde_json::{Value, json};

pub const CRD_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

pub fn rendered() -> Vec<Value> {
    render::render(&Values::default()).unwrap()
}

/// An existing CRD, labelled as Istio's Helm chart labels its own.
pub fn istio_crd(name: &str, versions: &[&str]) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "istio"}},
        "spec": {"group": "security.istio.io", "scope": "Namespaced",
                 "names": {"kind": "AuthorizationPolicy", "plural": "authorizationpolicies"},
                 "versions": versions.iter().map(|v| json!({"name": v, "served": true,
                     "storage": *v == "v1"})).collect::<Vec<_>>()},
    })
}

pub fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}
