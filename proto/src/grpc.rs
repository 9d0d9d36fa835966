//! gRPC to and from the control plane over SPIFFE-verified TLS, and the bearer token every call
//! to it carries.
//!
//! tonic's own TLS checks DNS names; the controller is identified by its SPIFFE identity instead,
//! so both ends plug rustls in here with Ambit's verifier. The client is identified by its token
//! (a node agent's or a waypoint's), which the config stream and the CA both require.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

use crate::identity::Identity;
use crate::tls::{TrustRoots, control_plane_client_config};

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("invalid endpoint {0}: {1}")]
    Endpoint(String, tonic::transport::Error),
    #[error("connecting to {0}: {1}")]
    Connect(String, tonic::transport::Error),
}

/// The token file could not be made into `authorization` metadata.
#[derive(Debug, Clone, thiserror::Error)]
#[error("reading the token {}: {reason}", path.display())]
pub struct TokenError {
    pub path: PathBuf,
    pub reason: String,
}

/// Adds `authorization: Bearer <token>` from `token_file` to `request`. The file is read on every
/// call: Kubernetes rewrites projected tokens in place before they expire, so a token read once
/// at start would be refused an hour later.
pub fn authorize<T>(request: &mut tonic::Request<T>, token_file: &Path) -> Result<(), TokenError> {
    let failed = |reason: String| TokenError {
        path: token_file.to_path_buf(),
        reason,
    };
    let token = std::fs::read_to_string(token_file).map_err(|e| failed(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(failed("the file is empty".into()));
    }
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| failed("not valid header text".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// A channel to the controller at `addr`, which must prove `expected` with a chain to `roots`.
pub async fn connect(
    addr: SocketAddr,
    roots: &TrustRoots,
    expected: &Identity,
) -> Result<Channel, GrpcError> {
    let config = Arc::new(control_plane_client_config(roots, expected));
    let uri = format!("http://{addr}");
    let endpoint =
        Endpoint::from_shared(uri.clone()).map_err(|e| GrpcError::Endpoint(uri.clone(), e))?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let config = config.clone();
            async move {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| GrpcError::Connect(uri, e))
}

/// A TLS connection accepted for tonic.
pub struct TlsConnection(pub TlsStream<TcpStream>);

impl Connected for TlsConnection {
    type ConnectInfo = Option<SocketAddr>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.get_ref().0.peer_addr().ok()
    }
}

impl tokio::io::AsyncRead for TlsConnection {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// TLS connections accepted on `listener`, for `tonic::transport::Server::serve_with_incoming`.
/// Each handshake uses the newest config from `configs`, so the server certificate can rotate
/// without a restart. A failed handshake drops that connection only.
pub fn incoming(
    listener: TcpListener,
    configs: tokio::sync::watch::Receiver<Arc<rustls::ServerConfig>>,
) -> impl futures::Stream<Item = std::io::Result<TlsConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    debug!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = TlsAcceptor::from(configs.borrow().clone());
            let conn_tx = tx.clone();
            tokio::spawn(async move {
                let handshake =
                    tokio::time::timeout(crate::hbone::HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                match handshake.await {
                    Ok(Ok(tls)) => {
                        let _ = conn_tx.send(Ok(TlsConnection(tls))).await;
                    }
                    Ok(Err(e)) => debug!(%peer, "control-plane TLS handshake failed: {e}"),
                    Err(_) => debug!(%peer, "control-plane TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
