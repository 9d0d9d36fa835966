//! Attempts: pick an endpoint, send, judge the outcome, and retry when the rule allows it and it
//! is safe, with exponential back-off and full jitter, within the per-try and request timeouts.
//!
//! Safety rules for retrying:
//! - nothing was sent (connect failure, the destination agent refused the tunnel, a pooled
//!   connection closed before the request went out): always safe;
//! - the backend answered with a status the rule retries: safe when the body can be replayed
//!   (the backend told us it failed);
//! - the connection broke or the per-try timeout hit after the request went out: the backend may
//!   have acted on it, so only idempotent methods with a replayable body are retried.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ambit_proto::api::{self, LoadBalancer};
use ambit_proto::mesh::Service;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;
use rand::Rng;
use tokio::time::Instant;
use tracing::debug;

use super::balance::{self, Outcome, ServiceState};
use super::body::{Body, Replayable};
use super::record::RequestRecord;
use super::respond::ProxyError;
use super::upstream::{self, SendError};
use super::{ConnState, Context, Protocol};
use crate::state::Endpoint;
use ambit_proto::routes::Rule;

/// The request as it goes upstream, rebuilt for every attempt.
#[derive(Clone)]
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
}

impl Head {
    pub fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Where a request goes: the service and its endpoints, and the policy protecting them.
pub struct Backend {
    pub service: Option<Arc<Service>>,
    pub endpoints: Vec<Endpoint>,
    pub state: Arc<ServiceState>,
    pub policy: Option<Arc<api::BackendPolicy>>,
}

impl Backend {
    fn load_balancer(&self) -> LoadBalancer {
        self.policy
            .as_ref()
            .and_then(|p| LoadBalancer::try_from(p.load_balancer).ok())
            .unwrap_or(LoadBalancer::RoundRobin)
    }
}

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Full jitter over an exponential back-off capped at 10x the base (Envoy's shape).
fn backoff(base: Duration, retry: u32) -> Duration {
    let cap = base * 10;
    let ceiling = base.saturating_mul(1 << retry.min(10)).min(cap);
    ceiling.mul_f64(rand::rng().random_range(0.0..1.0))
}

#[allow(clippy::too_many_arguments)]
pub async fn forward(
    ctx: &Context,
    conn: &ConnState,
    rule: &Rule,
    backend: &Backend,
    head: &Head,
    protocol: Protocol,
    body: &mut Replayable,
    deadline: Option<Instant>,
    record: &mut RequestRecord,
) -> Result<(Response<Incoming>, Endpoint), ProxyError> {
    let retry = rule.retry.as_ref();
    let attempts = 1 + retry.map_or(0, |r| r.attempts);
    let outlier = backend
        .policy
        .as_ref()
        .and_then(|p| p.outlier_detection.as_ref());
    let pool = backend
        .policy
        .as_ref()
        .and_then(|p| p.connection_pool.as_ref());
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last = ProxyError::NoHealthyUpstream("no endpoint".into());
    for attempt in 0..attempts {
        if attempt > 0 {
            let pause = backoff(retry.map_or(Duration::ZERO, |r| r.backoff), attempt - 1);
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return Err(ProxyError::Timeout("request timeout".into()));
            }
            tokio::time::sleep(pause).await;
            ctx.metrics.retries.inc();
        }
        let Some((endpoint, state)) = ctx.backends.pick(
            &backend.state,
            &backend.endpoints,
            backend.load_balancer(),
            &tried,
        ) else {
            return Err(ProxyError::NoHealthyUpstream(describe(backend)));
        };
        tried.push(endpoint.addr);
        record.attempts = attempt + 1;
        record.upstream = Some(endpoint.addr);
        // Labelled with the endpoint tried, so a request that times out or fails is counted
        // against the workload that failed it (as Istio's are), not as "unknown".
        record.destination(None, Some(&endpoint.workload));
        let Some(attempt_body) = body.take() else {
            // The body went out with an earlier attempt and cannot be sent again.
            return Err(last);
        };
        let per_try = match (rule.per_try_timeout, deadline) {
            (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
            (Some(t), None) => Some(t),
            (None, Some(d)) => Some(d.saturating_duration_since(Instant::now())),
            (None, None) => None,
        };
        state.active.fetch_add(1, Ordering::Relaxed);
        let send = upstream::send(
            ctx,
            &conn.down,
            &conn.cache,
            &endpoint,
            protocol,
            head.request(attempt_body),
            || balance::connection_slot(&backend.state, pool).map_err(|e| e.to_string()),
        );
        let result = match per_try {
            Some(t) => tokio::time::timeout(t, send).await.ok(),
            None => Some(send.await),
        };
        state.active.fetch_sub(1, Ordering::Relaxed);
        let report = |outcome| {
            if ctx
                .backends
                .report(&endpoint, &state, outcome, outlier, &backend.endpoints)
            {
                ctx.metrics.ejections.inc();
            }
        };
        let retry_allowed = attempt + 1 < attempts;
        let after_send_ok = idempotent(&head.method) && body.replayable();
        match result {
            None => {
                report(Outcome::LocalFailure);
                let by_deadline = deadline.is_some_and(|d| Instant::now() >= d);
                last = ProxyError::Timeout(if by_deadline {
                    "request timeout".into()
                } else {
                    format!("per-try timeout waiting for {}", endpoint.addr)
                });
                // A timed-out try is answered as 504, so it is retried as a 504 would be.
                let retries = retry.is_some_and(|r| r.retries_status(504));
                if by_deadline || !(retries && after_send_ok) {
                    return Err(last);
                }
            }
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                report(Outcome::Status(status));
                let again = retry.is_some_and(|r| r.retries_status(status));
                if !(again && retry_allowed && body.replayable()) {
                    return Ok((response, endpoint));
                }
                debug!(status, upstream = %endpoint.addr, "retrying");
                last = ProxyError::Reset(format!("{} answered {status}", endpoint.addr));
            }
            Some(Err((SendError::Overflow(e), _))) => return Err(ProxyError::Overflow(e)),
            Some(Err((SendError::Connect(e), unsent))) => {
                report(Outcome::LocalFailure);
                if let Some(req) = unsent {
                    body.restore(req.into_body());
                }
                last = ProxyError::ConnectFailure(e);
                if !retry.is_some_and(|r| r.on_connect_failure) {
                    return Err(last);
                }
            }
            Some(Err((SendError::Reset(e), _))) => {
                report(Outcome::LocalFailure);
                last = ProxyError::Reset(e);
                if !(retry.is_some_and(|r| r.on_reset) && after_send_ok) {
                    return Err(last);
                }
            }
        }
        if !retry_allowed {
            return Err(last);
        }
        debug!(attempt, "retrying: {last}");
    }
    Err(last)
}

fn describe(backend: &Backend) -> String {
    backend
        .service
        .as_ref()
        .map(|s| format!("service {}", s.spec.hostname))
        .unwrap_or_else(|| "the addressed workload".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_under_its_cap() {
        let base = Duration::from_millis(25);
        for n in 0..20 {
            assert!(backoff(base, n) <= base * 10);
        }
    }
}
