//! One record per request: filled in as the request is routed and answered, and finished when
//! the response's last byte has gone (or the client went away). Finishing writes the Istio
//! request metrics and the access-log line (target `access`) from the same values, so the two
//! never disagree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use ambit_proto::mesh::{Service, Workload};
use tracing::info;

use super::Downstream;
use crate::metrics::{Metrics, RequestLabels};
use crate::trace::{RequestSpan, Tracer, otlp, span};

pub struct RequestRecord {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    method: String,
    path: String,
    host: String,
    source: SocketAddr,
    /// "<route> rule <n>" or "default".
    pub route: String,
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

fn workload_labels(w: Option<&Workload>) -> (String, String, String, String, String) {
    match w {
        Some(w) => {
            let name = if w.spec.workload_name.is_empty() {
                w.spec.name.clone()
            } else {
                w.spec.workload_name.clone()
            };
            let app = if w.spec.canonical_name.is_empty() {
                name.clone()
            } else {
                w.spec.canonical_name.clone()
            };
            let revision = if w.spec.canonical_revision.is_empty() {
                "latest".to_string()
            } else {
                w.spec.canonical_revision.clone()
            };
            let cluster = if w.spec.cluster_id.is_empty() {
                "Kubernetes".to_string()
            } else {
                w.spec.cluster_id.clone()
            };
            (name, w.spec.namespace.clone(), app, revision, cluster)
        }
        None => (
            "unknown".into(),
            "unknown".into(),
            "unknown".into(),
            "unknown".into(),
            "unknown".into(),
        ),
    }
}

impl RequestRecord {
    pub fn new(
        metrics: Arc<Metrics>,
        down: &Downstream,
        method: &str,
        path: &str,
        host: &str,
        grpc: bool,
    ) -> Self {
        metrics.active_requests.inc();
        let (name, ns, app, revision, cluster) = workload_labels(down.source.as_deref());
        let labels = RequestLabels {
            reporter: "waypoint".into(),
            source_workload: name,
            source_workload_namespace: ns,
            source_principal: down.source_identity.to_string(),
            source_canonical_service: app.clone(),
            source_app: app,
            source_version: revision.clone(),
            source_canonical_revision: revision,
            source_cluster: cluster,
            request_protocol: if grpc { "grpc" } else { "http" }.into(),
            connection_security_policy: "mutual_tls".into(),
            response_flags: "-".into(),
            ..RequestLabels::default()
        };
        let mut record = RequestRecord {
            metrics,
            labels,
            start: Instant::now(),
            method: method.into(),
            path: path.into(),
            host: host.into(),
            source: down.source_addr,
            route: String::new(),
            upstream: None,
            reason: String::new(),
            attempts: 0,
            request_bytes: Arc::default(),
            slot: None,
            trace: None,
            port: down.authority.port(),
        };
        record.destination(None, None);
        record
    }

    /// The destination service and, once an endpoint answered, its workload.
    pub fn destination(&mut self, service: Option<&Service>, workload: Option<&Workload>) {
        let (name, ns, app, revision, cluster) = workload_labels(workload);
        let l = &mut self.labels;
        l.destination_workload = name;
        l.destination_workload_namespace = ns;
        l.destination_principal = workload
            .map(|w| w.identity.to_string())
            .unwrap_or_else(|| "unknown".into());
        l.destination_canonical_service = app.clone();
        l.destination_app = app;
        l.destination_version = revision.clone();
        l.destination_canonical_revision = revision;
        l.destination_cluster = cluster;
        if let Some(s) = service {
            l.destination_service = s.spec.hostname.clone();
            l.destination_service_name = s.spec.name.clone();
            l.destination_service_namespace = s.spec.namespace.clone();
        } else if l.destination_service.is_empty() {
            l.destination_service = "unknown".into();
            l.destination_service_name = "unknown".into();
            l.destination_service_namespace = "unknown".into();
        }
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

    pub fn respond(&mut self, status: u16, flags: &str) {
        self.labels.response_code = status.to_string();
        self.labels.response_flags = if flags.is_empty() { "-" } else { flags }.into();
    }

    pub fn finish(mut self, response_bytes: u64, grpc_status: Option<String>) {
        self.slot = None;
        let m = &self.metrics;
        m.active_requests.dec();
        self.labels.grpc_response_status = grpc_status.unwrap_or_default();
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
            src_workload = %l.source_workload,
            src_identity = %l.source_principal,
            method = %self.method,
            host = %self.host,
            path = %self.path,
            protocol = %l.request_protocol,
            route = %self.route,
            dst_service = %l.destination_service,
            dst_workload = %l.destination_workload,
            upstream = %self.upstream.map(|a| a.to_string()).unwrap_or_default(),
            attempts = self.attempts,
            status = %l.response_code,
            grpc_status = %l.grpc_response_status,
            flags = %l.response_flags,
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
            let status = self.labels.response_code.parse().unwrap_or(0);
            tracer.submit(span.finish(name, attributes, status));
        }
    }

    /// `<service>:<port>/*`: Envoy's name for a span of a virtual host, so traces from Istio's
    /// waypoints and Ambit's group the same way.
    fn span_name(&self) -> String {
        let l = &self.labels;
        if l.destination_service != "unknown" {
            format!("{}:{}/*", l.destination_service, self.port)
        } else {
            format!("{}/*", self.host)
        }
    }

    /// OTel's HTTP server conventions, then Istio's peer metadata under the names of its metric
    /// labels, then where the request went.
    fn span_attributes(&self, request_bytes: u64, response_bytes: u64) -> Vec<otlp::KeyValue> {
        let l = &self.labels;
        let mut attributes = vec![
            span::string("http.request.method", self.method.clone()),
            span::string("url.path", self.path.clone()),
            span::string("server.address", self.host.clone()),
            span::int("server.port", i64::from(self.port)),
            span::string("client.address", self.source.ip().to_string()),
            span::string(
                "network.protocol.name",
                if l.request_protocol == "grpc" {
                    "grpc"
                } else {
                    "http"
                },
            ),
            span::int("http.request.body.size", request_bytes as i64),
            span::int("http.response.body.size", response_bytes as i64),
        ];
        if let Ok(status) = l.response_code.parse::<i64>() {
            attributes.push(span::int("http.response.status_code", status));
        }
        for (key, value) in [
            ("istio.source_workload", &l.source_workload),
            (
                "istio.source_workload_namespace",
                &l.source_workload_namespace,
            ),
            ("istio.source_principal", &l.source_principal),
            ("istio.destination_workload", &l.destination_workload),
            (
                "istio.destination_workload_namespace",
                &l.destination_workload_namespace,
            ),
            ("istio.destination_principal", &l.destination_principal),
            ("istio.destination_service", &l.destination_service),
            ("istio.response_flags", &l.response_flags),
            ("ambit.route", &self.route),
        ] {
            attributes.push(span::string(key, value.clone()));
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
