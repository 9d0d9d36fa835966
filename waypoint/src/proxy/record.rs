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
    }
}
