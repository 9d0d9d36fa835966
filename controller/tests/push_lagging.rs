//! The config service over real gRPC when clients fall behind or filters move: a client several
//! generations behind, a type idle for longer than the change history, and a node agent's
//! policies following its workloads. Each must get exactly what changed, nothing more.

mod push_common;

use std::collections::HashMap;

use ambit_proto::api::type_url;
use push_common::*;

#[tokio::test]
async fn a_node_agents_policies_follow_its_workloads_and_policy_edits() {
    let cart_only = |ports: &str| {
        policy(
            "shop",
            "cart-only",
            &format!(
                "{{selector: {{matchLabels: {{app: cart}}}}, rules: [{{to: [{{operation: {{ports: [\"{ports}\"]}}}}]}}]}}"
            ),
        )
    };
    let db_only = policy(
        "shop",
        "db-only",
        "{selector: {matchLabels: {app: db}}, rules: [{}]}",
    );
    let cart = pod("cart", "node-1", "10.244.1.5");
    let mesh = Mesh::start(
        &[
            BASE,
            &cart,
            &pod("db", "node-2", "10.244.2.5"),
            &cart_only("80"),
            &db_only,
        ]
        .concat(),
    )
    .await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;
    assert_eq!(c.names(type_url::AUTHORIZATION), ["shop/cart-only"]);

    // db moves to node-1: its policy follows.
    let db_here = pod("db", "node-1", "10.244.1.6");
    mesh.publish(&[BASE, &cart, &db_here, &cart_only("80"), &db_only].concat());
    let got = c.sync_changes().await;
    assert_eq!(names(&got[type_url::AUTHORIZATION]), ["shop/db-only"]);

    // An edited policy arrives, alone.
    mesh.publish(&[BASE, &cart, &db_here, &cart_only("8080"), &db_only].concat());
    let r = c.recv().await;
    assert_eq!(r.type_url, type_url::AUTHORIZATION);
    assert_eq!(names(&r), ["shop/cart-only"]);
    c.ack(&r).await;

    // cart leaves the node: its policy goes.
    mesh.publish(&[BASE, &db_here, &cart_only("8080"), &db_only].concat());
    let got = c.sync_changes().await;
    assert_eq!(
        got[type_url::AUTHORIZATION].removed_resources,
        ["shop/cart-only"]
    );
    assert_eq!(c.names(type_url::AUTHORIZATION), ["shop/db-only"]);
}

#[tokio::test]
async fn a_client_generations_behind_gets_exactly_what_changed_since() {
    let (cart, db) = (
        pod("cart", "node-1", "10.244.1.5"),
        pod("db", "node-2", "10.244.2.5"),
    );
    let mesh = Mesh::start(&[BASE, &cart, &db].concat()).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;

    let moved = pod("cart", "node-1", "10.244.1.6");
    mesh.publish(&[BASE, &moved, &db].concat());
    let r1 = c.recv().await;
    // While r1 is unanswered: web appears, db goes, web changes again.
    let web = |ip| pod("web", "node-2", ip);
    mesh.publish(&[BASE, &moved, &db, &web("10.244.2.7")].concat());
    mesh.publish(&[BASE, &moved, &web("10.244.2.7")].concat());
    mesh.publish(&[BASE, &moved, &web("10.244.2.8")].concat());
    c.ack(&r1).await;
    let r2 = c.recv().await;
    assert_eq!(
        names(&r2),
        ["Kubernetes//Pod/shop/web"],
        "cart is not resent"
    );
    assert_eq!(addresses(&r2), ["10.244.2.8"]);
    assert_eq!(r2.removed_resources, ["Kubernetes//Pod/shop/db"]);
    c.ack(&r2).await;
    assert_eq!(
        c.names(type_url::WORKLOAD),
        ["Kubernetes//Pod/shop/cart", "Kubernetes//Pod/shop/web"]
    );
}

#[tokio::test]
async fn a_type_idle_for_many_generations_still_gets_its_next_change() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;
    // More generations than the change history holds, none touching services.
    for i in 10..40 {
        mesh.publish(&[BASE, &pod("cart", "node-1", &format!("10.244.1.{i}"))].concat());
        let r = c.recv().await;
        assert_eq!(r.type_url, type_url::WORKLOAD, "only workloads changed");
        c.ack(&r).await;
    }
    let moved = BASE.replace("clusterIP: 10.96.0.10", "clusterIP: 10.96.0.11");
    mesh.publish(&[&moved, &*pod("cart", "node-1", "10.244.1.39")].concat());
    let r = c.recv().await;
    assert_eq!(r.type_url, type_url::SERVICE);
    assert_eq!(names(&r), ["shop/cart.shop.svc.cluster.local"]);
    assert!(r.removed_resources.is_empty());
}
