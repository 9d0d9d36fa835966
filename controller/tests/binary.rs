//! The `ambit-controller` binary end to end: standalone manifests in, config and certificates out
//! over TLS gRPC, admin endpoints, live reload, bad manifests, bad flags, and SIGTERM.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ambit_proto::api::certificate_service_client::CertificateServiceClient;
use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::{self, CreateCertificateRequest, DeltaDiscoveryRequest, type_url};
use ambit_proto::tls::TrustRoots;
use ambit_proto::tls::authority::generate_csr;
use ambit_proto::{Identity, grpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: cart, namespace: shop, labels: {app: cart}}
spec: {nodeName: node-1, serviceAccountName: cart, containers: [{name: a, image: x}]}
status: {podIP: 10.244.1.5}
"#;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

struct Controller {
    child: Child,
    grpc: SocketAddr,
    admin: SocketAddr,
    data: tempfile::TempDir,
    manifests: tempfile::TempDir,
}

impl Controller {
    fn start() -> Controller {
        Controller::start_with_admin(free_port())
    }

    /// With the admin server on `admin` (a port on 127.0.0.1; the same port on every address for
    /// an unspecified IP, reached through 127.0.0.1).
    fn start_with_admin(bind: SocketAddr) -> Controller {
        let manifests = tempfile::tempdir().unwrap();
        std::fs::write(manifests.path().join("mesh.yaml"), MANIFEST).unwrap();
        let data = tempfile::tempdir().unwrap();
        let grpc = free_port();
        let admin = SocketAddr::from(([127, 0, 0, 1], bind.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_ambit-controller"))
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--data-dir")
            .arg(data.path())
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--admin-addr")
            .arg(bind.to_string())
            .arg("--reload-interval")
            .arg("50ms")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        Controller {
            child,
            grpc,
            admin,
            data,
            manifests,
        }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path).await
    }

    async fn request(&self, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    async fn wait_ready(&self) {
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(self.admin).await.is_ok()
                && self.get("/ready").await.0 == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the controller never became ready");
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.data.path().join(rel)).unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("hung")
}

#[tokio::test]
async fn standalone_controller_serves_config_and_certificates_over_tls() {
    within(async {
        let c = Controller::start();
        c.wait_ready().await;
        let roots = TrustRoots::from_pem(&c.read("ca/root-cert.pem")).unwrap();
        let me: Identity = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller".parse().unwrap();
        let token = c.read("tokens/node-node-1.token");

        // A client expecting some other identity refuses the controller.
        let impostor: Identity = "spiffe://cluster.local/ns/ambit-system/sa/other".parse().unwrap();
        assert!(grpc::connect(c.grpc, &roots, &impostor).await.is_err());

        let channel = grpc::connect(c.grpc, &roots, &me).await.unwrap();

        // CA: node-1's agent obtains cart's identity.
        let cart: Identity = "spiffe://cluster.local/ns/shop/sa/cart".parse().unwrap();
        let (csr, _key) = generate_csr(&cart).unwrap();
        let mut req = tonic::Request::new(CreateCertificateRequest { csr, identity: cart.to_string(), validity_seconds: 0 });
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let chain = CertificateServiceClient::new(channel.clone()).create_certificate(req).await.unwrap().into_inner();
        assert!(!chain.cert_chain.is_empty());

        // Config: the snapshot, then a live change of the manifest.
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(DeltaDiscoveryRequest {
            node: Some(api::Node { id: "ztunnel~node-1".into(), role: api::NodeRole::NodeAgent as i32, node_name: "node-1".into(), ..Default::default() }),
            type_url: type_url::WORKLOAD.into(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        // Without the agent's token the stream is refused; with it, served.
        let anonymous = ConfigDiscoveryServiceClient::new(channel.clone()).delta_config(tokio_stream::empty()).await;
        assert_eq!(anonymous.unwrap_err().code(), tonic::Code::Unauthenticated);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        let mut stream = ConfigDiscoveryServiceClient::new(channel).delta_config(req).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.resources.len(), 1);
        tx.send(DeltaDiscoveryRequest { type_url: type_url::WORKLOAD.into(), response_nonce: first.nonce.clone(), ..Default::default() }).await.unwrap();

        std::fs::write(c.manifests.path().join("mesh.yaml"), MANIFEST.replace("10.244.1.5", "10.244.1.6")).unwrap();
        let update = stream.message().await.unwrap().unwrap();
        match &update.resources[0].kind {
            Some(api::resource::Kind::Workload(w)) => assert_eq!(w.addresses, ["10.244.1.6"]),
            other => panic!("{other:?}"),
        }
        tx.send(DeltaDiscoveryRequest { type_url: type_url::WORKLOAD.into(), response_nonce: update.nonce.clone(), ..Default::default() }).await.unwrap();

        // A bad manifest is reported in the dump; what was served stays.
        std::fs::write(c.manifests.path().join("bad.yaml"), "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {action: CUSTOM}\n").unwrap();
        let mut dump = String::new();
        for _ in 0..100 {
            dump = c.get("/debug/config_dump").await.1;
            if dump.contains("bad.yaml") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(dump.contains("bad.yaml document 0") && dump.contains("spec.action"), "{dump}");
        assert!(dump.contains("\"workloads\":1"), "{dump}");
        assert!(dump.contains("node-agent node-1"), "{dump}");

        let (status, metrics) = c.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(metrics.contains("ambit_controller_xds_connected_clients 1"), "{metrics}");
        assert!(metrics.contains("ambit_controller_ca_certificates_issued_total 1"), "{metrics}");
        assert!(metrics.contains("ambit_controller_xds_refused_total{reason=\"unauthenticated\"} 1"), "{metrics}");
    })
    .await
}

#[tokio::test]
async fn the_log_level_changes_only_through_an_admin_port_on_localhost() {
    within(async {
        let local = Controller::start();
        local.wait_ready().await;
        assert_eq!(local.request("POST", "/logging?level=debug").await.0, 200);
        assert_eq!(local.get("/logging").await.1, "debug\n");

        // On every address (as on Kubernetes, for the kubelet): probes and metrics, nothing that
        // changes the process.
        let open =
            Controller::start_with_admin(SocketAddr::from(([0, 0, 0, 0], free_port().port())));
        open.wait_ready().await;
        assert_eq!(open.get("/healthz/ready").await.0, 200);
        assert_eq!(open.get("/metrics").await.0, 200);
        assert_eq!(open.request("POST", "/logging?level=debug").await.0, 404);
    })
    .await
}

#[tokio::test]
async fn sigterm_stops_the_controller_cleanly() {
    within(async {
        let mut c = Controller::start();
        c.wait_ready().await;
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(c.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..100 {
            if let Some(code) = c.child.try_wait().unwrap() {
                assert!(code.success(), "exit status {code}");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the controller did not stop within 10 s of SIGTERM");
    })
    .await
}

#[test]
fn bad_flags_exit_64_listing_every_problem() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-controller"))
        .args(["--manifests", "/nonexistent", "--cert-ttl", "5s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a directory") && err.contains("--cert-ttl"),
        "{err}"
    );
    // A value clap cannot parse is a bad setting like any other.
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-controller"))
        .args(["--manifests", "/tmp", "--grpc-addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}
