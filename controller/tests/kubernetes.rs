//! The Kubernetes source against a scripted API server (kube-rs's `tower-test` approach): lists
//! populate the state, watch events update it, a re-list after `410 Gone` replaces a kind's
//! objects, invalid objects never displace good ones, and readiness waits for every kind.
//!
//! The scripted server (`k8s_common`) is the only fake.
//!
//! One test needs a real cluster and is ignored by default. Run it with:
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test -p ambit-controller --test kubernetes -- --ignored
//! ```

mod k8s_common;

use std::time::Duration;

use ambit_controller::model::{ClusterState, Kind, Object, ObjectRef};
use ambit_controller::source::kubernetes::KubernetesSource;
use http::StatusCode;
use k8s_common::*;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const NAMESPACES: &str = "/api/v1/namespaces";
const NODES: &str = "/api/v1/nodes";
const PODS: &str = "/api/v1/pods";
const SERVICES: &str = "/api/v1/services";
const SERVICE_ACCOUNTS: &str = "/api/v1/serviceaccounts";
const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
const AUTHZ: &str = "/apis/security.istio.io/v1/authorizationpolicies";
const PEER_AUTHN: &str = "/apis/security.istio.io/v1/peerauthentications";

// ----- Kubernetes objects, as the API server sends them -----

fn pod(name: &str, rv: &str) -> Value {
    core("Pod", Some("shop"), name, rv)
}

/// A custom resource in namespace `shop`.
fn custom(kind: &str, name: &str, rv: &str, spec: Value) -> Value {
    let api_version = match kind {
        "Gateway" | "HTTPRoute" => "gateway.networking.k8s.io/v1",
        _ => "security.istio.io/v1",
    };
    let metadata = meta(Some("shop"), name, rv);
    json!({"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec})
}

const CART: &str = "cluster.local/ns/shop/sa/cart";

fn policy(name: &str, rv: &str) -> Value {
    let rules = json!([{"from": [{"source": {"principals": [CART]}}]}]);
    custom("AuthorizationPolicy", name, rv, json!({"rules": rules}))
}

/// Rejected by `translate::validate`: JWT claims are not supported.
fn policy_on_jwt_claims(name: &str, rv: &str) -> Value {
    let when = json!([{"key": "request.auth.claims[iss]", "values": ["x"]}]);
    custom(
        "AuthorizationPolicy",
        name,
        rv,
        json!({"rules": [{"when": when}]}),
    )
}

fn strict_mtls(name: &str, rv: &str) -> Value {
    custom(
        "PeerAuthentication",
        name,
        rv,
        json!({"mtls": {"mode": "STRICT"}}),
    )
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn principals(state: &ClusterState, name: &str) -> Vec<String> {
    match state.get(&key(Kind::AuthorizationPolicy, "shop", name)) {
        Some(Object::AuthorizationPolicy(p)) => p.spec.rules.as_ref().unwrap()[0].from[0]
            .source
            .principals
            .clone(),
        other => panic!("no policy shop/{name}: {other:?}"),
    }
}

// ----- running the source -----

struct Running {
    states: watch::Receiver<ClusterState>,
    ready: watch::Receiver<bool>,
}

fn run_source(client: kube::Client) -> Running {
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, ready) = watch::channel(false);
    tokio::spawn(KubernetesSource::new(client).run(states_tx, ready_tx));
    Running { states, ready }
}

fn has(state: &ClusterState, kind: Kind, namespace: &str, name: &str) -> bool {
    state.get(&key(kind, namespace, name)).is_some()
}

// ----- behaviour -----

#[tokio::test]
async fn lists_populate_the_state_and_the_watch_resumes_from_the_lists_resource_version() {
    let (server, client) = ApiServer::start();
    server.list(PODS, list("100", [pod("a", "90"), pod("b", "95")]));
    let mut source = run_source(client);

    wait(&mut source.states, "the listed pods", |s| {
        has(s, Kind::Pod, "shop", "a") && has(s, Kind::Pod, "shop", "b")
    })
    .await;

    let watch = server.next_watch(PODS).await;
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("100"));
    let mut relabelled = pod("a", "102");
    relabelled["metadata"]["labels"] = json!({"app": "cart"});
    watch.events(&[
        event("ADDED", pod("c", "101")),
        event("MODIFIED", relabelled),
        event("DELETED", pod("b", "103")),
    ]);

    wait(&mut source.states, "the watch events applied", |s| {
        let a_labelled = matches!(
            s.get(&key(Kind::Pod, "shop", "a")),
            Some(Object::Pod(p)) if p.metadata.labels.as_ref().is_some_and(|l| l["app"] == "cart")
        );
        a_labelled && has(s, Kind::Pod, "shop", "c") && !has(s, Kind::Pod, "shop", "b")
    })
    .await;

    // The body ended; the next watch carries on from the last event, without a re-list.
    let resumed = server.next_watch(PODS).await;
    assert_eq!(resumed.param("resourceVersion").as_deref(), Some("103"));
    assert_eq!(server.lists_of(PODS), 1);
}

#[tokio::test]
async fn a_relist_after_410_gone_drops_objects_deleted_meanwhile_and_adds_new_ones() {
    let (server, client) = ApiServer::start();
    server.list(PODS, list("10", [pod("a", "5"), pod("b", "6")]));
    // What the cluster holds by the time the watcher re-lists: `a` was deleted, `c` created,
    // and the events saying so are gone.
    server.list(PODS, list("20", [pod("b", "6"), pod("c", "18")]));
    let mut source = run_source(client);

    wait(&mut source.states, "the first list", |s| {
        has(s, Kind::Pod, "shop", "a") && has(s, Kind::Pod, "shop", "b")
    })
    .await;
    let watch = server.next_watch(PODS).await;
    assert_eq!(watch.param("resourceVersion").as_deref(), Some("10"));
    watch.events(&[gone()]);

    wait(&mut source.states, "the re-listed pods", |s| {
        !has(s, Kind::Pod, "shop", "a")
            && has(s, Kind::Pod, "shop", "b")
            && has(s, Kind::Pod, "shop", "c")
    })
    .await;
    let rewatch = server.next_watch(PODS).await;
    assert_eq!(rewatch.param("resourceVersion").as_deref(), Some("20"));
    assert_eq!(server.lists_of(PODS), 2);
}

#[tokio::test]
async fn an_invalid_policy_is_skipped_and_never_replaces_the_last_good_version() {
    let (server, client) = ApiServer::start();
    let (good, bad) = (
        policy("allow-cart", "3"),
        policy_on_jwt_claims("on-claims", "4"),
    );
    server.list(AUTHZ, list("5", [good, bad]));
    server.list(PODS, list("7", [pod("a", "6")]));
    let mut source = run_source(client);

    wait(&mut source.ready, "readiness", |r| *r).await;
    {
        let state = source.states.borrow();
        assert_eq!(principals(&state, "allow-cart"), [CART]);
        assert!(!has(&state, Kind::AuthorizationPolicy, "shop", "on-claims"));
        assert!(
            has(&state, Kind::Pod, "shop", "a"),
            "other objects are served"
        );
    }

    // Edited into something unusable; `marker` (valid, later in the stream) shows the edit was
    // processed.
    let watch = server.next_watch(AUTHZ).await;
    watch.events(&[
        event("MODIFIED", policy_on_jwt_claims("allow-cart", "6")),
        event("ADDED", policy("marker", "7")),
    ]);
    wait(&mut source.states, "the marker policy", |s| {
        has(s, Kind::AuthorizationPolicy, "shop", "marker")
    })
    .await;
    assert_eq!(principals(&source.states.borrow(), "allow-cart"), [CART]);

    // A re-list that still carries the bad version keeps the good one too.
    let (bad, marker) = (
        policy_on_jwt_claims("allow-cart", "6"),
        policy("marker-2", "8"),
    );
    server.list(AUTHZ, list("9", [bad, marker]));
    server.next_watch(AUTHZ).await.events(&[gone()]);
    wait(&mut source.states, "the re-list", |s| {
        has(s, Kind::AuthorizationPolicy, "shop", "marker-2")
            && !has(s, Kind::AuthorizationPolicy, "shop", "marker")
    })
    .await;
    assert_eq!(principals(&source.states.borrow(), "allow-cart"), [CART]);
}

#[tokio::test]
async fn ready_flips_only_after_every_kind_has_listed() {
    let (server, client) = ApiServer::start();
    server.list(
        NAMESPACES,
        list("1", [core("Namespace", None, "shop", "1")]),
    );
    server.list(NODES, list("1", [core("Node", None, "node-1", "1")]));
    server.list(PODS, list("1", [pod("a", "1")]));
    server.list(
        SERVICES,
        list("1", [core("Service", Some("shop"), "cart", "1")]),
    );
    server.list(
        SERVICE_ACCOUNTS,
        list("1", [core("ServiceAccount", Some("shop"), "cart", "1")]),
    );
    let listeners = json!([{"name": "mesh", "port": 15008, "protocol": "HBONE"}]);
    let waypoint = json!({"gatewayClassName": "istio-waypoint", "listeners": listeners});
    server.list(
        GATEWAYS,
        list("1", [custom("Gateway", "waypoint", "1", waypoint)]),
    );
    let parents = json!([{"name": "cart", "kind": "Service", "group": ""}]);
    let route = json!({"parentRefs": parents});
    server.list(
        HTTP_ROUTES,
        list("1", [custom("HTTPRoute", "cart", "1", route)]),
    );
    server.list(PEER_AUTHN, list("1", [strict_mtls("strict", "1")]));
    // The AuthorizationPolicy list is still in flight.
    let (release_policies, held) = oneshot::channel();
    server.reply_to_list(AUTHZ, ListReply::Later(held));
    let mut source = run_source(client);

    let others = [
        (Kind::Namespace, "", "shop"),
        (Kind::Node, "", "node-1"),
        (Kind::Pod, "shop", "a"),
        (Kind::Service, "shop", "cart"),
        (Kind::ServiceAccount, "shop", "cart"),
        (Kind::Gateway, "shop", "waypoint"),
        (Kind::HttpRoute, "shop", "cart"),
        (Kind::PeerAuthentication, "shop", "strict"),
    ];
    wait(&mut source.states, "every other kind's list", |s| {
        others
            .iter()
            .all(|(kind, ns, name)| has(s, *kind, ns, name))
    })
    .await;
    assert!(!*source.ready.borrow(), "ready while policies are unlisted");

    let policies = list("2", [policy("allow-cart", "2")]);
    release_policies.send(policies).unwrap();
    wait(&mut source.ready, "readiness", |r| *r).await;
    // The state is published before readiness, so a ready source never serves half a cluster.
    let state = source.states.borrow();
    assert!(has(&state, Kind::AuthorizationPolicy, "shop", "allow-cart"));
    assert!(
        others
            .iter()
            .all(|(kind, ns, name)| has(&state, *kind, ns, name))
    );
}

#[tokio::test]
async fn a_missing_crd_holds_back_neither_readiness_nor_other_kinds_and_is_retried() {
    let (server, client) = ApiServer::start();
    server.reply_to_list(
        PEER_AUTHN,
        ListReply::Now(StatusCode::NOT_FOUND, not_found("peerauthentications")),
    );
    // The retry, held until Istio is "installed".
    let (install_istio, held) = oneshot::channel();
    server.reply_to_list(PEER_AUTHN, ListReply::Later(held));
    server.list(PODS, list("3", [pod("a", "2")]));
    let mut source = run_source(client);

    wait(&mut source.ready, "readiness without the CRD", |r| *r).await;
    assert!(has(&source.states.borrow(), Kind::Pod, "shop", "a"));
    server
        .wait_for_requests("a retried PeerAuthentication list", |log| {
            log.iter().filter(|u| is_list_of(u, PEER_AUTHN)).count() == 2
        })
        .await;

    install_istio
        .send(list("4", [strict_mtls("default", "4")]))
        .unwrap();
    wait(
        &mut source.states,
        "the PeerAuthentication once served",
        |s| has(s, Kind::PeerAuthentication, "shop", "default"),
    )
    .await;
    server
        .wait_for_requests("a PeerAuthentication watch", |log| {
            log.iter().any(|u| is_watch_of(u, PEER_AUTHN))
        })
        .await;
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn a_real_cluster_becomes_ready_and_lists_kube_system() {
    let source = KubernetesSource::try_default()
        .await
        .expect("a client from KUBECONFIG or in-cluster config");
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, mut ready) = watch::channel(false);
    tokio::spawn(source.run(states_tx, ready_tx));

    tokio::time::timeout(Duration::from_secs(60), ready.wait_for(|r| *r))
        .await
        .expect("ready within a minute")
        .expect("the source stopped");
    assert!(states.borrow().namespace("kube-system").is_some());
}
