//! One request, by phase: admit -> authorize (`ambit_proto::authz`, the same evaluation the node
//! agents use) -> route -> filters and faults -> pick a backend -> forward with retries
//! (`forward`) -> mirror -> answer. Every failure becomes a response in `respond`; every request
//! ends in its `record`.

use std::sync::Arc;

use ambit_proto::api::{self, Action};
use ambit_proto::authz::{self, Attributes, Decision, HttpAttributes};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::Rng;
use tokio::time::Instant;
use tracing::{Instrument, debug, debug_span, info};

use super::body::{Body, Recorded, Replayable};
use super::forward::{self, Backend, Head};
use super::record::RequestRecord;
use super::respond::ProxyError;
use super::{ConnState, Context, Protocol, balance, filters, mirror};
use crate::state::{self, Endpoint, Target};
use ambit_proto::routes::{Match, RequestView, Rule};

/// Serves one request; never fails (errors are responses).
pub async fn handle(
    ctx: Arc<Context>,
    conn: Arc<ConnState>,
    req: Request<Incoming>,
) -> Response<Body> {
    let host = host_of(&req);
    // Debug level: the access log line carries all of it, and an enabled span per request
    // costs its formatting and an enter and exit at every poll.
    let span =
        debug_span!("request", method = %req.method(), host = %host, path = %req.uri().path());
    async move {
        let grpc = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/grpc"));
        let mut record = RequestRecord::new(
            ctx.metrics.clone(),
            &conn,
            req.method(),
            req.uri(),
            &host,
            grpc,
        );
        record.start_trace(ctx.tracer.as_ref(), req.headers());
        // The waypoint-wide limit: beyond it, fail fast instead of queueing without bound.
        let permit = ctx.requests.clone().try_acquire_owned();
        let result = match permit {
            Ok(_) => proxy(&ctx, &conn, req, &host, &mut record).await,
            Err(_) => Err(ProxyError::Overflow(
                "the waypoint's request limit is reached".into(),
            )),
        };
        let response = result.unwrap_or_else(|e| {
            debug!("{e}");
            record.reason = e.to_string();
            record.respond(e.status().as_u16(), e.flag());
            e.to_response()
        });
        let grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (parts, body) = response.into_parts();
        let body = Recorded::wrap(
            body,
            grpc_status,
            Box::new(move |sent, grpc| {
                drop(permit);
                record.finish(sent, grpc)
            }),
        );
        Response::from_parts(parts, body)
    }
    .instrument(span)
    .await
}

fn host_of<B>(req: &Request<B>) -> String {
    req.headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or(req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default()
        .to_string()
}

async fn proxy(
    ctx: &Arc<Context>,
    conn: &Arc<ConnState>,
    req: Request<Incoming>,
    host: &str,
    record: &mut RequestRecord,
) -> Result<Response<Body>, ProxyError> {
    let down = &conn.down;
    let state = ctx.config.current();
    let target = Target::resolve(&state, down.authority).ok_or_else(|| {
        ProxyError::NoRoute(format!(
            "{} is not a known service or workload",
            down.authority
        ))
    })?;
    let addressed = match &target {
        Target::Workload(w, _) => Some(w),
        Target::Service(..) => None,
    };
    record.destination(target.service(), addressed);

    // Authorize on what the client sent, before any rewrite.
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let policies = ctx.config.policies(&state, &target);
    let attrs = Attributes {
        source_identity: Some(&down.source_identity),
        source_ip: down.source_addr.ip(),
        destination_ip: down.authority.ip(),
        destination_port: down.authority.port(),
        http: Some(HttpAttributes {
            method: parts.method.as_str(),
            path,
            host,
            headers: &parts.headers,
        }),
    };
    audit(&policies, &attrs);
    let decision = authz::evaluate(policies.iter().map(|p| p.as_ref()), &attrs);
    if !decision.allowed() {
        return Err(ProxyError::Denied(decision.explain()));
    }

    // Route.
    let table = ctx.config.routes(&state);
    let view = RequestView {
        method: &parts.method,
        path,
        query,
        headers: &parts.headers,
    };
    let service = target
        .service()
        .map(|s| (s.spec.namespace.as_str(), s.spec.name.as_str()));
    let everything = Match::everything();
    let (rule, matched) = match table.lookup(service, target.port(), host, &view) {
        Some(found) => found,
        None if service.is_some_and(|s| table.has_routes(s, target.port())) => {
            return Err(ProxyError::NoRoute(format!(
                "no rule of the routes of {} matches",
                target
                    .service()
                    .map(|s| s.spec.hostname.as_str())
                    .unwrap_or("")
            )));
        }
        None => (default_rule(&target), &everything),
    };
    record.rule = Some(rule.clone());
    if let Some(r) = &rule.redirect {
        let response = filters::redirect(r, host, path, query, matched);
        record.respond(response.status().as_u16(), "");
        return Ok(response);
    }

    // Filters: headers, rewrite.
    // Routing is done with them: the upstream request takes the client's headers over.
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    for m in &rule.request_headers {
        filters::modify_headers(&mut headers, m);
    }
    // After the route's own header filters: the backend's parent is the waypoint's span.
    record.propagate_trace(&mut headers);
    let (mut up_path, mut up_host) = (path.to_string(), host.to_string());
    if let Some(rw) = &rule.rewrite {
        if let Some(p) = &rw.path {
            up_path = filters::rewrite_path(path, p, matched);
        }
        if !rw.hostname.is_empty() {
            up_host = rw.hostname.clone();
        }
    }
    let target_uri = filters::path_and_query(&up_path, query);
    let head = head(
        conn.protocol,
        parts.method.clone(),
        &up_host,
        &target_uri,
        headers,
    )?;

    // Faults: a delay, then an abort, each for its share of requests.
    let mut flags = "";
    if let Some(fault) = &rule.fault {
        if let Some(d) = fault.delay.as_ref().filter(|d| chance(d.percentage)) {
            tokio::time::sleep(std::time::Duration::from_millis(d.fixed_delay_ms)).await;
            flags = "DI";
        }
        if let Some(a) = fault.abort.as_ref().filter(|a| chance(a.percentage)) {
            let status = http::StatusCode::from_u16(a.http_status as u16)
                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
            return Err(ProxyError::FaultAbort(status));
        }
    }

    // Backend, admission, forwarding.
    let backend = pick_backend(ctx, &state, &target, &rule)?;
    let pool = backend
        .policy
        .as_ref()
        .and_then(|p| p.connection_pool.as_ref());
    let slot = balance::admit(&backend.state, pool).await?;
    let mut body = Replayable::new(body, ctx.settings.retry_buffer);
    record.request_bytes = body.received.clone();
    let deadline = rule.request_timeout.map(|t| Instant::now() + t);
    let (response, endpoint) = forward::forward(
        ctx,
        conn,
        &rule,
        &backend,
        &head,
        conn.protocol,
        &mut body,
        deadline,
        record,
    )
    .await?;
    record.destination(backend.service.as_ref(), Some(&endpoint.workload));
    for m in &rule.mirrors {
        if chance(if m.percent_set { m.percent } else { 100.0 }) {
            mirror::send(ctx, conn, &state, &target, m, &head, body.replay());
        }
    }

    let (mut rparts, rbody) = response.into_parts();
    strip_hop_by_hop(&mut rparts.headers);
    for m in &rule.response_headers {
        filters::modify_headers(&mut rparts.headers, m);
    }
    let rbody = small_body(&rparts, rbody, deadline).await?;
    record.respond(rparts.status.as_u16(), flags);
    record.slot = Some(slot);
    Ok(Response::from_parts(rparts, rbody))
}

/// Responses up to this size, with a known length, are read whole before they are answered.
const COALESCE: u64 = 16 * 1024;

/// A short response is already on its way when its head arrives. Streamed, its head and its
/// body would leave in two writes (two HTTP/2 frames, two TLS records, two syscalls), because
/// the head is answered before the body's frames reach us; read whole, they leave in one, which
/// was a quarter of the waypoint's writes. Long, unknown-length and gRPC responses stream.
async fn small_body(
    head: &http::response::Parts,
    body: Incoming,
    deadline: Option<Instant>,
) -> Result<Body, ProxyError> {
    let length = head
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let grpc = head
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc || length.is_none_or(|n| n > COALESCE) {
        return Ok(body.map_err(Into::into).boxed_unsync());
    }
    let collect = body.collect();
    let collected = match deadline {
        Some(at) => tokio::time::timeout_at(at, collect)
            .await
            .map_err(|_| ProxyError::Timeout("the response body did not arrive in time".into()))?,
        None => collect.await,
    }
    .map_err(|e| ProxyError::Reset(format!("reading the response body: {e}")))?;
    Ok(collected.map_err(|e| match e {}).boxed_unsync())
}

/// No route: straight to what was addressed.
fn default_rule(target: &Target) -> Arc<Rule> {
    Arc::new(match target {
        Target::Service(s, _) => Rule::to_service(&s.spec.namespace, &s.spec.hostname),
        Target::Workload(..) => Rule::default(),
    })
}

/// Weighted choice among the rule's backends, resolved to endpoints.
fn pick_backend(
    ctx: &Context,
    state: &ambit_proto::mesh::MeshState,
    target: &Target,
    rule: &Rule,
) -> Result<Backend, ProxyError> {
    // The default rule for a pod addressed directly: that pod, nothing else.
    if let Target::Workload(w, port) = target
        && rule.backends.is_empty()
        && rule.route.is_empty()
    {
        let addr = std::net::SocketAddr::new(ctx_addr(w)?, *port);
        return Ok(Backend {
            service: None,
            endpoints: vec![Endpoint {
                workload: w.clone(),
                addr,
            }],
            state: ctx.backends.service(&format!("workload/{}", w.spec.uid)),
            policy: None,
        });
    }
    let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return Err(ProxyError::NoBackend(rule.describe()));
    }
    let mut n = rand::rng().random_range(0..total);
    let chosen = rule
        .backends
        .iter()
        .find(|b| {
            let w = u64::from(b.weight);
            if n < w {
                true
            } else {
                n -= w;
                false
            }
        })
        .expect("weights add up");
    resolve(ctx, state, target, chosen)
}

fn ctx_addr(w: &ambit_proto::mesh::Workload) -> Result<std::net::IpAddr, ProxyError> {
    w.addresses.first().copied().ok_or_else(|| {
        ProxyError::NoHealthyUpstream(format!("{} has no address", w.display_name()))
    })
}

pub(super) fn resolve(
    ctx: &Context,
    state: &ambit_proto::mesh::MeshState,
    target: &Target,
    b: &api::BackendRef,
) -> Result<Backend, ProxyError> {
    let port = match u16::try_from(b.port) {
        Ok(0) | Err(_) => target.port(),
        Ok(p) => p,
    };
    let (service, endpoints) = state::endpoints(state, &b.namespace, &b.hostname, port)
        .ok_or_else(|| ProxyError::NoBackend(format!("service {} is unknown", b.hostname)))?;
    if endpoints.is_empty() {
        return Err(ProxyError::NoHealthyUpstream(format!(
            "service {} has no healthy endpoint for port {port}",
            b.hostname
        )));
    }
    Ok(Backend {
        state: ctx.backends.service(&format!(
            "{}/{}",
            service.spec.namespace, service.spec.hostname
        )),
        policy: ctx.config.backend_policy(state, &service),
        service: Some(service),
        endpoints,
    })
}

/// The upstream request line: origin-form plus Host for HTTP/1.1, absolute form (which becomes
/// `:authority`) for HTTP/2.
fn head(
    protocol: Protocol,
    method: http::Method,
    host: &str,
    target: &str,
    mut headers: HeaderMap,
) -> Result<Head, ProxyError> {
    let bad = |e: String| ProxyError::BadRequest(e);
    let (uri, version) = match protocol {
        Protocol::Http2 => {
            headers.remove(header::HOST);
            let authority = if host.is_empty() { "localhost" } else { host };
            let uri: Uri = format!("http://{authority}{target}")
                .parse()
                .map_err(|e| bad(format!("request target: {e}")))?;
            (uri, Version::HTTP_2)
        }
        _ => {
            if !host.is_empty() {
                let v = HeaderValue::from_str(host).map_err(|e| bad(format!("host: {e}")))?;
                headers.insert(header::HOST, v);
            }
            let uri: Uri = target
                .parse()
                .map_err(|e| bad(format!("request target: {e}")))?;
            (uri, Version::HTTP_11)
        }
    };
    Ok(Head {
        method,
        uri,
        version,
        headers,
    })
}

/// Connection-level headers belong to one hop; HTTP/2 forbids them outright.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    // `te: trailers` is the one TE value HTTP/2 allows, and gRPC needs it end to end.
    if headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::rng().random_range(0.0..100.0) < percent)
}

/// AUDIT policies never decide; a match is logged. Each is judged alone, by the same evaluator,
/// as if it were an ALLOW policy.
fn audit(policies: &[Arc<api::Authorization>], attrs: &Attributes<'_>) {
    for p in policies.iter().filter(|p| p.action == Action::Audit as i32) {
        let mut as_allow = api::Authorization::clone(p);
        as_allow.action = Action::Allow as i32;
        if let Decision::Allow { rule, .. } = authz::evaluate([&as_allow], attrs) {
            let http = attrs.http.as_ref();
            info!(
                policy = %format!("{}/{}", p.namespace, p.name),
                rule = rule + 1,
                method = http.map(|h| h.method).unwrap_or_default(),
                path = http.map(|h| h.path).unwrap_or_default(),
                "AUDIT policy matched"
            );
        }
    }
}
