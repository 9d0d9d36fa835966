//! The config push service over real gRPC: snapshot, incremental updates, ACK/NACK, resume after a
//! reconnect, slow clients, and per-client filtering.
mod push_common;

use std::collections::HashMap;
use std::time::Duration;

use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::{self, DeltaDiscoveryRequest, type_url};
use push_common::*;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn snapshot_then_only_changes_then_removals() {
    let yaml = [
        BASE,
        &pod("cart", "node-1", "10.244.1.5"),
        &pod("db", "node-2", "10.244.2.5"),
    ]
    .concat();
    let mesh = Mesh::start(&yaml).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    let first = c.sync().await;
    assert_eq!(
        first[type_url::WORKLOAD].resources.len(),
        2,
        "agents get every workload"
    );
    assert_eq!(
        names(&first[type_url::SERVICE]),
        ["shop/cart.shop.svc.cluster.local"]
    );
    assert!(
        first[type_url::AUTHORIZATION].resources.is_empty(),
        "an empty response still says 'synced'"
    );

    // Update one pod: only it is sent.
    let changed = [
        BASE,
        &pod("cart", "node-1", "10.244.1.9"),
        &pod("db", "node-2", "10.244.2.5"),
    ]
    .concat();
    mesh.publish(&changed);
    let r = c.recv().await;
    assert_eq!(r.type_url, type_url::WORKLOAD);
    assert_eq!(names(&r), ["Kubernetes//Pod/shop/cart"]);
    assert_eq!(addresses(&r), ["10.244.1.9"]);
    c.ack(&r).await;

    // Delete it: a removal, nothing else.
    mesh.publish(&[BASE, &pod("db", "node-2", "10.244.2.5")].concat());
    let r = c.recv().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["Kubernetes//Pod/shop/cart"]);
    c.ack(&r).await;
    assert_eq!(c.names(type_url::WORKLOAD), ["Kubernetes//Pod/shop/db"]);
}

#[tokio::test]
async fn authorizations_are_filtered_per_client() {
    let yaml = [
        BASE,
        &pod("cart", "node-1", "10.244.1.5"),
        &pod("db", "node-2", "10.244.2.5"),
        &policy("istio-system", "mesh", "{action: DENY, rules: [{from: [{source: {namespaces: [evil]}}]}]}"),
        &policy("shop", "cart-only", "{selector: {matchLabels: {app: cart}}, rules: [{}]}"),
        &policy("shop", "db-only", "{selector: {matchLabels: {app: db}}, rules: [{}]}"),
        &policy("other", "elsewhere", "{rules: [{}]}"),
        &policy("shop", "at-waypoint", "{targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}], rules: [{}]}"),
    ]
    .concat();
    let mesh = Mesh::start(&yaml).await;
    let mut n1 = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    n1.sync().await;
    assert_eq!(
        n1.names(type_url::AUTHORIZATION),
        ["istio-system/mesh", "shop/cart-only"]
    );
    let mut w = Client::connect(&mesh, waypoint("shop", "wp"), HashMap::new()).await;
    w.sync().await;
    assert_eq!(w.names(type_url::AUTHORIZATION), ["shop/at-waypoint"]);
}

#[tokio::test]
async fn nothing_new_is_sent_until_the_last_response_is_answered_and_nack_keeps_state() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;

    mesh.publish(&[BASE, &pod("cart", "node-1", "10.244.1.6")].concat());
    let r1 = c.recv().await;
    // Unanswered: two more changes must coalesce, not queue.
    mesh.publish(&[BASE, &pod("cart", "node-1", "10.244.1.7")].concat());
    mesh.publish(&[BASE, &pod("cart", "node-1", "10.244.1.8")].concat());
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.rx.message())
            .await
            .is_err(),
        "pushed past an unanswered response"
    );

    // NACK: counted and shown in the dump; the client keeps what it had.
    c.answer(&r1, Some("cannot apply workload")).await;
    let r2 = c.recv().await;
    assert_eq!(
        names(&r2),
        ["Kubernetes//Pod/shop/cart"],
        "the newest state, once"
    );
    assert_eq!(addresses(&r2), ["10.244.1.8"]);
    assert!(
        mesh.metrics()
            .contains("xds_nacks_total{type_url=\"type.ambit.dev/ambit.v1.Workload\"} 1"),
        "{}",
        mesh.metrics()
    );
    let dump = mesh.server.dump();
    assert_eq!(dump[0].nacks, 1);
    assert_eq!(dump[0].last_nack.as_deref(), Some("cannot apply workload"));
    c.ack(&r2).await;
}

#[tokio::test]
async fn a_rejected_config_is_not_offered_again_until_it_changes() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;
    mesh.publish(&[BASE, &pod("cart", "node-1", "10.244.1.6")].concat());
    let r = c.recv().await;
    c.answer(&r, Some("rejected")).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), c.rx.message())
            .await
            .is_err(),
        "the rejected config was pushed again"
    );
    mesh.publish(&[BASE, &pod("cart", "node-1", "10.244.1.7")].concat());
    let r = c.recv().await;
    assert_eq!(names(&r), ["Kubernetes//Pod/shop/cart"]);
}

#[tokio::test]
async fn a_reconnecting_client_gets_only_the_difference() {
    let yaml = [
        BASE,
        &pod("cart", "node-1", "10.244.1.5"),
        &pod("db", "node-2", "10.244.2.5"),
    ]
    .concat();
    let mesh = Mesh::start(&yaml).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;
    let held = c.held.clone();
    drop(c);

    // While it was away: db changed, cart was deleted, web appeared.
    mesh.publish(
        &[
            BASE,
            &pod("db", "node-2", "10.244.2.6"),
            &pod("web", "node-2", "10.244.2.7"),
        ]
        .concat(),
    );
    let mut c = Client::connect(&mesh, node_agent("node-1"), held).await;
    let got = c.sync().await;
    let w = &got[type_url::WORKLOAD];
    let mut sent = names(w);
    sent.sort();
    assert_eq!(
        sent,
        ["Kubernetes//Pod/shop/db", "Kubernetes//Pod/shop/web"]
    );
    assert_eq!(w.removed_resources, ["Kubernetes//Pod/shop/cart"]);
    assert!(
        got[type_url::SERVICE].resources.is_empty(),
        "the unchanged service is not resent"
    );
}

#[tokio::test]
async fn a_slow_client_does_not_hold_up_the_others() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut slow = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    slow.sync().await;
    let mut fast = Client::connect(&mesh, node_agent("node-2"), HashMap::new()).await;
    fast.sync().await;
    // The slow client stops reading and answering; the fast one sees all 20 changes.
    for i in 10..30 {
        mesh.publish(&[BASE, &pod("cart", "node-1", &format!("10.244.1.{i}"))].concat());
        let r = fast.recv().await;
        fast.ack(&r).await;
        match &r.resources[0].kind {
            Some(api::resource::Kind::Workload(w)) => {
                assert_eq!(w.addresses, [format!("10.244.1.{i}")])
            }
            other => panic!("{other:?}"),
        }
    }
    // When the slow one catches up it gets the first change it missed, then jumps to the newest.
    let r = slow.recv().await;
    slow.ack(&r).await;
    let r = slow.recv().await;
    assert_eq!(addresses(&r), ["10.244.1.29"]);
}

#[tokio::test]
async fn bad_first_requests_are_refused_clearly() {
    let mesh = Mesh::start(BASE).await;
    let token = mesh.token(&caller_of(&node_agent("n")));
    let mut grpc = ConfigDiscoveryServiceClient::connect(format!("http://{}", mesh.addr))
        .await
        .unwrap();
    // Authenticated, so what is wrong is the request (a mismatched node: push_auth.rs).
    for (req, want) in [
        (
            DeltaDiscoveryRequest {
                type_url: type_url::WORKLOAD.into(),
                ..Default::default()
            },
            "node",
        ),
        (
            DeltaDiscoveryRequest {
                node: Some(node_agent("n")),
                type_url: "type.example/Bogus".into(),
                ..Default::default()
            },
            "type_url",
        ),
    ] {
        let (tx, rx) = mpsc::channel(1);
        tx.send(req).await.unwrap();
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        let bearer = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        let result = grpc.delta_config(request).await;
        let status = match result {
            Err(s) => s,
            Ok(resp) => resp
                .into_inner()
                .message()
                .await
                .expect_err("accepted a bad request"),
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
        assert!(status.message().contains(want), "{status}");
    }
}

#[tokio::test]
async fn a_waypoint_is_sent_its_routes_and_their_changes() {
    let gateway = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: wp, namespace: shop}\nspec: {gatewayClassName: ambit-waypoint}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: wp}}\nspec: {clusterIP: 10.96.0.30, ports: [{port: 9080}]}\n---\n";
    let route = |weight: u32| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: reviews, namespace: shop}}\n\
             spec: {{parentRefs: [{{group: '', kind: Service, name: reviews}}], rules: [{{backendRefs: [{{name: reviews, port: 9080, weight: {weight}}}]}}]}}\n---\n"
        )
    };
    let elsewhere = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: cart, namespace: shop}\nspec: {parentRefs: [{group: '', kind: Service, name: cart}], rules: [{backendRefs: [{name: cart, port: 80}]}]}\n---\n";
    let mesh = Mesh::start(&[BASE, gateway, &route(1), elsewhere].concat()).await;
    let node = waypoint("shop", "wp");
    let all = vec![
        type_url::WORKLOAD,
        type_url::SERVICE,
        type_url::AUTHORIZATION,
        type_url::ROUTE,
        type_url::BACKEND_POLICY,
    ];
    let mut wp = Client::connect_types(&mesh, node, HashMap::new(), all).await;
    let first = wp.sync().await;
    // Not the route of cart, which does not use this waypoint.
    assert_eq!(names(&first[type_url::ROUTE]), ["shop/reviews"]);
    assert!(first[type_url::BACKEND_POLICY].resources.is_empty());

    // A changed weight: that route, nothing else.
    mesh.publish(&[BASE, gateway, &route(5), elsewhere].concat());
    let r = wp.recv().await;
    assert_eq!(r.type_url, type_url::ROUTE);
    match &r.resources[0].kind {
        Some(api::resource::Kind::Route(route)) => assert_eq!(route.rules[0].backends[0].weight, 5),
        other => panic!("expected a route, got {other:?}"),
    }
    wp.ack(&r).await;

    // A node agent asking for routes holds none.
    let mut agent = Client::connect_types(
        &mesh,
        node_agent("node-1"),
        HashMap::new(),
        vec![type_url::ROUTE],
    )
    .await;
    let got = agent.sync().await;
    assert!(got[type_url::ROUTE].resources.is_empty());
}
