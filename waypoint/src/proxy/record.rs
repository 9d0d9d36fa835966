//! One record per request: filled in as the request is routed and answered, and finished when
//! the response's last byte has gone (or the client went away). Finishing writes the Istio
//! request metrics and the access-log line (target `access`) from the same values, so the two
//! never disagree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ambit_proto::mesh::{Service, Workload};
use ambit_proto::routes::Rule;
use tracing::info;

use super::ConnState;
use crate::metrics::{Metrics, PeerLabels, RequestLabels};
use crate::trace::{RequestSpan, Tracer, otlp, span};

pub struct RequestRecord {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    method: http::Method,
    /// The request's target as the client sent it (shares the request's buffer).
    uri: http::Uri,
    host: String,
    source: SocketAddr,
    /// The rule that routed the request; described ("<route> rule <n>" or "default") only
    /// when a log line or span needs it.
    pub rule: Option<Arc<Rule>>,
    pub upstream: Option<SocketAddr>,
    /// Why the waypoint answered itself (empty when the backend answered).
    pub reason: String,
    pub attempts: u32,
    pub request_bytes: Arc<AtomicU64>,
    /// The request's place under its service's request limit, held until the response ends.
    pub slot: Option<super::balance::RequestSlot>,
    /// The request's span, when traces are exported; finished with the record.
    pub trace: Option<(Arc<Tracer>, RequestSpan)>,
    /// The port the client addressed (names the span, as Envoy's `<host>:<port>/*`).
    port: u16,
}

impl RequestRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        conn: &ConnState,
        method: &http::Method,
        uri: &http::Uri,
        host: &str,
        grpc: bool,
    ) -> Self {
        metrics.active_requests.inc();
        RequestRecord {
            labels: RequestLabels::new(conn.source_labels.clone(), grpc),
            metrics,
            start: Instant::now(),
            method: method.clone(),
            uri: uri.clone(),
            host: host.into(),
            source: conn.down.source_addr,
            rule: None,
            upstream: None,
            reason: String::new(),
            attempts: 0,
            request_bytes: Arc::default(),
            slot: None,
            trace: None,
            port: conn.down.authority.port(),
        }
    }

    /// The destination service (kept when `None`: an endpoint's answer does not forget the
    /// service it was reached through) and, once an endpoint answered, its workload.
    pub fn destination(
        &mut self,
        service: Option<&Arc<Service>>,
        workload: Option<&Arc<Workload>>,
    ) {
        let cache = &self.metrics.labels;
        self.labels.destination = match workload {
            Some(w) => cache.workload(w),
            None => PeerLabels::unknown(),
        };
        if let Some(s) = service {
            self.labels.service = cache.service(s);
        }
    }

    fn route(&self) -> String {
        self.rule
            .as_ref()
            .map(|r| r.describe())
            .unwrap_or_else(|| "default".into())
    }

    /// Starts the request's span from the headers the client sent, if traces are exported.
    pub fn start_trace(&mut self, tracer: Option<&Arc<Tracer>>, headers: &http::HeaderMap) {
        self.trace = tracer.map(|t| (t.clone(), t.start_span(headers)));
    }

    /// Points the upstream request's `traceparent` at this request's span.
    pub fn propagate_trace(&self, headers: &mut http::HeaderMap) {
        if let Some((_, span)) = &self.trace {
            span.inject(headers);
        }
    }

    pub fn respond(&mut self, status: u16, flags: &'static str) {
        self.labels.response_code = status;
        self.labels.response_flags = if flags.is_empty() { "-" } else { flags };
    }

    pub fn finish(mut self, response_bytes: u64, grpc_status: Option<String>) {
        self.slot = None;
        let m = &self.metrics;
        m.active_requests.dec();
        self.labels.grpc_response_status = grpc_status.and_then(|g| g.trim().parse().ok());
        let l = &self.labels;
        let duration = self.start.elapsed();
        let request_bytes = self.request_bytes.load(Ordering::Relaxed);
        m.requests.get_or_create(l).inc();
        m.request_duration
            .get_or_create(l)
            .observe(duration.as_secs_f64() * 1000.0);
        m.request_bytes
            .get_or_create(l)
            .observe(request_bytes as f64);
        m.response_bytes
            .get_or_create(l)
            .observe(response_bytes as f64);
        info!(
            target: "access",
            src_addr = %self.source,
            src_workload = %l.source.workload,
            src_identity = %l.source.principal,
            method = %self.method,
            host = %self.host,
            path = %self.uri.path(),
            protocol = l.request_protocol(),
            route = %self.route(),
            dst_service = %l.service.hostname,
            dst_workload = %l.destination.workload,
            upstream = %self.upstream.map(|a| a.to_string()).unwrap_or_default(),
            attempts = self.attempts,
            status = l.response_code,
            grpc_status = %l.grpc_response_status.map(|g| g.to_string()).unwrap_or_default(),
            flags = l.response_flags,
            bytes_received = request_bytes,
            bytes_sent = response_bytes,
            duration_ms = duration.as_millis() as u64,
            reason = %self.reason,
            "request complete"
        );
        if let Some((tracer, span)) = self.trace.take()
            && span.sampled()
        {
            let name = self.span_name();
            let attributes = self.span_attributes(request_bytes, response_bytes);
            let status = self.labels.response_code;
            let grpc = self.labels.grpc_response_status;
            tracer.submit(span.finish(name, attributes, status, grpc));
        }
    }

    /// `<service>:<port>/*`: Envoy's name for a span of a virtual host, so traces from Istio's
    /// waypoints and Ambit's group the same way.
    fn span_name(&self) -> String {
        let l = &self.labels;
        if l.service.hostname != "unknown" {
            format!("{}:{}/*", l.service.hostname, self.port)
        } else {
            format!("{}/*", self.host)
        }
    }

    /// OTel's HTTP server conventions, then Istio's peer metadata under the names of its metric
    /// labels, then where the request went.
    fn span_attributes(&self, request_bytes: u64, response_bytes: u64) -> Vec<otlp::KeyValue> {
        let l = &self.labels;
        let mut attributes = vec![
            span::string("http.request.method", self.method.to_string()),
            span::string("url.path", self.uri.path().to_string()),
            span::string("server.address", self.host.clone()),
            span::int("server.port", i64::from(self.port)),
            span::string("client.address", self.source.ip().to_string()),
            span::string("network.protocol.name", l.request_protocol()),
            span::int("http.request.body.size", request_bytes as i64),
            span::int("http.response.body.size", response_bytes as i64),
        ];
        if l.response_code != 0 {
            attributes.push(span::int(
                "http.response.status_code",
                l.response_code.into(),
            ));
        }
        if let Some(code) = l.grpc_response_status {
            attributes.push(span::int("rpc.grpc.status_code", code.into()));
        }
        for (key, value) in [
            ("istio.source_workload", l.source.workload.as_str()),
            ("istio.source_workload_namespace", &l.source.namespace),
            ("istio.source_principal", &l.source.principal),
            ("istio.destination_workload", &l.destination.workload),
            (
                "istio.destination_workload_namespace",
                &l.destination.namespace,
            ),
            ("istio.destination_principal", &l.destination.principal),
            ("istio.destination_service", &l.service.hostname),
            ("istio.response_flags", l.response_flags),
            ("ambit.route", &self.route()),
        ] {
            attributes.push(span::string(key, value.to_string()));
        }
        if let Some(upstream) = self.upstream {
            attributes.push(span::string("upstream_address", upstream.to_string()));
        }
        if !self.reason.is_empty() {
            attributes.push(span::string("ambit.reason", self.reason.clone()));
        }
        attributes
    }
}
