//! A small mesh in one process, all of it real: a waypoint serving HBONE over mTLS, a node agent
//! (an HBONE server that dials what it is asked for, recording every tunnel), HTTP and gRPC
//! backends on their own loopback addresses (127.0.0.N), and clients that reach the waypoint
//! the way an agent does: HBONE with the client's certificate, the service VIP as authority and
//! the client's address in `forwarded`. Config goes in through the same handler the controller's
//! stream feeds.
#![allow(dead_code)]

use std::convert::Infallible;
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
use ambit_waypoint::proxy::{Context, OwnCertificate, Protocol, Settings, balance, detect};
use ambit_waypoint::state::WaypointConfig;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
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

/// How a test backend answers.
#[derive(Clone, Default)]
pub struct Behaviour {
    /// Every n-th request (1-based: 2 fails the 2nd, 4th, ...) gets `fail_status`.
    pub fail_every: u64,
    pub fail_status: u16,
    /// Held before answering.
    pub delay: Duration,
}

/// An HTTP backend on its own loopback address, speaking HTTP/1.1 and HTTP/2 (prior knowledge).
/// It answers 200 with `x-backend: <name>`, `x-seen-path` (path and query), and every request
/// header echoed as `x-req-<name>`.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
}

impl Backend {
    pub async fn start(mesh: &Mesh, name: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(SocketAddr::new(mesh.next_ip(), 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicU64::new(0));
        let (counter, label) = (requests.clone(), name.to_string());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (counter, label, behaviour) =
                    (counter.clone(), label.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let Ok((protocol, io)) = detect::detect(tcp, Duration::from_secs(10)).await
                    else {
                        return;
                    };
                    let service = service_fn(move |req: Request<Incoming>| {
                        let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
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
        }
    }
}

async fn answer(
    name: String,
    behaviour: Behaviour,
    n: u64,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
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
    Ok(builder.body(Full::new(body)).unwrap())
}

pub fn hostname(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

pub fn resource(name: &str, kind: Kind) -> api::Resource {
    api::Resource {
        name: name.into(),
        version: "1".into(),
        kind: Some(kind),
    }
}

/// A service at `vip:80` that uses the test waypoint.
pub fn service(name: &str, vip: &str) -> api::Resource {
    resource(
        &format!("{NS}/{name}"),
        Kind::Service(api::Service {
            name: name.into(),
            namespace: NS.into(),
            hostname: hostname(name),
            addresses: vec![vip.into()],
            ports: vec![api::Port {
                service_port: 80,
                target_port: 0,
            }],
            waypoint: Some(api::GatewayAddress {
                destination: Some(api::gateway_address::Destination::Hostname(
                    api::NamespacedHostname {
                        namespace: NS.into(),
                        hostname: hostname("waypoint"),
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        }),
    )
}

/// A captured pod speaking HBONE; `services` are (hostname, service port, target port).
pub fn workload(
    name: &str,
    ns: &str,
    sa: &str,
    ip: &str,
    services: &[(&str, u32, u16)],
) -> api::Resource {
    resource(
        &format!("cluster/core/Pod/{ns}/{name}"),
        Kind::Workload(api::Workload {
            uid: format!("cluster/core/Pod/{ns}/{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            addresses: vec![ip.into()],
            tunnel_protocol: api::TunnelProtocol::Hbone as i32,
            node_captured: true,
            workload_name: name.into(),
            services: services
                .iter()
                .map(|(host, port, target)| {
                    (
                        format!("{NS}/{host}"),
                        api::PortList {
                            ports: vec![api::Port {
                                service_port: *port,
                                target_port: u32::from(*target),
                            }],
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }),
    )
}

/// A backend reference to the service `name` with `weight`.
pub fn backend_ref(name: &str, weight: u32) -> api::BackendRef {
    api::BackendRef {
        namespace: NS.into(),
        hostname: hostname(name),
        port: 0,
        weight,
    }
}

/// An HTTPRoute on the service `parent` with `rules`.
pub fn route(name: &str, parent: &str, rules: Vec<api::RouteRule>) -> api::Route {
    api::Route {
        name: name.into(),
        namespace: NS.into(),
        parents: vec![api::ParentRef {
            kind: "Service".into(),
            namespace: NS.into(),
            name: parent.into(),
            port: 0,
        }],
        hostnames: Vec::new(),
        rules,
        creation_timestamp: 0,
    }
}

pub fn path_prefix(p: &str) -> api::RouteMatch {
    api::RouteMatch {
        path: Some(api::PathMatch {
            kind: Some(api::path_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}
