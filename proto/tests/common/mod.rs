//! Shared harness for the HBONE tests: real TCP on loopback, real TLS, real HTTP/2.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_proto::Identity;
use ambit_proto::drain;
use ambit_proto::hbone::{
    Client, ClientSettings, ConnectRequest, Handler, InboundRequest, IncomingTunnel, Server,
    ServerSettings,
};
use ambit_proto::testing::DialAuthority;
use ambit_proto::tls::WorkloadCertificate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A CA and two certificates from it: a server `backend/server` and a client `frontend/client`.
pub struct Pair {
    pub ca: ambit_proto::tls::authority::CertificateAuthority,
    pub server: Arc<WorkloadCertificate>,
    pub source: Arc<WorkloadCertificate>,
}

impl Pair {
    pub fn new() -> Self {
        let ca = ambit_proto::testing::ca();
        let server = ambit_proto::testing::cert(&ca, "backend", "server");
        let source = ambit_proto::testing::cert(&ca, "frontend", "client");
        Pair { ca, server, source }
    }
}

/// Fails the test instead of hanging it; not a performance assertion.
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("test did not finish in 120 s: something hangs")
}

/// An HBONE server on loopback presenting `cert`, handing tunnels to `handler`.
pub async fn serve<H: Handler>(
    cert: &WorkloadCertificate,
    handler: H,
) -> (SocketAddr, drain::Trigger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Arc::new(cert.server_config().unwrap());
    let server = Server::new(listener, config, handler, ServerSettings::default());
    let addr = server.local_addr().unwrap();
    let (trigger, watch) = drain::channel();
    tokio::spawn(server.run(watch));
    (addr, trigger)
}

/// A TCP server that echoes every connection until the client half-closes, then closes.
pub async fn echo_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

pub fn client() -> Client {
    Client::new(ClientSettings::default())
}

pub fn request(
    source: &Arc<WorkloadCertificate>,
    expect: &Identity,
    hbone: SocketAddr,
    authority: SocketAddr,
) -> ConnectRequest {
    ConnectRequest {
        source: source.clone(),
        destination_identities: vec![expect.clone()],
        hbone_address: hbone,
        source_address: None,
        authority,
        forwarded_for: None,
        headers: Vec::new(),
    }
}

/// Dials the authority like [`DialAuthority`] and records every request it was handed.
#[derive(Clone, Default)]
pub struct Recorder {
    pub seen: Arc<Mutex<Vec<InboundRequest>>>,
}

impl Handler for Recorder {
    async fn handle(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        self.seen.lock().unwrap().push(req.clone());
        DialAuthority::default().handle(req, tunnel).await;
    }
}

/// Writes `msg`, half-closes, and returns everything read back until EOF.
pub async fn exchange(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
    msg: &[u8],
) -> Vec<u8> {
    stream.write_all(msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    out
}
