//! The config service on Kubernetes, over real gRPC against the scripted API server: callers
//! authenticate with ServiceAccount tokens checked by TokenReview, exactly as for the CA. The
//! agent is served as the node its token's pod runs on; a waypoint as the Gateway its
//! ServiceAccount names, whatever the stream says.
mod k8s_common;
mod push_common;

use std::collections::HashMap;
use std::sync::Arc;

use ambit_controller::auth::token_review::{ServiceAccountName, TokenReviewer};
use ambit_proto::api::type_url;
use k8s_common::{AGENT, ApiServer, CALLER_PODS, authenticated};
use push_common::*;
use serde_json::Value;
use tokio::sync::watch;
use tonic::Code;

/// A config service whose callers are reviewed by the scripted API server, which knows `tokens`.
async fn start(
    tokens: &[(&str, Value)],
) -> (Mesh, watch::Sender<ambit_controller::model::ClusterState>) {
    let (server, client) = ApiServer::start();
    server.review_tokens(tokens);
    let yaml = [CALLER_PODS, &two_waypoints()].concat();
    let (states, states_rx) = watch::channel(cluster(&yaml));
    let node_agent = ServiceAccountName::from_username(AGENT).unwrap();
    let reviewer = TokenReviewer::new(client, node_agent, Vec::new(), states_rx);
    let mesh = Mesh::serve(Arc::new(reviewer)).await;
    mesh.publish(&yaml);
    (mesh, states)
}

fn tokens() -> Vec<(&'static str, Value)> {
    vec![
        (
            "agent",
            authenticated(AGENT, Some(("ztunnel-abc", "uid-agent"))),
        ),
        (
            "waypoint",
            authenticated("system:serviceaccount:shop:wp", Some(("wp-7f9", "uid-wp"))),
        ),
        (
            "workload",
            authenticated("system:serviceaccount:shop:cart", None),
        ),
    ]
}

#[tokio::test]
async fn a_stream_is_authenticated_by_token_review_as_the_ca_is() {
    let (mesh, _states) = start(&tokens()).await;
    let open = |token: Option<&'static str>| {
        let addr = mesh.addr;
        async move {
            let types = AGENT_TYPES.to_vec();
            Client::open(addr, node_agent("node-1"), token, HashMap::new(), types).await
        }
    };
    for (token, code, says) in [
        (None, Code::Unauthenticated, "missing"),
        (Some("expired"), Code::Unauthenticated, "token has expired"),
        (
            Some("workload"),
            Code::PermissionDenied,
            "shop:cart may not",
        ),
        (Some("api-down"), Code::Unavailable, "TokenReview failed"),
    ] {
        let Err(status) = open(token).await else {
            panic!("{token:?} was served");
        };
        assert_eq!(status.code(), code, "{token:?}: {status}");
        assert!(status.message().contains(says), "{token:?}: {status}");
    }
    let metrics = mesh.metrics();
    for reason in [
        "unauthenticated",
        "wrong_service_account",
        "token_review_failed",
    ] {
        assert_ne!(refused_count(&metrics, reason), 0, "{reason}: {metrics}");
    }

    // The agent's token, bound to its pod on node-1: served as node-1's agent.
    let mut agent = open(Some("agent")).await.expect("the agent was refused");
    agent.sync().await;
    assert_eq!(agent.names(type_url::AUTHORIZATION), ["shop/cart-only"]);
    let workloads = agent.names(type_url::WORKLOAD);
    for pod in ["Kubernetes//Pod/shop/cart", "Kubernetes//Pod/shop/db"] {
        assert!(workloads.iter().any(|w| w == pod), "{pod}: {workloads:?}");
    }
    assert_eq!(mesh.server.dump()[0].role, "node-agent node-1");
    let types = AGENT_TYPES.to_vec();
    let elsewhere = Client::open(
        mesh.addr,
        node_agent("node-2"),
        Some("agent"),
        HashMap::new(),
        types,
    );
    let status = elsewhere.await.err().expect("served as another node");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
}

#[tokio::test]
async fn a_waypoint_is_served_as_the_gateway_its_service_account_names() {
    let (mesh, _states) = start(&tokens()).await;
    let types = WAYPOINT_TYPES.to_vec();
    let mut wp = Client::open(
        mesh.addr,
        waypoint("shop", "wp"),
        Some("waypoint"),
        HashMap::new(),
        types.clone(),
    )
    .await
    .expect("the waypoint was refused");
    wp.sync().await;
    assert_eq!(wp.names(type_url::ROUTE), ["shop/reviews"]);
    assert_eq!(wp.names(type_url::AUTHORIZATION), ["shop/at-wp"]);

    // Its token asking for the other waypoint's config gets none of it.
    let other = Client::open(
        mesh.addr,
        waypoint("shop", "other"),
        Some("waypoint"),
        HashMap::new(),
        types,
    );
    let status = other.await.err().expect("served another Gateway's config");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("waypoint shop/wp"), "{status}");
    assert_eq!(refused_count(&mesh.metrics(), "identity_mismatch"), 1);
}
