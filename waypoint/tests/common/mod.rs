//! A small mesh in one process, all of it real: a waypoint serving HBONE over mTLS, a node agent
//! (an HBONE server that dials what it is asked for, recording every tunnel), HTTP and gRPC
//! backends on their own loopback addresses (127.0.0.N), and clients that reach the waypoint
//! the way an agent does: HBONE with the client's certificate, the service VIP as authority and
//! the client's address in `forwarded`. Config goes in through the same handler the controller's
//! stream feeds.
#![allow(dead_code)]

mod backend;
pub mod collector;
mod resources;

pub use backend::*;
pub use resources::*;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_proto::api::{self, resource::Kind, type_url};
use ambit_proto::certs::Issued;
use ambit_proto::hbone::{
    self, ClientSettings, ConnectRequest, Handler, InboundRequest, IncomingTunnel, ServerSettings,
};
use ambit_proto::mesh::Store;
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use ambit_proto::testing::{self, DialAuthority};
use ambit_proto::tls::WorkloadCertificate;
use ambit_proto::xds::ConfigHandler;
use ambit_proto::{Identity, drain};
use ambit_waypoint::metrics::Metrics;
use ambit_waypoint::proxy::inbound::Inbound;
use ambit_waypoint::proxy::{Context, OwnCertificate, Protocol, Settings, balance};
use ambit_waypoint::state::WaypointConfig;
use ambit_waypoint::trace::{ExporterHandle, TraceSettings, Tracer};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

pub const NS: &str = "shop";
pub const CLIENT_IP: &str = "10.1.0.9";

/// Fails the test instead of hanging it; an upper bound, not a performance assertion.
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .expect("test did not finish in 120 s: something hangs")
}

/// The node agent's side: records each tunnel, then dials its authority.
#[derive(Clone, Default)]
pub struct Agent {
    pub seen: Arc<Mutex<Vec<InboundRequest>>>,
}

impl Handler for Agent {
    async fn handle(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        self.seen.lock().unwrap().push(req.clone());
        DialAuthority::default().handle(req, tunnel).await;
    }
}

pub struct Mesh {
    pub waypoint: SocketAddr,
    pub waypoint_identity: Identity,
    pub store: Arc<WaypointConfig>,
    pub registry: Arc<Mutex<Registry>>,
    pub agent: Agent,
    pub client_cert: Arc<WorkloadCertificate>,
    pub client: hbone::Client,
    next_ip: AtomicU64,
    exporter: Mutex<Option<ExporterHandle>>,
    _triggers: Vec<drain::Trigger>,
}

fn issued(cert: Arc<WorkloadCertificate>) -> Issued {
    Issued {
        server_config: Arc::new(cert.server_config().unwrap()),
        cert,
    }
}

impl Mesh {
    pub async fn start() -> Mesh {
        Mesh::start_with(None).await
    }

    /// A mesh whose waypoint exports traces as `--otlp-endpoint` would make it.
    pub async fn start_with(tracing: Option<TraceSettings>) -> Mesh {
        let ca = testing::ca();
        let waypoint_cert = testing::cert(&ca, NS, "waypoint");
        let backend_cert = testing::cert(&ca, NS, "backend");
        let client_cert = testing::cert(&ca, "frontend", "client");

        // The agent listens on every loopback address, one port: each backend's "node".
        let agent = Agent::default();
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let agent_port = listener.local_addr().unwrap().port();
        let agent_server = hbone::Server::new(
            listener,
            Arc::new(backend_cert.server_config().unwrap()),
            agent.clone(),
            ServerSettings::default(),
        );
        let (agent_trigger, agent_watch) = drain::channel();
        tokio::spawn(agent_server.run(agent_watch));

        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let (tracer, exporter) = match tracing {
            Some(settings) => {
                let (tracer, exporter) = Tracer::start(settings, metrics.clone());
                (Some(tracer), Some(exporter))
            }
            None => (None, None),
        };
        let store = WaypointConfig::new(
            Store::new(testing::TRUST_DOMAIN),
            (NS.into(), "waypoint".into()),
        );
        let ctx = Arc::new(Context {
            config: store.clone(),
            certificate: OwnCertificate::Fixed(issued(waypoint_cert.clone())),
            hbone: hbone::Client::new(ClientSettings::default()),
            dialer: Dialer::new(),
            metrics,
            backends: balance::Backends::default(),
            settings: Settings {
                upstream_hbone_port: agent_port,
                detect_timeout: Duration::from_secs(1),
                retry_buffer: 64 * 1024,
                tcp_timeouts: Timeouts {
                    idle: Duration::from_secs(3600),
                    half_close: Duration::from_secs(300),
                },
            },
            requests: Arc::new(Semaphore::new(10_000)),
            tracer,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let waypoint = listener.local_addr().unwrap();
        let (trigger, watch) = drain::channel();
        let server = hbone::Server::new(
            listener,
            ctx.certificate.clone(),
            Inbound {
                ctx: ctx.clone(),
                drain: watch.clone(),
            },
            ServerSettings::default(),
        );
        tokio::spawn(server.run(watch));

        let mesh = Mesh {
            waypoint,
            waypoint_identity: waypoint_cert.identity().clone(),
            store,
            registry: Arc::new(Mutex::new(registry)),
            agent,
            client_cert,
            client: hbone::Client::new(ClientSettings::default()),
            next_ip: AtomicU64::new(2),
            exporter: Mutex::new(exporter),
            _triggers: vec![trigger, agent_trigger],
        };
        mesh.apply(
            type_url::WORKLOAD,
            vec![workload("client", "frontend", "client", CLIENT_IP, &[])],
        );
        mesh
    }

    /// Applies config as the controller's stream would; panics on a NACK.
    pub fn apply(&self, type_url: &str, resources: Vec<api::Resource>) {
        self.store
            .apply(type_url, resources, Vec::new())
            .expect("config accepted");
    }

    /// A fresh loopback address for a backend.
    pub fn next_ip(&self) -> IpAddr {
        let n = self.next_ip.fetch_add(1, Ordering::Relaxed);
        format!("127.0.0.{n}").parse().unwrap()
    }

    /// A service `name` at `vip:80` served by this waypoint, and a workload per backend.
    pub fn service(&self, name: &str, vip: &str, backends: &[&Backend]) {
        self.apply(type_url::SERVICE, vec![service(name, vip)]);
        let host = hostname(name);
        let workloads = backends
            .iter()
            .map(|b| {
                workload(
                    &b.name,
                    NS,
                    "backend",
                    &b.addr.ip().to_string(),
                    &[(&host, 80, b.addr.port())],
                )
            })
            .collect();
        self.apply(type_url::WORKLOAD, workloads);
    }

    pub fn route(&self, route: api::Route) {
        self.apply(
            type_url::ROUTE,
            vec![resource(
                &format!("{}/{}", route.namespace, route.name),
                Kind::Route(route),
            )],
        );
    }

    /// The tunnel the client's node agent opens to the waypoint for `authority`.
    pub fn connect_request(&self, authority: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.client_cert.clone(),
            destination_identities: vec![self.waypoint_identity.clone()],
            hbone_address: self.waypoint,
            source_address: None,
            authority,
            forwarded_for: Some(SocketAddr::new(CLIENT_IP.parse().unwrap(), 40000)),
            headers: Vec::new(),
        }
    }

    pub async fn tunnel(&self, authority: SocketAddr) -> hbone::H2Stream {
        self.client
            .connect(self.connect_request(authority))
            .await
            .expect("tunnel to the waypoint")
    }

    /// An HTTP client through the waypoint to `vip:80`.
    pub async fn http(&self, vip: &str, protocol: Protocol) -> HttpClient {
        let tunnel = self.tunnel(SocketAddr::new(vip.parse().unwrap(), 80)).await;
        let io = TokioIo::new(tunnel);
        match protocol {
            Protocol::Http2 => {
                let (sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .unwrap();
                tokio::spawn(conn);
                HttpClient::Http2(sender)
            }
            _ => {
                let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                HttpClient::Http1(sender)
            }
        }
    }

    /// Stops the trace exporter the way the waypoint does on shutdown: every queued span sent.
    pub async fn flush_traces(&self) {
        let exporter = self.exporter.lock().unwrap().take();
        if let Some(exporter) = exporter {
            exporter.shutdown(Duration::from_secs(30)).await;
        }
    }

    pub fn metrics(&self) -> String {
        ambit_proto::admin::encode_metrics(&self.registry.lock().unwrap())
            .unwrap()
            .1
    }
}

pub enum HttpClient {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// A response, read to the end.
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

impl HttpClient {
    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        let response = match self {
            HttpClient::Http1(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
            HttpClient::Http2(s) => {
                let mut req = req;
                // HTTP/2 carries the host as :authority.
                let host = req
                    .headers_mut()
                    .remove(http::header::HOST)
                    .map(|h| h.to_str().unwrap().to_string())
                    .unwrap_or_else(|| "svc.test".into());
                let pq = req.uri().path_and_query().unwrap().as_str().to_string();
                *req.uri_mut() = format!("http://{host}{pq}").parse().unwrap();
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        };
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(get(path).body(Full::default()).unwrap()).await
    }
}

/// A GET with a Host header, to be finished with headers and a body.
pub fn get(path: &str) -> http::request::Builder {
    Request::builder()
        .uri(path)
        .header(http::header::HOST, "svc.test")
}
