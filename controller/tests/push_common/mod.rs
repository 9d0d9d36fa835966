//! The config service on a real gRPC server, and a raw delta-xDS client that sends exactly what
//! each test says: shared by the push tests. The server authenticates with token files, as
//! standalone; a client presents the token of the node it names unless a test says otherwise.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_controller::auth::{Authenticator, Caller, TokenFiles};
use ambit_controller::model::ClusterState;
use ambit_controller::push::{ConfigServer, Generation, PushMetrics};
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Settings, translate};
use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, type_url};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

pub fn pod(name: &str, node: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {name}}}}}\nspec: {{nodeName: {node}, containers: [{{name: a, image: x}}]}}\nstatus: {{podIP: {ip}}}\n---\n"
    )
}

pub const BASE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: other}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.10, selector: {app: cart}, ports: [{port: 80}]}\n---\n";

pub fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

pub struct Mesh {
    pub generations: watch::Sender<Arc<Generation>>,
    pub addr: SocketAddr,
    pub server: ConfigServer,
    pub registry: Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
    pub tokens: Arc<TokenFiles>,
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// Serves `yaml`, authenticating callers with token files.
    pub async fn start(yaml: &str) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(TokenFiles::open(dir.path().join("tokens")).unwrap());
        let mesh = Mesh::listen(tokens.clone(), tokens, dir).await;
        mesh.publish(yaml);
        mesh
    }

    /// Serves nothing yet, authenticating callers with `auth` (its own token files unused).
    pub async fn serve(auth: Arc<dyn Authenticator>) -> Mesh {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(TokenFiles::open(dir.path().join("tokens")).unwrap());
        Mesh::listen(auth, tokens, dir).await
    }

    async fn listen(
        auth: Arc<dyn Authenticator>,
        tokens: Arc<TokenFiles>,
        dir: tempfile::TempDir,
    ) -> Mesh {
        let (generations, rx) = watch::channel(Arc::new(Generation::empty()));
        let mut registry = prometheus_client::registry::Registry::default();
        let server = ConfigServer::new(rx, auth, PushMetrics::new(&mut registry));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = server.service();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Mesh {
            generations,
            addr,
            server,
            registry: Arc::new(std::sync::Mutex::new(registry)),
            tokens,
            _dir: dir,
        }
    }

    /// The token file of `caller`, written if it was not yet.
    pub fn token_file(&self, caller: &Caller) -> std::path::PathBuf {
        self.tokens.ensure([caller]).unwrap();
        self.tokens.path(caller)
    }

    pub fn token(&self, caller: &Caller) -> String {
        std::fs::read_to_string(self.token_file(caller)).unwrap()
    }

    pub fn publish(&self, yaml: &str) {
        let state = cluster(yaml);
        let snapshot = translate(&state, &Settings::default());
        let next = self.generations.borrow().next(&snapshot, Instant::now());
        self.generations.send_replace(Arc::new(next));
    }

    pub fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .unwrap();
        out
    }
}

pub fn cluster(yaml: &str) -> ClusterState {
    let parsed = parse_file(Path::new("t.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut state = ClusterState::new();
    for o in parsed.objects {
        state.upsert(o);
    }
    state
}

/// A raw delta-xDS client: sends exactly what each test says, nothing more.
pub struct Client {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: Streaming<DeltaDiscoveryResponse>,
    /// What this client holds, per type: name -> version.
    pub held: HashMap<String, HashMap<String, String>>,
    /// The types subscribed to.
    pub types: Vec<&'static str>,
}

pub fn node_agent(node: &str) -> api::Node {
    api::Node {
        id: format!("ztunnel~{node}"),
        role: api::NodeRole::NodeAgent as i32,
        node_name: node.into(),
        ..Default::default()
    }
}

pub fn waypoint(namespace: &str, name: &str) -> api::Node {
    api::Node {
        id: format!("waypoint~{namespace}/{name}"),
        role: api::NodeRole::Waypoint as i32,
        waypoint: format!("{namespace}/{name}"),
        ..Default::default()
    }
}

/// The caller a node says it is.
pub fn caller_of(node: &api::Node) -> Caller {
    match api::NodeRole::try_from(node.role) {
        Ok(api::NodeRole::Waypoint) => {
            let (namespace, name) = node.waypoint.split_once('/').unwrap();
            Caller::Waypoint {
                namespace: namespace.into(),
                name: name.into(),
            }
        }
        _ => Caller::NodeAgent {
            node: node.node_name.clone(),
        },
    }
}

/// Two waypoints in shop, each serving one service, with a route and a policy each; a policy
/// enforced by node-1's agent and one by node-2's.
pub fn two_waypoints() -> String {
    let gateway = |name: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{gatewayClassName: ambit-waypoint}}\n---\n"
        )
    };
    let service = |name: &str, ip: &str, waypoint: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop, labels: {{istio.io/use-waypoint: {waypoint}}}}}\nspec: {{clusterIP: {ip}, ports: [{{port: 9080}}]}}\n---\n"
        )
    };
    let route = |service: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {service}, namespace: shop}}\nspec: {{parentRefs: [{{group: '', kind: Service, name: {service}}}], rules: [{{backendRefs: [{{name: {service}, port: 9080}}]}}]}}\n---\n"
        )
    };
    let at = |gateway: &str| {
        policy(
            "shop",
            &format!("at-{gateway}"),
            &format!(
                "{{targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: {gateway}}}], rules: [{{}}]}}"
            ),
        )
    };
    [
        BASE.to_string(),
        pod("cart", "node-1", "10.244.1.5"),
        pod("db", "node-2", "10.244.2.5"),
        policy(
            "shop",
            "cart-only",
            "{selector: {matchLabels: {app: cart}}, rules: [{}]}",
        ),
        policy(
            "shop",
            "db-only",
            "{selector: {matchLabels: {app: db}}, rules: [{}]}",
        ),
        gateway("wp"),
        gateway("other"),
        service("reviews", "10.96.0.30", "wp"),
        service("ratings", "10.96.0.31", "other"),
        route("reviews"),
        route("ratings"),
        at("wp"),
        at("other"),
    ]
    .concat()
}

pub const WAYPOINT_TYPES: [&str; 5] = [
    type_url::WORKLOAD,
    type_url::SERVICE,
    type_url::AUTHORIZATION,
    type_url::ROUTE,
    type_url::BACKEND_POLICY,
];

/// What a node agent needs: workloads, services, authorizations.
pub const AGENT_TYPES: [&str; 3] = [
    type_url::WORKLOAD,
    type_url::SERVICE,
    type_url::AUTHORIZATION,
];

impl Client {
    /// Subscribes to what a node agent needs, with the token of the caller `node` names.
    pub async fn connect(
        mesh: &Mesh,
        node: api::Node,
        initial: HashMap<String, HashMap<String, String>>,
    ) -> Client {
        Client::connect_types(mesh, node, initial, AGENT_TYPES.to_vec()).await
    }

    pub async fn connect_types(
        mesh: &Mesh,
        node: api::Node,
        initial: HashMap<String, HashMap<String, String>>,
        types: Vec<&'static str>,
    ) -> Client {
        let token = mesh.token(&caller_of(&node));
        Client::open(mesh.addr, node, Some(&token), initial, types)
            .await
            .expect("the stream was refused")
    }

    /// Opens a stream presenting `token` (None: no `authorization` metadata).
    pub async fn open(
        addr: SocketAddr,
        node: api::Node,
        token: Option<&str>,
        initial: HashMap<String, HashMap<String, String>>,
        types: Vec<&'static str>,
    ) -> Result<Client, Status> {
        let mut grpc = ConfigDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        for (i, t) in types.iter().enumerate() {
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
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let bearer = format!("Bearer {token}").parse().unwrap();
            request.metadata_mut().insert("authorization", bearer);
        }
        let rx = grpc.delta_config(request).await?.into_inner();
        Ok(Client {
            tx,
            rx,
            held: initial,
            types,
        })
    }

    pub async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("no response within 10 s")
            .unwrap()
            .expect("stream ended")
    }

    /// Applies a response to `held` and ACKs it.
    pub async fn ack(&mut self, r: &DeltaDiscoveryResponse) {
        let held = self.held.entry(r.type_url.clone()).or_default();
        for res in &r.resources {
            held.insert(res.name.clone(), res.version.clone());
        }
        for name in &r.removed_resources {
            held.remove(name);
        }
        self.answer(r, None).await;
    }

    pub async fn answer(&self, r: &DeltaDiscoveryResponse, error: Option<&str>) {
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
    pub async fn sync(&mut self) -> HashMap<String, DeltaDiscoveryResponse> {
        let mut got = HashMap::new();
        while got.len() < self.types.len() {
            let r = self.recv().await;
            self.ack(&r).await;
            got.insert(r.type_url.clone(), r);
        }
        got
    }

    /// Receives and ACKs responses until one of workloads and one of authorizations have come
    /// (a workload change that moves policies between nodes sends both).
    pub async fn sync_changes(&mut self) -> HashMap<String, DeltaDiscoveryResponse> {
        let mut got = HashMap::new();
        while !got.contains_key(type_url::WORKLOAD) || !got.contains_key(type_url::AUTHORIZATION) {
            let r = self.recv().await;
            self.ack(&r).await;
            got.insert(r.type_url.clone(), r);
        }
        got
    }

    pub fn names(&self, t: &str) -> Vec<String> {
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
pub fn addresses(r: &DeltaDiscoveryResponse) -> Vec<String> {
    match &r.resources[0].kind {
        Some(api::resource::Kind::Workload(w)) => w.addresses.clone(),
        other => panic!("expected a workload, got {other:?}"),
    }
}

pub fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

/// The value of a refusal counter (`xds_refused_total{reason=...}`), 0 when never counted.
pub fn refused_count(metrics: &str, reason: &str) -> u64 {
    let series = format!("xds_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.parse().unwrap())
}
