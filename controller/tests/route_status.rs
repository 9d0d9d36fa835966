//! HTTPRoute and GatewayClass status against the in-memory API server (`k8s_fake`), with the
//! Kubernetes source feeding the mesh's state as on a cluster: each parentRef that is Ambit's
//! gets Accepted (by the attachment rule the translation uses) and ResolvedRefs, under
//! Ambit's controllerName; other controllers' entries stay; a Service appearing resolves a
//! backend; nothing is rewritten unless it changed; Ambit's GatewayClass is accepted and
//! Istio's is left alone; nothing is written unless leading.

mod k8s_fake;

use std::time::Duration;

use ambit_controller::model::ClusterState;
use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::routes::Mesh;
use ambit_controller::reconcile::status::CONTROLLER_NAME;
use ambit_controller::reconcile::{ControllerAddress, Reconciler};
use ambit_controller::source::kubernetes::KubernetesSource;
use http::Method;
use k8s_fake::{FakeApi, GATEWAY_CLASSES, GATEWAYS, HTTP_ROUTES, SERVICES};
use serde_json::{Value, json};
use tokio::sync::watch;

const NS: &str = "shop";

fn settings() -> WaypointSettings {
    WaypointSettings {
        image: "example.com/ambit-waypoint:test".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        controller_namespace: "ambit-system".into(),
        token_audience: None,
        root_cert_pem: "PEM".into(),
    }
}

/// The API server with two namespaces, a waypoint Gateway (routes of its own namespace only),
/// a Gateway of another class and the Service `echo`; the source, and a reconciler writing
/// statuses while `leading`.
async fn start(leading: bool) -> (FakeApi, watch::Sender<bool>) {
    let (fake, client) = FakeApi::start();
    for ns in [NS, "other"] {
        fake.put("/api/v1/namespaces", json!({"metadata": {"name": ns}}));
    }
    fake.put(
        SERVICES,
        json!({"metadata": {"name": "ambit-controller", "namespace": "ambit-system"},
               "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 15012}]}}),
    );
    fake.put(SERVICES, service("echo"));
    fake.put(
        GATEWAYS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "wp", "namespace": NS},
               "spec": {"gatewayClassName": "ambit-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
    );
    fake.put(
        GATEWAYS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "ingress", "namespace": NS},
               "spec": {"gatewayClassName": "example-ingress",
                        "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]}}),
    );
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, ready) = watch::channel(false);
    tokio::spawn(KubernetesSource::new(client.clone()).run(states_tx, ready_tx));
    let (leading_tx, leading_rx) = watch::channel(leading);
    let reconciler = Reconciler::new(
        client,
        settings(),
        ControllerAddress::Fixed("10.0.0.1:15012".parse().unwrap()),
    )
    .with_mesh(Mesh { states, ready });
    tokio::spawn(reconciler.run(leading_rx));
    (fake, leading_tx)
}

fn service(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": NS},
           "spec": {"clusterIP": "10.96.1.1", "ports": [{"port": 80}]}})
}

fn route(namespace: &str, name: &str, parents: Value, backend: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"parentRefs": parents,
                    "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}})
}

/// Ambit's entries of the route's `status.parents`.
fn ours(fake: &FakeApi, namespace: &str, name: &str) -> Vec<Value> {
    let route = fake.get(HTTP_ROUTES, namespace, name).unwrap_or_default();
    let parents = route["status"]["parents"].as_array().cloned();
    parents
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p["controllerName"] == CONTROLLER_NAME)
        .collect()
}

/// `(status, reason)` of condition `type_` of one parent entry.
fn condition(parent: &Value, type_: &str) -> (String, String) {
    let c = parent["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .cloned()
        .unwrap_or_default();
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    (s(&c["status"]), s(&c["reason"]))
}

fn status_writes(fake: &FakeApi, name: &str) -> usize {
    fake.writes()
        .iter()
        .filter(|w| w.path.ends_with(&format!("/httproutes/{name}/status")))
        .count()
}

#[tokio::test]
async fn each_parent_of_ambit_gets_accepted_and_resolved_refs_and_others_are_left_alone() {
    let (fake, _leading) = start(true).await;
    let parents = json!([
        {"name": "wp"},
        {"name": "wp", "sectionName": "no-such-listener"},
        {"group": "", "kind": "Service", "name": "echo"},
        {"name": "ingress"},
    ]);
    let mut written = route(NS, "echo", parents, "echo");
    // Another implementation's entry for its own parent: kept as it is.
    let other = json!({"parentRef": {"name": "ingress"}, "controllerName": "example.com/ingress",
                       "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                       "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    written["status"] = json!({"parents": [other]});
    fake.put(HTTP_ROUTES, written);
    fake.wait_for("three parents of Ambit's", |f| {
        ours(f, NS, "echo").len() == 3
    })
    .await;

    let entries = ours(&fake, NS, "echo");
    assert_eq!(entries[0]["parentRef"], json!({"name": "wp"}));
    assert_eq!(
        condition(&entries[0], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition(&entries[0], "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    assert_eq!(entries[0]["conditions"][0]["observedGeneration"], 1);
    assert_eq!(
        condition(&entries[1], "Accepted"),
        ("False".into(), "NoMatchingParent".into()),
        "no listener of that name"
    );
    assert_eq!(entries[2]["parentRef"]["kind"], "Service", "a GAMMA parent");
    assert_eq!(
        condition(&entries[2], "Accepted"),
        ("True".into(), "Accepted".into())
    );
    let route = fake.get(HTTP_ROUTES, NS, "echo").unwrap();
    assert_eq!(route["status"]["parents"][0], other);

    // Settled: looking again (the periodic and mesh-triggered passes) writes nothing.
    let writes = status_writes(&fake, "echo");
    fake.put(SERVICES, service("unrelated"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        status_writes(&fake, "echo"),
        writes,
        "an unchanged status is not written"
    );
}

#[tokio::test]
async fn listeners_refuse_other_namespaces_and_a_missing_backend_resolves_when_it_appears() {
    let (fake, _leading) = start(true).await;
    let to_wp = json!([{"name": "wp", "namespace": NS}]);
    fake.put(HTTP_ROUTES, route("other", "across", to_wp, "echo"));
    fake.put(
        HTTP_ROUTES,
        route(NS, "missing", json!([{"name": "wp"}]), "v2"),
    );
    fake.wait_for("both routes' status", |f| {
        ours(f, "other", "across").len() == 1 && ours(f, NS, "missing").len() == 1
    })
    .await;
    let across = &ours(&fake, "other", "across")[0];
    assert_eq!(
        condition(across, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into()),
        "allowedRoutes default to the Gateway's namespace"
    );
    let missing = &ours(&fake, NS, "missing")[0];
    assert_eq!(
        condition(missing, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        condition(missing, "ResolvedRefs"),
        ("False".into(), "BackendNotFound".into())
    );
    assert!(
        missing["conditions"][1]["message"]
            .as_str()
            .unwrap()
            .contains("Service shop/v2 not found")
    );

    // The Service is created: the route's status follows, though the route did not change.
    fake.put(SERVICES, service("v2"));
    fake.wait_for("the backend resolved", |f| {
        ours(f, NS, "missing")
            .first()
            .is_some_and(|p| condition(p, "ResolvedRefs").0 == "True")
    })
    .await;
}

#[tokio::test]
async fn ambits_gateway_class_is_accepted_and_istios_is_not_touched() {
    let (fake, _leading) = start(true).await;
    let class = |name: &str, controller: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": name}, "spec": {"controllerName": controller}})
    };
    fake.put(
        GATEWAY_CLASSES,
        class("istio-waypoint", "istio.io/gateway-controller"),
    );
    fake.put(GATEWAY_CLASSES, class("ambit-waypoint", CONTROLLER_NAME));
    fake.wait_for("ambit-waypoint accepted", |f| {
        f.get(GATEWAY_CLASSES, "", "ambit-waypoint")
            .is_some_and(|c| {
                c["status"]["conditions"][0]["type"] == "Accepted"
                    && c["status"]["conditions"][0]["status"] == "True"
            })
    })
    .await;
    let istio = fake.get(GATEWAY_CLASSES, "", "istio-waypoint").unwrap();
    assert!(istio["status"].is_null(), "{istio}");
    assert!(
        !fake
            .writes()
            .iter()
            .any(|w| w.path.contains("gatewayclasses/istio-waypoint")),
        "Istio's class is Istio's to write"
    );
}

#[tokio::test]
async fn no_status_is_written_unless_leading() {
    let (fake, leading) = start(false).await;
    fake.put(
        HTTP_ROUTES,
        route(NS, "echo", json!([{"name": "wp"}]), "echo"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fake.writes().iter().any(|w| w.method == Method::PATCH),
        "{:?}",
        fake.writes()
    );
    leading.send_replace(true);
    fake.wait_for("the route's status once leading", |f| {
        ours(f, NS, "echo").len() == 1
    })
    .await;
}
