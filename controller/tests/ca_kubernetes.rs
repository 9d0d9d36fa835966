//! The CA on Kubernetes, against the scripted API server (`k8s_common`): callers authenticate with
//! ServiceAccount tokens checked by TokenReview, a node agent's node is read from the pod its token
//! is bound to, every refusal has a clear status and a metric, and the generated root is kept in a
//! Secret.

mod k8s_common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_controller::auth::Authenticator;
use ambit_controller::auth::token_review::{ServiceAccountName, TokenReviewer};
use ambit_controller::ca::{CaMetrics, CaService, secret};
use ambit_controller::model::ClusterState;
use ambit_controller::push::Generation;
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Settings, translate};
use ambit_proto::api::CreateCertificateRequest;
use ambit_proto::api::certificate_service_server::CertificateService;
use ambit_proto::testing;
use ambit_proto::tls::authority::generate_csr;
use http::StatusCode;
use k8s_common::{AGENT, ApiServer, CALLER_PODS, ListReply, authenticated, not_found};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;
use tonic::Code;

/// The cluster: beside the callers' pods (`CALLER_PODS`), an agent pod not scheduled yet, a pod of
/// another account in the agent's namespace, the waypoint's Gateway, two workloads.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-new, namespace: ambit-system, uid: uid-new}
spec: {serviceAccountName: ambit-ztunnel, containers: [{name: a, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: ambit-system, uid: uid-debug}
spec: {nodeName: node-1, containers: [{name: a, image: x}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec: {gatewayClassName: ambit-waypoint}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, uid: uid-cart}
spec: {nodeName: node-1, serviceAccountName: cart, containers: [{name: a, image: x}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, uid: uid-db}
spec: {nodeName: node-2, serviceAccountName: db, containers: [{name: a, image: x}]}
status: {podIP: 10.244.2.5}
"#;

struct Cluster {
    ca: CaService,
    registry: Registry,
    /// The audiences of every TokenReview posted.
    asked: Arc<Mutex<Vec<Value>>>,
    _states: watch::Sender<ClusterState>,
    _generations: watch::Sender<Arc<Generation>>,
}

impl Cluster {
    /// A CA whose API server answers TokenReviews from `tokens` (token -> review status; an
    /// unknown token: not authenticated) and fails with 500 for the token "api-down".
    fn start(tokens: &[(&str, Value)], audiences: &[&str]) -> Cluster {
        let (server, client) = ApiServer::start();
        let asked = server.review_tokens(tokens);
        let mut state = ClusterState::new();
        for o in parse_file(Path::new("cluster.yaml"), &[CALLER_PODS, CLUSTER].concat()).objects {
            state.upsert(o);
        }
        let generation =
            Generation::empty().next(&translate(&state, &Settings::default()), Instant::now());
        let (generations, generations_rx) = watch::channel(Arc::new(generation));
        let (states, states_rx) = watch::channel(state);
        let node_agent = ServiceAccountName::from_username(AGENT).unwrap();
        let audiences = audiences.iter().map(|a| a.to_string()).collect();
        let reviewer = TokenReviewer::new(client, node_agent, audiences, states_rx);
        let mut registry = Registry::default();
        let ca = CaService::new(
            Arc::new(testing::ca()),
            Arc::new(reviewer) as Arc<dyn Authenticator>,
            generations_rx,
            Duration::from_secs(3600),
            CaMetrics::new(&mut registry),
        );
        Cluster {
            ca,
            registry,
            asked,
            _states: states,
            _generations: generations,
        }
    }

    /// Asks with `token` for `identity` ("ns/sa").
    async fn ask(&self, token: &str, identity: &str) -> Result<(), tonic::Status> {
        let (ns, sa) = identity.split_once('/').unwrap();
        let identity = testing::identity(ns, sa);
        let (csr, _key) = generate_csr(&identity).unwrap();
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr,
            identity: identity.to_string(),
            validity_seconds: 0,
        });
        let bearer = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", bearer);
        self.ca.create_certificate(request).await.map(drop)
    }

    async fn refused(&self, token: &str, identity: &str) -> tonic::Status {
        self.ask(token, identity).await.unwrap_err()
    }

    fn denied(&self, reason: &str) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).unwrap();
        out.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "ca_certificates_denied_total{{reason=\"{reason}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap_or("0")
            .to_string()
    }
}

#[tokio::test]
async fn the_node_agent_gets_the_identities_of_its_pods_node_and_a_waypoint_its_own() {
    let cluster = Cluster::start(
        &[
            (
                "agent",
                authenticated(AGENT, Some(("ztunnel-abc", "uid-agent"))),
            ),
            (
                "waypoint",
                authenticated("system:serviceaccount:shop:wp", Some(("wp-7f9", "uid-wp"))),
            ),
        ],
        &[],
    );
    // The agent's pod runs on node-1, where cart runs and db does not.
    cluster.ask("agent", "shop/cart").await.unwrap();
    let err = cluster.refused("agent", "shop/db").await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    cluster.ask("waypoint", "shop/wp").await.unwrap();
    let err = cluster.refused("waypoint", "shop/cart").await;
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert_eq!(cluster.denied("not_authorized"), "2");
    // No audiences configured: none asked for (the API server's default).
    assert!(cluster.asked.lock().unwrap().iter().all(Value::is_null));
}

#[tokio::test]
async fn every_refusal_has_a_clear_status_and_is_counted() {
    let cluster = Cluster::start(
        &[
            (
                "workload",
                authenticated(
                    "system:serviceaccount:shop:cart",
                    Some(("cart", "uid-cart")),
                ),
            ),
            ("user", authenticated("jane@example.com", None)),
            ("unbound", authenticated(AGENT, None)),
            (
                "gone-pod",
                authenticated(AGENT, Some(("ztunnel-old", "uid-old"))),
            ),
            (
                "replaced-pod",
                authenticated(AGENT, Some(("ztunnel-abc", "uid-previous"))),
            ),
            (
                "other-account",
                authenticated(AGENT, Some(("cart", "uid-cart"))),
            ),
            (
                "pending-pod",
                authenticated(AGENT, Some(("ztunnel-new", "uid-new"))),
            ),
            (
                "debug-pod",
                authenticated(AGENT, Some(("debug", "uid-debug"))),
            ),
        ],
        &[],
    );
    let cases = [
        (
            "expired",
            Code::Unauthenticated,
            "unauthenticated",
            "token has expired",
        ),
        (
            "workload",
            Code::PermissionDenied,
            "wrong_service_account",
            "system:serviceaccount:shop:cart may not",
        ),
        (
            "user",
            Code::PermissionDenied,
            "wrong_service_account",
            "jane@example.com",
        ),
        (
            "unbound",
            Code::PermissionDenied,
            "unbound_token",
            "not bound to a pod",
        ),
        (
            "gone-pod",
            Code::PermissionDenied,
            "unknown_pod",
            "ambit-system/ztunnel-old is not known",
        ),
        (
            "replaced-pod",
            Code::PermissionDenied,
            "pod_mismatch",
            "uid uid-previous",
        ),
        // A token bound to a pod of another namespace is not the agent's, whatever it claims.
        (
            "other-account",
            Code::PermissionDenied,
            "unknown_pod",
            "ambit-system/cart",
        ),
        (
            "pending-pod",
            Code::PermissionDenied,
            "unscheduled_pod",
            "not scheduled",
        ),
        (
            "debug-pod",
            Code::PermissionDenied,
            "pod_mismatch",
            "runs as default",
        ),
        (
            "api-down",
            Code::Unavailable,
            "token_review_failed",
            "TokenReview failed",
        ),
    ];
    for (token, code, reason, says) in cases {
        let err = cluster.refused(token, "shop/cart").await;
        assert_eq!(err.code(), code, "{token}: {err}");
        assert!(err.message().contains(says), "{token}: {}", err.message());
        assert_ne!(cluster.denied(reason), "0", "{token}: {reason} not counted");
    }
    assert_eq!(cluster.denied("wrong_service_account"), "2");
    let missing = tonic::Request::new(CreateCertificateRequest::default());
    let err = cluster.ca.create_certificate(missing).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn configured_audiences_are_asked_for_and_required() {
    let mut right = authenticated(AGENT, Some(("ztunnel-abc", "uid-agent")));
    right["audiences"] = json!(["ambit-ca"]);
    let mut wrong = right.clone();
    wrong["audiences"] = json!(["other"]);
    let cluster = Cluster::start(&[("right", right), ("wrong", wrong)], &["ambit-ca"]);
    cluster.ask("right", "shop/cart").await.unwrap();
    let err = cluster.refused("wrong", "shop/cart").await;
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert!(
        err.message().contains("audience ambit-ca"),
        "{}",
        err.message()
    );
    let asked = cluster.asked.lock().unwrap().clone();
    assert_eq!(asked, [json!(["ambit-ca"]), json!(["ambit-ca"])]);
}

const SECRET: &str = "/api/v1/namespaces/ambit-system/secrets/ambit-ca";
const SECRETS: &str = "/api/v1/namespaces/ambit-system/secrets";

#[tokio::test]
async fn the_generated_root_is_kept_in_a_secret_and_reused() {
    let (server, client) = ApiServer::start();
    server.reply_to_list(
        SECRET,
        ListReply::Now(StatusCode::NOT_FOUND, not_found("secrets")),
    );
    let created = Arc::new(Mutex::new(None));
    let keep = created.clone();
    server.on_create(SECRETS, move |secret| {
        *keep.lock().unwrap() = Some(secret.clone());
        (StatusCode::CREATED, secret)
    });
    let lifetime = Duration::from_secs(86400);
    let first = secret::load_or_create(client.clone(), "ambit-system", "cluster.local", lifetime)
        .await
        .unwrap();
    let stored = created
        .lock()
        .unwrap()
        .clone()
        .expect("the Secret was created");
    assert_eq!(stored["metadata"]["name"], "ambit-ca");
    let keys: Vec<&str> = stored["data"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["ca-cert.pem", "ca-key.pem", "root-cert.pem"]);

    // The next start reads it back: the same root.
    server.reply_to_list(SECRET, ListReply::Now(StatusCode::OK, stored.clone()));
    let again = secret::load_or_create(client.clone(), "ambit-system", "cluster.local", lifetime)
        .await
        .unwrap();
    assert_eq!(again.cert_pem(), first.cert_pem());

    // A replica that loses the race to create it uses the winner's.
    server.reply_to_list(
        SECRET,
        ListReply::Now(StatusCode::NOT_FOUND, not_found("secrets")),
    );
    server.on_create(SECRETS, |_| {
        let conflict = json!({"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "reason": "AlreadyExists", "code": 409, "message": "secrets \"ambit-ca\" already exists"});
        (StatusCode::CONFLICT, conflict)
    });
    server.reply_to_list(SECRET, ListReply::Now(StatusCode::OK, stored));
    let loser = secret::load_or_create(client, "ambit-system", "cluster.local", lifetime)
        .await
        .unwrap();
    assert_eq!(loser.cert_pem(), first.cert_pem());
}
