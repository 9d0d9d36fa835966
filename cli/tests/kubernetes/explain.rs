//! `ambit explain` on a cluster: the objects the controller reads, listed from the API server
//! (the requests are checked), translated with the installed controller's settings, and the
//! same explanation as in the lab, the waypoint's L7 decision included. The objects are the
//! waypoint lab of the command's unit tests, as a cluster holds them (placed, with addresses,
//! and the waypoint's pod and Service that the controller's reconciler makes).

use std::collections::BTreeMap;

use ambit_cli::cluster::mesh;
use ambit_cli::cmd::{self, explain::Placement, explain::Request};
use serde_json::{Value, json};

use crate::server::{not_found, serve};

const OBJECTS: &str = include_str!("../../src/cmd/testing_waypoint.yaml");

/// Where each list is served from, by kind.
const LISTS: &[(&str, &str)] = &[
    ("Namespace", "/api/v1/namespaces"),
    ("Node", "/api/v1/nodes"),
    ("Pod", "/api/v1/pods"),
    ("Service", "/api/v1/services"),
    ("ServiceAccount", "/api/v1/serviceaccounts"),
    ("Gateway", "/apis/gateway.networking.k8s.io/v1/gateways"),
    ("HTTPRoute", "/apis/gateway.networking.k8s.io/v1/httproutes"),
    (
        "AuthorizationPolicy",
        "/apis/security.istio.io/v1/authorizationpolicies",
    ),
    (
        "PeerAuthentication",
        "/apis/security.istio.io/v1/peerauthentications",
    ),
    (
        "DestinationRule",
        "/apis/networking.istio.io/v1/destinationrules",
    ),
    ("HTTPFault", "/apis/ambit.dev/v1alpha1/httpfaults"),
];

/// The objects by list path, as the API server would hold them.
fn cluster_objects() -> BTreeMap<&'static str, Vec<Value>> {
    let mut objects: Vec<Value> = serde_yaml::Deserializer::from_str(OBJECTS)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    // What the waypoint's reconciler makes for the Gateway.
    objects.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "waypoint-7d9f", "namespace": "demo",
                     "labels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}},
        "spec": {"serviceAccountName": "waypoint", "containers": [{"name": "waypoint", "image": "w"}]}}));
    objects.push(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "waypoint", "namespace": "demo"},
        "spec": {"selector": {"gateway.networking.k8s.io/gateway-name": "waypoint"},
                 "ports": [{"name": "mesh", "port": 15008}]}}));
    // A policy the controller rejects: explain says it skips it too.
    objects.push(
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "external", "namespace": "demo"},
        "spec": {"action": "CUSTOM", "provider": {"name": "ext"}}}),
    );
    for node in ["node1", "node2"] {
        objects.push(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}));
    }
    // Placed: what the scheduler and kubelet fill in.
    let pods = [
        ("client", "node1", "10.244.1.2"),
        ("server", "node2", "10.244.2.2"),
        ("server-v2", "node1", "10.244.1.4"),
        ("waypoint-7d9f", "node2", "10.244.2.3"),
    ];
    let vips = [
        ("echo", "10.96.0.10"),
        ("echo-v1", "10.96.0.11"),
        ("echo-v2", "10.96.0.12"),
        ("waypoint", "10.96.0.13"),
    ];
    let mut lists: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for mut o in objects {
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        match o["kind"].as_str().unwrap() {
            "Pod" => {
                let (_, node, ip) = pods.iter().find(|p| p.0 == name).unwrap();
                o["spec"]["nodeName"] = json!(node);
                o["status"] = json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                    "conditions": [{"type": "Ready", "status": "True"}]});
            }
            "Service" => {
                let (_, vip) = vips.iter().find(|v| v.0 == name).unwrap();
                o["spec"]["clusterIP"] = json!(vip);
            }
            _ => {}
        }
        let kind = o["kind"].as_str().unwrap().to_owned();
        let path = LISTS.iter().find(|(k, _)| *k == kind).unwrap().1;
        // List items carry no apiVersion and kind, as a real API server sends them.
        let item = o.as_object_mut().unwrap();
        item.remove("apiVersion");
        item.remove("kind");
        lists.entry(path).or_default().push(o);
    }
    lists
}

/// The installed controller, with its own trust domain.
fn controller() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "ambit-controller", "namespace": "ambit-system"},
        "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "controller",
            "env": [{"name": "AMBIT_TRUST_DOMAIN", "value": "mesh.example"},
                    {"name": "AMBIT_CONTROLLER_NAMESPACE",
                     "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}]}]}}}})
}

#[tokio::test]
async fn explain_reads_the_clusters_objects_and_evaluates_the_waypoint() {
    let lists = cluster_objects();
    let (client, calls) = serve(move |call| match call.path() {
        "/apis/apps/v1/namespaces/ambit-system/deployments/ambit-controller" => (200, controller()),
        // PeerAuthentication's CRD is not installed: no objects of that kind.
        "/apis/security.istio.io/v1/peerauthentications" => not_found(call),
        path => match lists.get(path) {
            Some(items) => (
                200,
                json!({"apiVersion": "v1", "kind": "List",
                                        "metadata": {"resourceVersion": "1"}, "items": items}),
            ),
            None => (
                200,
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
            ),
        },
    });
    let (objects, view) = mesh::load(&client).await.unwrap();
    let paths: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.path().to_owned())
        .collect();
    let mut expected = vec!["/apis/apps/v1/namespaces/ambit-system/deployments/ambit-controller"];
    expected.extend(LISTS.iter().map(|(_, path)| *path));
    assert_eq!(paths, expected);
    assert!(calls.lock().unwrap().iter().all(|c| c.method == "GET"));

    let pods = Placement::from_cluster(&objects);
    let explain = |path: &str, headers: &[&str]| {
        let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        let request = Request::new("GET", path, &headers).unwrap();
        cmd::explain(&pods, &view, "demo/client", "echo:80", &request).unwrap()
    };
    let out = explain("/secret/keys", &[]);
    assert_eq!(
        out,
        "demo/client (10.244.1.2 on node1) -> service demo/echo (10.96.0.10:80)
  The source is captured: the node agent on node1 takes the connection (outbound, port 15001) and acts as spiffe://mesh.example/ns/demo/sa/client.
  10.96.0.10:80 uses waypoint demo/waypoint-7d9f: HBONE (mutual TLS) to 10.244.2.3:15008, expecting spiffe://mesh.example/ns/demo/sa/waypoint. The waypoint applies HTTP routing and L7 policy, then tunnels to the endpoint it picks.
  If the client speaks HTTP, the waypoint (Gateway demo/waypoint) sees GET /secret/keys with Host \"echo:80\":
  L7 policy: policies bound to the waypoint or to service demo/echo: demo/no-secrets. Decision for GET /secret/keys: denied by DENY policy demo/no-secrets (rule 1).
  The waypoint answers 403 itself (x-ambit-reason: RBAC: access denied: denied by DENY policy demo/no-secrets (rule 1)); no backend sees the request.

Verdict: DENIED: the waypoint answers 403 Forbidden to GET /secret/keys; no backend sees the request.
warning: the controller skips AuthorizationPolicy/demo/external field spec.action: CUSTOM (external authorization) is not supported; use ALLOW, DENY or AUDIT
"
    );
    let out = explain("/hello", &["x-canary=yes"]);
    assert!(
        out.contains("Verdict: ALLOWED: the waypoint forwards GET /hello to service demo/echo-v2;"),
        "{out}"
    );
    assert!(
        out.contains("endpoint(s) demo/server-v2 (10.244.1.4:8080)"),
        "{out}"
    );
}
