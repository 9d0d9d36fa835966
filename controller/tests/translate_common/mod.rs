//! Fixtures shared by the translation tests: YAML in, snapshot out.
#![allow(dead_code)]

use std::path::Path;

use ambit_controller::model::ClusterState;
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Settings, Snapshot, translate};
use ambit_proto::api;

pub fn state(yaml: &str) -> ClusterState {
    let parsed = parse_file(Path::new("test.yaml"), yaml);
    assert!(
        parsed.errors.is_empty(),
        "fixture errors: {:?}",
        parsed.errors
    );
    let mut state = ClusterState::new();
    for o in parsed.objects {
        state.upsert(o);
    }
    state
}

pub fn snapshot(yaml: &str) -> Snapshot {
    translate(&state(yaml), &Settings::default())
}

pub fn workload<'a>(s: &'a Snapshot, ns: &str, name: &str) -> &'a api::Workload {
    s.workloads
        .get(&format!("Kubernetes//Pod/{ns}/{name}"))
        .unwrap_or_else(|| panic!("no workload {ns}/{name} in {:?}", s.workloads.keys()))
}

/// The hostname (or address) of the waypoint a resource goes through.
pub fn waypoint_host(addr: &Option<api::GatewayAddress>) -> Option<String> {
    match addr.as_ref()?.destination.as_ref()? {
        api::gateway_address::Destination::Hostname(h) => Some(h.hostname.clone()),
        api::gateway_address::Destination::Address(a) => Some(a.clone()),
    }
}

pub fn pod(ns: &str, name: &str, extra_labels: &str, ip: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {ns}
  labels: {{app: {name}{extra_labels}}}
spec:
  nodeName: node-1
  serviceAccountName: {name}-sa
  containers: [{{name: app, image: echo, ports: [{{name: http, containerPort: 8080}}]}}]
status:
  podIP: {ip}
---"#
    )
}

pub const AMBIENT_NS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---"#;

pub fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---"
    )
}
