//! Who the config service serves, over real gRPC with standalone token files: no stream without a
//! token the controller issued; a node agent's token is served the mesh as its own node; a
//! waypoint's token only its own Gateway's resources; a request naming anyone else than its token
//! proves is refused. And the proxies' own client presents its token, re-read on reconnect.
mod push_common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_controller::auth::Caller;
use ambit_proto::api::{self, type_url};
use ambit_proto::xds::{ClientSettings, ClientStatus, ConfigClient, ConfigHandler};
use push_common::*;
use tokio::sync::watch;
use tonic::Code;

fn agent(node: &str) -> Caller {
    Caller::NodeAgent { node: node.into() }
}

fn gateway(name: &str) -> Caller {
    Caller::Waypoint {
        namespace: "shop".into(),
        name: name.into(),
    }
}

/// Opens a stream as `node` presenting `token`, expecting a refusal.
async fn refused(mesh: &Mesh, node: api::Node, token: Option<&str>) -> tonic::Status {
    let types = AGENT_TYPES.to_vec();
    match Client::open(mesh.addr, node, token, HashMap::new(), types).await {
        Ok(_) => panic!("the stream was served"),
        Err(status) => status,
    }
}

#[tokio::test]
async fn a_stream_without_a_token_the_controller_issued_is_refused_and_counted() {
    let mesh = Mesh::start(&two_waypoints()).await;
    mesh.token(&agent("node-1")); // a known token exists; these are not it
    for token in [None, Some("not-a-token"), Some("")] {
        let status = refused(&mesh, node_agent("node-1"), token).await;
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}: {status}");
    }
    let metrics = mesh.metrics();
    assert_eq!(refused_count(&metrics, "unauthenticated"), 3, "{metrics}");
    assert!(metrics.contains("xds_connected_clients 0"), "{metrics}");
    assert!(mesh.server.dump().is_empty(), "a refused stream held state");
}

#[tokio::test]
async fn a_node_agent_token_is_served_the_whole_mesh_as_its_own_node_only() {
    let mesh = Mesh::start(&two_waypoints()).await;
    let mut c = Client::connect(&mesh, node_agent("node-1"), HashMap::new()).await;
    c.sync().await;
    // Every workload and service (a destination can be anywhere), its own node's policies.
    assert_eq!(
        c.names(type_url::WORKLOAD),
        ["Kubernetes//Pod/shop/cart", "Kubernetes//Pod/shop/db"]
    );
    assert_eq!(c.names(type_url::SERVICE).len(), 3);
    assert_eq!(c.names(type_url::AUTHORIZATION), ["shop/cart-only"]);
    assert_eq!(mesh.server.dump()[0].role, "node-agent node-1");

    // node-1's token naming node-2, or a waypoint: refused, whatever the request says.
    let token = mesh.token(&agent("node-1"));
    let status = refused(&mesh, node_agent("node-2"), Some(&token)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(
        status.message().contains("node-agent node-1") && status.message().contains("node-2"),
        "{status}"
    );
    let status = refused(&mesh, waypoint("shop", "wp"), Some(&token)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert_eq!(refused_count(&mesh.metrics(), "identity_mismatch"), 2);
}

#[tokio::test]
async fn a_waypoint_token_is_served_only_its_own_gateways_resources() {
    let mesh = Mesh::start(&two_waypoints()).await;
    for (name, service) in [("wp", "reviews"), ("other", "ratings")] {
        let node = waypoint("shop", name);
        let mut w =
            Client::connect_types(&mesh, node, HashMap::new(), WAYPOINT_TYPES.to_vec()).await;
        w.sync().await;
        assert_eq!(
            w.names(type_url::ROUTE),
            [format!("shop/{service}")],
            "{name}"
        );
        assert_eq!(
            w.names(type_url::AUTHORIZATION),
            [format!("shop/at-{name}")],
            "{name}"
        );
    }

    // wp's token naming the other waypoint, or a node agent: refused before anything is sent.
    let token = mesh.token(&gateway("wp"));
    let status = refused(&mesh, waypoint("shop", "other"), Some(&token)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert!(status.message().contains("waypoint shop/wp"), "{status}");
    let status = refused(&mesh, node_agent("node-1"), Some(&token)).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");
    assert_eq!(refused_count(&mesh.metrics(), "identity_mismatch"), 2);
}

async fn wait(
    status: &mut watch::Receiver<ClientStatus>,
    what: &str,
    done: impl FnMut(&ClientStatus) -> bool,
) -> ClientStatus {
    tokio::time::timeout(Duration::from_secs(10), status.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("never {what}"))
        .unwrap()
        .clone()
}

/// Records which types were applied.
#[derive(Default)]
struct Applied(Mutex<Vec<String>>);

impl ConfigHandler for Applied {
    fn apply(&self, type_url: &str, _: Vec<api::Resource>, _: Vec<String>) -> Result<(), String> {
        self.0.lock().unwrap().push(type_url.to_string());
        Ok(())
    }
}

#[tokio::test]
async fn the_proxies_client_presents_its_token_and_rereads_it_on_reconnect() {
    let mesh = Mesh::start(&two_waypoints()).await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "a token from before a rotation\n").unwrap();
    let mut settings = ClientSettings::new(node_agent("node-1"), &AGENT_TYPES, token_file.clone());
    settings.initial_backoff = Duration::from_millis(10);
    settings.max_backoff = Duration::from_millis(50);
    let applied = Arc::new(Applied::default());
    let client = ConfigClient::new(settings, applied.clone());
    let mut status = client.status();
    let uri = format!("http://{}", mesh.addr);
    let connect = move || {
        let uri = uri.clone();
        async move {
            let endpoint = tonic::transport::Endpoint::from_shared(uri).unwrap();
            endpoint.connect().await.map_err(|e| e.to_string())
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(client.run(connect, async {
        let _ = stopped.await;
    }));

    let refused = wait(&mut status, "refused", |s| s.last_error.is_some()).await;
    assert!(
        refused
            .last_error
            .as_deref()
            .unwrap()
            .contains("Unauthenticated")
            && !refused.synced,
        "{refused:?}"
    );
    assert!(
        applied.0.lock().unwrap().is_empty(),
        "config applied without a valid token"
    );

    // The file is rewritten in place, as the kubelet does: the next attempt uses the new token.
    std::fs::write(&token_file, mesh.token(&agent("node-1"))).unwrap();
    let synced = wait(&mut status, "synced", |s| s.synced).await;
    assert!(synced.connected, "{synced:?}");
    assert_eq!(mesh.server.dump()[0].role, "node-agent node-1");
    let _ = stop.send(());
    task.await.unwrap();
}
