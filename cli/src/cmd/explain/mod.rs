//! `ambit explain <src-pod> <destination>[:port]`: the path one connection takes and every
//! decision on it, in words; through a waypoint, what it does with one HTTP request (`--method`,
//! `--path`, `--header`; GET / by default).
//!
//! It decides nothing itself. The path is the node agent's own `route::outbound`; an agent's
//! decision is `MeshState::authorize` (that is, `ambit_proto::authz::evaluate`) over the policies
//! the agent would hold; a waypoint's is the waypoint's own policy selection
//! (`ambit_waypoint::state`), the same `authz::evaluate` with the request's attributes, and its
//! route table (`ambit_proto::routes`); all on the mesh the controller's translation produces.
//! What it adds is the part of the path no proxy sees (is the source captured? does kube-proxy
//! pick the endpoint?) and the attributes each proxy would evaluate with.
//!
//! - [`placement`]: where pods are, from the lab's state or a cluster's Pod objects;
//! - `path`: the node agents' part (capture, routing, L4 policy);
//! - `waypoint`: the waypoint's part (L7 policy, the HTTPRoute rule, backends).

mod path;
pub mod placement;
mod waypoint;

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::mesh::MeshView;
use path::Explainer;
pub use placement::{Placement, PodPlace};

/// How the connection (or, through a waypoint, the request) ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It reaches the destination.
    Allowed,
    /// An agent refuses it (policy, STRICT mTLS, no endpoint).
    Denied,
    /// The waypoint answers the request itself with this status: 403 (L7 policy), 404 (no
    /// route matches), 500/503 (no backend, no endpoint), a fault's status, a redirect.
    WaypointAnswers(u16),
    /// The waypoint forwards the request to a backend: the services and their shares of the
    /// traffic ("demo/echo-v1 (90%)").
    WaypointForwards(Vec<String>),
    /// A waypoint decides, and which one could not be told (its Gateway is unknown).
    AtWaypoint,
    /// Endpoints of one service differ.
    DependsOnEndpoint,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

/// The HTTP request a waypoint is asked about. Only waypoints look at it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Without the query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            method: Method::GET,
            path: "/".into(),
            query: None,
            headers: HeaderMap::new(),
        }
    }
}

impl Request {
    /// From `--method`, `--path` (with an optional `?query`) and `--header name=value`s.
    pub fn new(method: &str, path: &str, headers: &[String]) -> Result<Request, String> {
        let method = Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| format!("--method {method:?} is not an HTTP method"))?;
        if !path.starts_with('/') {
            return Err(format!("--path {path:?} must start with /"));
        }
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        let mut map = HeaderMap::new();
        for header in headers {
            let (name, value) = header
                .split_once('=')
                .or_else(|| header.split_once(':'))
                .ok_or_else(|| format!("--header {header:?}: write it as name=value"))?;
            let name = HeaderName::try_from(name.trim())
                .map_err(|_| format!("--header {header:?}: {name:?} is not a header name"))?;
            let value = HeaderValue::try_from(value.trim())
                .map_err(|_| format!("--header {header:?}: not a valid header value"))?;
            map.append(name, value);
        }
        Ok(Request {
            method,
            path,
            query,
            headers: map,
        })
    }

    /// The Host the waypoint sees: a `host` header if given, else the destination as written.
    fn host<'a>(&'a self, written: &'a str) -> &'a str {
        self.headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(written)
    }

    /// "GET /path?query", for sentences.
    fn describe(&self) -> String {
        match &self.query {
            Some(q) => format!("{} {}?{q}", self.method, self.path),
            None => format!("{} {}", self.method, self.path),
        }
    }
}

/// Explains a connection from pod `src` to `dst` (a pod, a service name, or an IP, each with an
/// optional `:port`), and through a waypoint the fate of `request`.
pub fn explain(
    pods: &Placement,
    mesh: &MeshView,
    src: &str,
    dst: &str,
    request: &Request,
) -> Result<Explanation, String> {
    let source = pods.find(src)?;
    let (target, label) = resolve(pods, mesh, source, dst)?;
    let mut out = Explainer {
        mesh,
        request,
        host: request.host(dst),
        lines: vec![format!(
            "{}/{} ({} on {}) -> {label}",
            source.namespace, source.name, source.ip, source.node
        )],
    };
    let verdict = out.path(source, target);
    let summary = match &verdict {
        Verdict::Allowed => "ALLOWED: the connection reaches the destination.".to_owned(),
        Verdict::Denied => "DENIED: the client sees the connection closed or refused.".to_owned(),
        Verdict::WaypointAnswers(status @ (403 | 404 | 500 | 503)) => format!(
            "DENIED: the waypoint answers {} to {}; no backend sees the request.",
            status_text(*status),
            request.describe()
        ),
        Verdict::WaypointAnswers(status) => format!(
            "ANSWERED BY THE WAYPOINT: the waypoint answers {} to {}; no backend sees the \
             request.",
            status_text(*status),
            request.describe()
        ),
        Verdict::WaypointForwards(backends) => format!(
            "ALLOWED: the waypoint forwards {} to {}; the response is the backend's.",
            request.describe(),
            backends.join(" or ")
        ),
        Verdict::AtWaypoint => {
            "DECIDED AT THE WAYPOINT: L7 policy and routing apply there.".to_owned()
        }
        Verdict::DependsOnEndpoint => "DEPENDS ON THE ENDPOINT picked (see each above).".to_owned(),
    };
    out.lines.push(String::new());
    out.lines.push(format!("Verdict: {summary}"));
    Ok(Explanation {
        lines: out.lines,
        verdict,
    })
}

/// "403 Forbidden".
fn status_text(status: u16) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    format!("{status} {reason}").trim_end().to_owned()
}

/// The destination address, and how to name it.
fn resolve(
    pods: &Placement,
    mesh: &MeshView,
    source: &PodPlace,
    dst: &str,
) -> Result<(SocketAddr, String), String> {
    let (host, port) = match dst.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad port in {dst:?}"))?;
            (host, Some(port))
        }
        _ => (dst, None),
    };
    let need_port = |what: &str| format!("give the port: `{what}:<port>`");
    if let Ok(ip) = host.parse::<IpAddr>() {
        let port = port.ok_or_else(|| need_port(host))?;
        return Ok((SocketAddr::new(ip, port), format!("{ip}:{port}")));
    }
    if let Ok(pod) = pods.find(host) {
        let port = port.ok_or_else(|| need_port(host))?;
        let label = format!("pod {}/{} ({}:{port})", pod.namespace, pod.name, pod.ip);
        return Ok((SocketAddr::new(pod.ip, port), label));
    }
    // Service names as a pod of the source's namespace would write them.
    let mut parts = host.splitn(3, '.');
    let name = parts.next().unwrap_or_default();
    let namespace = parts.next().unwrap_or(&source.namespace);
    let service = mesh
        .state
        .services
        .values()
        .find(|s| s.spec.name == name && s.spec.namespace == namespace)
        .ok_or_else(|| {
            format!(
                "{host:?} is no pod, service or IP address {} knows (`ambit get pods`, `ambit \
                 get services`)",
                pods.place()
            )
        })?;
    let vip = *service
        .vips
        .first()
        .ok_or_else(|| format!("service {namespace}/{name} has no VIP"))?;
    let port = match port {
        Some(p) => p,
        None => match service.spec.ports.as_slice() {
            [only] => u16::try_from(only.service_port).map_err(|_| "bad service port")?,
            _ => return Err(need_port(host)),
        },
    };
    let label = format!("service {namespace}/{name} ({vip}:{port})");
    Ok((SocketAddr::new(vip, port), label))
}

/// One verdict for several endpoints: theirs if they agree.
fn combine(verdicts: Vec<Verdict>) -> Verdict {
    match verdicts.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v == first) => first.clone(),
        Some(_) => Verdict::DependsOnEndpoint,
        None => Verdict::Denied,
    }
}

#[cfg(test)]
mod tests;
