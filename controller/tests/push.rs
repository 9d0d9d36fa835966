//! The config push service over real gRPC: snapshot, incremental updates, ACK/NACK, resume after a
//! reconnect, slow clients, and per-client filtering.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_controller::model::ClusterState;
use ambit_controller::push::{ConfigServer, Generation, PushMetrics};
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Settings, translate};
use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, type_url};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

fn pod(name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, containers: [{{name: a, image: x}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
    )
}

const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80}]}\n---\n";

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

struct Mesh {
    generations: watch::Sender<Arc<Generation>>,
    addr: SocketAddr,
    server: ConfigServer,
    registry: Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
}

impl Mesh {
    async fn start(yaml: &str) -> Mesh {
        let (generations, rx) = watch::channel(Arc::new(Generation::empty()));
        let mut registry = prometheus_client::registry::Registry::default();
        let server = ConfigServer::new(rx, PushMetrics::new(&mut registry));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = server.service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mesh = Mesh {
            generations,
            addr,
            server,
            registry: Arc::new(std::sync::Mutex::new(registry)),
        };
        mesh.publish(yaml);
        mesh
    }

    fn publish(&self, yaml: &str) {
        let parsed = parse_file(Path::new("t.yaml"), yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut state = ClusterState::new();
        for o in parsed.objects {
            state.upsert(o);
        }
        let snapshot = translate(&state, &Settings::default());
        let next = self.generations.borrow().next(&snapshot, Instant::now());
        self.generations.send_replace(Arc::new(next));
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .unwrap();
        out
    }
}

/// A raw delta-xDS client: sends exactly what each test says, nothing more.
struct Client {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
    /// What this client holds, per type: name -> version.
    held: HashMap<String, HashMap<String, String>>,
}

fn node_agent(node: &str) -> api::Node {
    api::Node {
        id: format!("ztunnel~{node}"),
        role: api::NodeRole::NodeAgent as i32,
        node_name: node.into(),
        ..Default::default()
    }
}

impl Client {
    async fn connect(
        addr: SocketAddr,
        node: api::Node,
        initial: HashMap<String, HashMap<String, String>>,
    ) -> Client {
        let mut grpc = ConfigDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in [
            type_url::WORKLOAD,
            type_url::SERVICE,
            type_url::AUTHORIZATION,
        ]
        .iter()
        .enumerate()
        {
            tx.send(DeltaDiscoveryRequest {
                node: (i == 0).then(|| node.clone()),
                type_url: t.to_string(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions: initial.get(*t).cloned().unwrap_or_default(),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        let rx = grpc
            .delta_config(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Client {
            tx,
            rx,
            held: initial,
        }
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("no response within 10 s")
            .unwrap()
            .expect("stream ended")
    }

    /// Applies a response to `held` and ACKs it.
    async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        let held = self.held.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            held.insert(res.name.clone(), res.version.clone());
        }
        for name in &r.removed_resources {
            held.remove(name);
        }
        self.answer(r, None).await;
    }

    async fn answer(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
        self.tx
            .send(DeltaDiscoveryRequest {
                type_url: r.type_url.clone(),
                response_nonce: r.nonce.clone(),
                error_detail: error.map(|m| api::ErrorDetail {
                    code: 3,
                    message: m.into(),
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Receives and ACKs one response per type.
    async fn sync(&mut self) -> HashMap<String, DeltaDiscoveryResponse> {
        let mut got = HashMap::new();
        while got.len() < 3 {
            let r = self.recv().await;
            self.ack(&r).await;
            got.insert(r.type_url.clone(), r);
        }
        got
    }

    /// Receives and ACKs responses until one of workloads and one of authorizations have come
    /// (a workload change that moves policies between nodes sends both).
    async fn sync_changes(&mut self) -> HashMap<String, DeltaDiscoveryResponse> {
        let mut got = HashMap::new();
        while !got.contains_key(type_url::WORKLOAD) || !got.contains_key(type_url::AUTHORIZATION) {
            let r = self.recv().await;
            self.ack(&r).await;
            got.insert(r.type_url.clone(), r);
        }
        got
    }

    fn names(&self, t: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .held
            .get(t)
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// The addresses of the first resource of `r`, which must be a workload.
fn addresses(r: &DeltaDiscoveryResponse) -> Vec<String> {
    match &r.resources[0].kind {
        Some(api::resource::Kind::Workload(w)) => w.addresses.clone(),
        other => panic!("expected a workload, got {other:?}"),
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn snapshot_then_only_changes_then_removals() {
    let yaml = [
        BASE,
        &pod("cart", "node-1", "10.244.1.5"),
        &pod("db", "node-2", "10.244.2.5"),
    ]
    .concat();
    let mesh = Mesh::start(&yaml).await;
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
    let mut n1 = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
    n1.sync().await;
    assert_eq!(
        n1.names(type_url::AUTHORIZATION),
        ["istio-system/mesh", "shop/cart-only"]
    );
    let wp = api::Node {
        id: "waypoint~shop~wp".into(),
        role: api::NodeRole::Waypoint as i32,
        waypoint: "shop/wp".into(),
        ..Default::default()
    };
    let mut w = Client::connect(mesh.addr, wp, HashMap::new()).await;
    w.sync().await;
    assert_eq!(w.names(type_url::AUTHORIZATION), ["shop/at-waypoint"]);
}

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
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
async fn nothing_new_is_sent_until_the_last_response_is_answered_and_nack_keeps_state() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
async fn a_client_generations_behind_gets_exactly_what_changed_since() {
    let (cart, db) = (
        pod("cart", "node-1", "10.244.1.5"),
        pod("db", "node-2", "10.244.2.5"),
    );
    let mesh = Mesh::start(&[BASE, &cart, &db].concat()).await;
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
async fn a_rejected_config_is_not_offered_again_until_it_changes() {
    let mesh = Mesh::start(&[BASE, &pod("cart", "node-1", "10.244.1.5")].concat()).await;
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
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
    let mut c = Client::connect(mesh.addr, node_agent("node-1"), held).await;
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
    let mut slow = Client::connect(mesh.addr, node_agent("node-1"), HashMap::new()).await;
    slow.sync().await;
    let mut fast = Client::connect(mesh.addr, node_agent("node-2"), HashMap::new()).await;
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
    let mut grpc = ConfigDiscoveryServiceClient::connect(format!("http://{}", mesh.addr))
        .await
        .unwrap();
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
                node: Some(api::Node {
                    role: api::NodeRole::NodeAgent as i32,
                    ..Default::default()
                }),
                type_url: type_url::WORKLOAD.into(),
                ..Default::default()
            },
            "node_name",
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
        let result = grpc.delta_config(ReceiverStream::new(rx)).await;
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
