//! The API server's side of a pod port-forward, for the scripted server: the WebSocket upgrade
//! answered by a real HTTP/1.1 server (hyper, so the client gets a real upgraded connection),
//! then the kubelet's v4 channel protocol: each port's data and error channel opened with the
//! port number, data frames prefixed with channel 0. Port traffic goes to `backend`.

use futures::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::Empty;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Message, Role};

/// What a forwarded port reaches: called once per port-forward with the request's path (which
/// names the pod) and the pod's end of the stream; an error is what the kubelet reports on the
/// port's error channel when it cannot connect.
pub type Backend = std::sync::Arc<dyn Fn(&str, DuplexStream) -> Result<(), String> + Send + Sync>;

/// Answers the upgrade request `parts` (as the kube client sent it) for `port`.
pub async fn upgrade(
    parts: http::request::Parts,
    port: u16,
    backend: Backend,
) -> Response<kube::client::Body> {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let path = parts.uri.path().to_owned();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let (backend, path) = (backend.clone(), path.clone());
            async move { Ok::<_, std::convert::Infallible>(accept(req, port, path, backend)) }
        });
        hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .with_upgrades()
            .await
    });
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
        .await
        .expect("handshake with the in-test server");
    tokio::spawn(connection.with_upgrades());
    let response = sender
        .send_request(Request::from_parts(parts, Empty::<Bytes>::new()))
        .await
        .expect("the upgrade answer");
    // The parts keep hyper's pending upgrade, which the kube client takes over.
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, kube::client::Body::empty())
}

fn accept(
    req: Request<Incoming>,
    port: u16,
    path: String,
    backend: Backend,
) -> Response<Empty<Bytes>> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .expect("a WebSocket key")
        .as_bytes()
        .to_vec();
    tokio::spawn(async move {
        let upgraded = hyper::upgrade::on(req).await.expect("upgraded");
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        kubelet(ws, port, &path, backend).await;
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, derive_accept_key(&key))
        .header(header::SEC_WEBSOCKET_PROTOCOL, "v4.channel.k8s.io")
        .body(Empty::new())
        .unwrap()
}

/// Relays channel 0 of `ws` to and from the backend, as the kubelet relays a pod's port.
async fn kubelet<S>(ws: WebSocketStream<S>, port: u16, path: &str, backend: Backend)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let [lo, hi] = port.to_le_bytes();
    for channel in [0u8, 1] {
        sink.send(Message::binary(vec![channel, lo, hi]))
            .await
            .unwrap();
    }
    let (ours, pods) = tokio::io::duplex(64 * 1024);
    if let Err(message) = backend(path, pods) {
        let mut frame = vec![1];
        frame.extend_from_slice(message.as_bytes());
        let _ = sink.send(Message::binary(frame)).await;
        // The port is unusable; the connection stays until the client ends it.
        while let Some(Ok(message)) = stream.next().await {
            if message.is_close() {
                break;
            }
        }
        return;
    }
    let (mut from_pod, mut to_pod) = tokio::io::split(ours);
    let up = async move {
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Binary(data) if data.first() == Some(&0) && data.len() > 1 => {
                    to_pod.write_all(&data[1..]).await.unwrap();
                }
                m if m.is_close() => break,
                _ => {}
            }
        }
    };
    let down = async move {
        let mut buf = vec![0; 16 * 1024];
        loop {
            let n = from_pod.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut frame = vec![0];
            frame.extend_from_slice(&buf[..n]);
            if sink.send(Message::binary(frame)).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(up, down);
}
