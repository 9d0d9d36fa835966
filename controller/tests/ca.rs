//! The CA service over real gRPC: who may obtain which identity, bad CSRs, plug-in CAs, persistence.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_controller::auth::{Caller, TokenFiles};
use ambit_controller::ca::{CaMetrics, CaService, store};
use ambit_controller::model::ClusterState;
use ambit_controller::push::Generation;
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Settings, translate};
use ambit_proto::Identity;
use ambit_proto::api::CreateCertificateRequest;
use ambit_proto::api::certificate_service_client::CertificateServiceClient;
use ambit_proto::api::certificate_service_server::CertificateServiceServer;
use ambit_proto::testing;
use ambit_proto::tls::authority::{CertificateAuthority, generate_csr};
use ambit_proto::tls::{TrustRoots, WorkloadCertificate};
use tokio::sync::watch;
use tonic::Code;

const PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop}
spec: {nodeName: node-1, serviceAccountName: cart, containers: [{name: a, image: x}]}
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop}
spec: {nodeName: node-2, serviceAccountName: db, containers: [{name: a, image: x}]}
status: {podIP: 10.244.2.5}
"#;

struct Ca {
    addr: SocketAddr,
    tokens: Arc<TokenFiles>,
    authority: Arc<CertificateAuthority>,
    registry: Arc<std::sync::Mutex<prometheus_client::registry::Registry>>,
    _generations: watch::Sender<Arc<Generation>>,
    _dir: tempfile::TempDir,
}

impl Ca {
    async fn start(authority: CertificateAuthority) -> Ca {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Arc::new(TokenFiles::open(dir.path().join("tokens")).unwrap());
        tokens
            .ensure(&[
                Caller::NodeAgent {
                    node: "node-1".into(),
                },
                Caller::NodeAgent {
                    node: "node-2".into(),
                },
                Caller::Waypoint {
                    namespace: "shop".into(),
                    name: "wp".into(),
                },
            ])
            .unwrap();
        let parsed = parse_file(Path::new("p.yaml"), PODS);
        let mut state = ClusterState::new();
        parsed
            .objects
            .into_iter()
            .for_each(|o| drop(state.upsert(o)));
        let generation =
            Generation::empty().next(&translate(&state, &Settings::default()), Instant::now());
        let (generations, rx) = watch::channel(Arc::new(generation));
        let mut registry = prometheus_client::registry::Registry::default();
        let authority = Arc::new(authority);
        let service = CaService::new(
            authority.clone(),
            tokens.clone(),
            rx,
            Duration::from_secs(3600),
            CaMetrics::new(&mut registry),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CertificateServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ca {
            addr,
            tokens,
            authority,
            registry: Arc::new(std::sync::Mutex::new(registry)),
            _generations: generations,
            _dir: dir,
        }
    }

    fn token(&self, caller: Caller) -> String {
        std::fs::read_to_string(self.tokens.path(&caller)).unwrap()
    }

    /// Asks as `caller` (None: no token) for `identity` with `csr`.
    async fn ask(
        &self,
        token: Option<&str>,
        identity: &str,
        csr: &str,
    ) -> Result<Vec<String>, tonic::Status> {
        let mut client = CertificateServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap();
        let mut req = tonic::Request::new(CreateCertificateRequest {
            csr: csr.to_string(),
            identity: identity.to_string(),
            validity_seconds: 0,
        });
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        client
            .create_certificate(req)
            .await
            .map(|r| r.into_inner().cert_chain)
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry.lock().unwrap())
            .unwrap();
        out
    }
}

fn node(n: &str) -> Caller {
    Caller::NodeAgent { node: n.into() }
}

/// A CSR for `id` and a check that what comes back is a usable certificate for it.
fn usable(id: &str, chain: &[String], key_pem: &str, roots: &TrustRoots) {
    let cert = WorkloadCertificate::from_pem(&chain.concat(), key_pem, roots.clone()).unwrap();
    assert_eq!(cert.identity().to_string(), id);
    let leaf = rustls::server::ParsedCertificate::try_from(&cert.chain()[0]).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &leaf,
        roots.store(),
        &cert.chain()[1..],
        rustls::pki_types::UnixTime::now(),
        ambit_proto::tls::provider()
            .signature_verification_algorithms
            .all,
    )
    .expect("issued chain verifies against the roots");
}

#[tokio::test]
async fn a_node_agent_gets_identities_of_its_own_workloads_only() {
    let ca = Ca::start(testing::ca()).await;
    let cart: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
    let (csr, key) = generate_csr(&cart).unwrap();
    let chain = ca
        .ask(Some(&ca.token(node("node-1"))), &cart.to_string(), &csr)
        .await
        .unwrap();
    usable(&cart.to_string(), &chain, &key, ca.authority.roots());

    // db runs on node-2: node-1 may not have it, node-2 may.
    let db: Identity = "spiffe://cluster.local/ns/shop/sa/db".parse().unwrap();
    let (csr, _) = generate_csr(&db).unwrap();
    let err = ca
        .ask(Some(&ca.token(node("node-1"))), &db.to_string(), &csr)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(
        ca.ask(Some(&ca.token(node("node-2"))), &db.to_string(), &csr)
            .await
            .is_ok()
    );

    // A waypoint gets its own identity and nothing else.
    let wp_token = ca.token(Caller::Waypoint {
        namespace: "shop".into(),
        name: "wp".into(),
    });
    let wp = "spiffe://cluster.local/ns/shop/sa/wp";
    let (csr, _) = generate_csr(&wp.parse().unwrap()).unwrap();
    assert!(ca.ask(Some(&wp_token), wp, &csr).await.is_ok());
    let (csr, _) = generate_csr(&cart).unwrap();
    assert_eq!(
        ca.ask(Some(&wp_token), &cart.to_string(), &csr)
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );

    let m = ca.metrics();
    assert!(m.contains("ca_certificates_issued_total 3"), "{m}");
    assert!(
        m.contains("ca_certificates_denied_total{reason=\"not_authorized\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn callers_without_a_valid_token_are_refused() {
    let ca = Ca::start(testing::ca()).await;
    let id = "spiffe://cluster.local/ns/shop/sa/cart";
    let (csr, _) = generate_csr(&id.parse().unwrap()).unwrap();
    for token in [None, Some("not-a-token"), Some("")] {
        let err = ca.ask(token, id, &csr).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err}");
    }
}

#[tokio::test]
async fn bad_csrs_and_identities_get_clear_errors() {
    let ca = Ca::start(testing::ca()).await;
    let token = ca.token(node("node-1"));
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let (good_csr, _) = generate_csr(&cart.parse().unwrap()).unwrap();

    // A CSR whose signature does not match its key ("wrong key").
    let mut der = pem::parse(&good_csr).unwrap().into_contents();
    let last = der.len() - 1;
    der[last] ^= 0xff;
    let tampered = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
    // A valid CSR for another identity than the one asked for.
    let (other_csr, _) =
        generate_csr(&"spiffe://cluster.local/ns/shop/sa/admin".parse().unwrap()).unwrap();

    for (identity, csr, code, says) in [
        (cart, "garbage", Code::InvalidArgument, "malformed CSR"),
        (
            cart,
            tampered.as_str(),
            Code::InvalidArgument,
            "malformed CSR",
        ),
        (
            cart,
            other_csr.as_str(),
            Code::InvalidArgument,
            "exactly one SAN",
        ),
        (
            "spiffe://cluster.local/ns/shop",
            good_csr.as_str(),
            Code::InvalidArgument,
            "spiffe://",
        ),
        (
            "not an identity",
            good_csr.as_str(),
            Code::InvalidArgument,
            "spiffe://",
        ),
    ] {
        let err = ca.ask(Some(&token), identity, csr).await.unwrap_err();
        assert_eq!(err.code(), code, "{identity} / {csr:.20}: {err}");
        assert!(err.message().contains(says), "{}", err.message());
    }
    // The service is still fine afterwards.
    assert!(ca.ask(Some(&token), cart, &good_csr).await.is_ok());
}

#[tokio::test]
async fn a_plug_in_intermediate_ca_issues_chains_that_verify_against_the_plug_in_root() {
    let root = testing::ca();
    // An intermediate CA signed by the root, laid out as Istio's plug-in secret.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "intermediate");
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let inter = root.sign_params(params, &key).unwrap();
    let inter_pem = pem::encode(&pem::Pem::new("CERTIFICATE", inter.to_vec()));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca-cert.pem"), &inter_pem).unwrap();
    std::fs::write(dir.path().join("ca-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(
        dir.path().join("cert-chain.pem"),
        [inter_pem.clone(), root.cert_pem()].concat(),
    )
    .unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), root.cert_pem()).unwrap();

    let authority =
        store::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    let ca = Ca::start(authority).await;
    let cart = "spiffe://cluster.local/ns/shop/sa/cart";
    let (csr, key_pem) = generate_csr(&cart.parse().unwrap()).unwrap();
    let chain = ca
        .ask(Some(&ca.token(node("node-1"))), cart, &csr)
        .await
        .unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    // Verified against the plug-in root alone.
    usable(cart, &chain, &key_pem, root.roots());

    // A plug-in whose chain does not lead to root-cert.pem is refused at start.
    std::fs::write(dir.path().join("root-cert.pem"), testing::ca().cert_pem()).unwrap();
    let err = store::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(3600))
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("does not lead to root-cert.pem"),
        "{err}"
    );
}

#[test]
fn a_generated_root_is_persisted_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let first =
        store::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    let again =
        store::load_or_generate(dir.path(), "cluster.local", Duration::from_secs(3600)).unwrap();
    assert_eq!(first.cert_pem(), again.cert_pem());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the CA key must not be readable by others");
}
