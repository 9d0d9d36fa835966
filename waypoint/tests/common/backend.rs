//! Test backends: HTTP/1.1 and HTTP/2 servers on their own loopback addresses that echo what
//! they saw, and can be told to fail or wait.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_waypoint::proxy::{Protocol, detect};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::Mesh;

/// How a test backend answers.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Every n-th request (1-based: 2 fails the 2nd, 4th, ...) gets `fail_status`.
    pub fail_every: u64,
    pub fail_status: u16,
    /// Held before answering.
    pub delay: Duration,
    /// Held between the response's head (with its Content-Length) and its body.
    pub body_delay: Duration,
}

/// An HTTP backend on its own loopback address, speaking HTTP/1.1 and HTTP/2 (prior knowledge).
/// It answers 200 with `x-backend: <name>`, `x-seen-path` (path and query), and every request
/// header echoed as `x-req-<name>`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    /// The host of each request, as it arrived (Host, or the HTTP/2 authority).
    pub hosts: Arc<Mutex<Vec<String>>>,
}

impl Backend {
    pub async fn start(mesh: &Mesh, name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(SocketAddr::new(mesh.next_ip(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let hosts = Arc::new(Mutex::new(Vec::new()));
        let (counter, label, seen) = (requests.clone(), name.to_string(), hosts.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (counter, label, behaviour, seen) = (
                    counter.clone(),
                    label.clone(),
                    behaviour.clone(),
                    seen.clone(),
                );
                tokio::spawn(async move {
                    let Ok((protocol, io)) = detect::detect(tcp, Duration::from_secs(10)).await
                    else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                        let host = req
                            .headers()
                            .get(http::header::HOST)
                            .and_then(|h| h.to_str().ok())
                            .or(req.uri().authority().map(|a| a.as_str()))
                            .unwrap_or_default()
                            .to_string();
                        seen.lock().unwrap().push(host);
                        answer(label.clone(), behaviour.clone(), n, req)
                    });
                    let io = TokioIo::new(io);
                    let _ = match protocol {
                        Protocol::Http2 => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                        _ => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        Backend {
            name: name.into(),
            addr,
            requests,
            hosts,
        }
    }
}

async fn answer(
    name: String,
    behaviour: Behaviour,
    n: u64,
    req: Request<Incoming>,
) -> Result<Response<UnsyncBoxBody<Bytes, Infallible>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if !behaviour.delay.is_zero() {
        tokio::time::sleep(behaviour.delay).await;
    }
    let status = if behaviour.fail_every > 0 && n.is_multiple_of(behaviour.fail_every) {
        StatusCode::from_u16(behaviour.fail_status).unwrap()
    } else {
        StatusCode::OK
    };
    let mut builder = Response::builder()
        .status(status)
        .header("x-backend", &name)
        .header(
            "x-seen-path",
            parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or(""),
        );
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or(parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
        .to_string();
    builder = builder.header("x-seen-host", host);
    for (k, v) in &parts.headers {
        builder = builder.header(format!("x-req-{k}"), v);
    }
    if behaviour.body_delay.is_zero() {
        return Ok(builder.body(Full::new(body).boxed_unsync()).unwrap());
    }
    let length = body.len();
    let late = futures::stream::once(async move {
        tokio::time::sleep(behaviour.body_delay).await;
        Ok(Frame::data(body))
    });
    Ok(builder
        .header(http::header::CONTENT_LENGTH, length)
        .body(StreamBody::new(late).boxed_unsync())
        .unwrap())
}
