//! The waypoint's metrics. Request metrics carry Istio's names, standard labels and
//! `reporter="waypoint"` (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`), so the dashboards and alerts people run against
//! Istio's waypoints keep working. Opaque TCP is counted as the node agents count it
//! (`istio_tcp_*`). The waypoint's own health metrics are `ambit_waypoint_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

mod labels;

pub use labels::{LabelCache, PeerLabels, RequestLabels, ServiceLabels};

/// Istio's TCP labels for opaque connections.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub response_flags: String,
    pub connection_security_policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    pub protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

/// Istio's duration buckets, in milliseconds.
const DURATION_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Istio's size buckets: 1 byte to 100 MB by powers of ten.
fn size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 10.0, 9,
    ))
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    /// The label sets of the request metrics, per workload and service.
    pub labels: LabelCache,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily,
    pub request_bytes: HistogramFamily,
    pub response_bytes: HistogramFamily,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent_bytes: Family<TcpLabels, Counter>,
    pub tcp_received_bytes: Family<TcpLabels, Counter>,
    pub tunnels: Family<ProtocolLabel, Counter>,
    pub active_requests: Gauge,
    pub refused: Family<ReasonLabel, Counter>,
    pub retries: Counter,
    pub ejections: Counter,
    pub certificate_fetches: Family<ResultLabel, Counter>,
    pub config_connected: Gauge,
    /// Spans lost before reaching the collector, by reason (`queue_full`, `export_failed`).
    pub trace_spans_dropped: Family<ReasonLabel, Counter>,
    pub trace_spans_exported: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            labels: LabelCache::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            request_bytes: Family::new_with_constructor(size_histogram),
            response_bytes: Family::new_with_constructor(size_histogram),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent_bytes: Family::default(),
            tcp_received_bytes: Family::default(),
            tunnels: Family::default(),
            active_requests: Gauge::default(),
            refused: Family::default(),
            retries: Counter::default(),
            ejections: Counter::default(),
            certificate_fetches: Family::default(),
            config_connected: Gauge::default(),
            trace_spans_dropped: Family::default(),
            trace_spans_exported: Counter::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register("requests", "Requests processed", m.requests.clone());
        istio.register(
            "request_duration_milliseconds",
            "Request duration, first byte in to last byte out",
            m.request_duration.clone(),
        );
        istio.register(
            "request_bytes",
            "Request body sizes",
            m.request_bytes.clone(),
        );
        istio.register(
            "response_bytes",
            "Response body sizes",
            m.response_bytes.clone(),
        );
        istio.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            m.tcp_opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            m.tcp_closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the destination on opaque TCP connections",
            m.tcp_sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the destination on opaque TCP connections",
            m.tcp_received_bytes.clone(),
        );
        let own = registry.sub_registry_with_prefix("ambit_waypoint");
        own.register(
            "tunnels",
            "Tunnels accepted, by detected protocol",
            m.tunnels.clone(),
        );
        own.register(
            "active_requests",
            "Requests being proxied now",
            m.active_requests.clone(),
        );
        own.register(
            "refused",
            "Tunnels and requests refused before routing, by reason",
            m.refused.clone(),
        );
        own.register("retries", "Retried attempts", m.retries.clone());
        own.register(
            "outlier_ejections",
            "Endpoints ejected by outlier detection",
            m.ejections.clone(),
        );
        own.register(
            "certificate_fetches",
            "Certificate requests to the CA, by result",
            m.certificate_fetches.clone(),
        );
        own.register(
            "config_connected",
            "1 while the config stream to the controller is open",
            m.config_connected.clone(),
        );
        own.register(
            "trace_spans_dropped",
            "Spans not delivered to the OTLP collector, by reason",
            m.trace_spans_dropped.clone(),
        );
        own.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            m.trace_spans_exported.clone(),
        );
        m
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}

impl ambit_proto::certs::FetchObserver for Metrics {
    fn fetched(&self, ok: bool) {
        self.certificate_fetches
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "error" }.into(),
            })
            .inc();
    }
}
