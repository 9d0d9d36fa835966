//! A small OTLP/HTTP collector: accepts `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest`, keeps every span and the resource it came with, answers 200.
//! Anything else (wrong path or content type, a body that does not decode) is answered 400 and
//! remembered, so a test sees the waypoint sending something a real collector would refuse.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use ambit_waypoint::trace::otlp;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Default)]
pub struct Received {
    pub spans: Vec<otlp::Span>,
    pub resources: Vec<otlp::Resource>,
    pub errors: Vec<String>,
}

#[derive(Clone)]
pub struct Collector {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    arrived: Arc<Notify>,
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let collector = Collector {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            arrived: Arc::default(),
        };
        let c = collector.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let c = c.clone();
                        async move { Ok::<_, Infallible>(c.export(req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        collector
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn export(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let ok = req.method() == http::Method::POST
            && req.uri().path() == "/v1/traces"
            && req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .is_some_and(|v| v == "application/x-protobuf");
        let (parts, body) = req.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let decoded = otlp::ExportTraceServiceRequest::decode(body);
        let mut received = self.received.lock().unwrap();
        let answer = match (ok, decoded) {
            (true, Ok(request)) => {
                for rs in request.resource_spans {
                    received.resources.extend(rs.resource);
                    for ss in rs.scope_spans {
                        received.spans.extend(ss.spans);
                    }
                }
                let reply = otlp::ExportTraceServiceResponse::default().encode_to_vec();
                Response::new(Full::new(Bytes::from(reply)))
            }
            (_, decoded) => {
                received.errors.push(format!(
                    "{} {} {:?} decoded: {}",
                    parts.method,
                    parts.uri,
                    parts.headers.get(http::header::CONTENT_TYPE),
                    decoded.is_ok()
                ));
                let mut r = Response::new(Full::default());
                *r.status_mut() = StatusCode::BAD_REQUEST;
                r
            }
        };
        drop(received);
        self.arrived.notify_waiters();
        answer
    }

    /// Waits until `n` spans have arrived (the caller bounds the wait with `within`).
    pub async fn spans(&self, n: usize) -> Vec<otlp::Span> {
        loop {
            let arrived = self.arrived.notified();
            {
                let received = self.received.lock().unwrap();
                assert!(received.errors.is_empty(), "{:?}", received.errors);
                if received.spans.len() >= n {
                    return received.spans.clone();
                }
            }
            arrived.await;
        }
    }
}
