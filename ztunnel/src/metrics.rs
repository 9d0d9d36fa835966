//! The agent's metrics. Connection metrics carry Istio's names and labels
//! (`istio_tcp_connections_opened_total`, ... with `reporter`, `source_workload`, ...), so the
//! dashboards and alerts people already run against Istio's ztunnel keep working. The agent's own
//! health metrics are `ambit_ztunnel_*`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Istio's standard TCP labels (the subset a node agent can know).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// "source" (the client's agent) or "destination" (the server's agent).
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_service: String,
    pub request_protocol: String,
    /// "mutual_tls" or "none".
    pub connection_security_policy: String,
    /// Empty on success; "DENY" (policy), "UF" (upstream failure), "NR" (no route) otherwise.
    pub response_flags: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

pub struct Metrics {
    pub opened: Family<ConnectionLabels, Counter>,
    pub closed: Family<ConnectionLabels, Counter>,
    pub sent_bytes: Family<ConnectionLabels, Counter>,
    pub received_bytes: Family<ConnectionLabels, Counter>,
    pub active: Gauge,
    pub refused: Family<ReasonLabel, Counter>,
    pub certificate_fetches: Family<ResultLabel, Counter>,
    pub capture_syncs: Family<ResultLabel, Counter>,
    pub captured_pods: Gauge,
    pub config_connected: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            active: Gauge::default(),
            refused: Family::default(),
            certificate_fetches: Family::default(),
            capture_syncs: Family::default(),
            captured_pods: Gauge::default(),
            config_connected: Gauge::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "TCP connections closed",
            m.closed.clone(),
        );
        istio.register(
            "tcp_sent_bytes",
            "Bytes sent to the destination during TCP connections",
            m.sent_bytes.clone(),
        );
        istio.register(
            "tcp_received_bytes",
            "Bytes received from the destination during TCP connections",
            m.received_bytes.clone(),
        );
        let own = registry.sub_registry_with_prefix("ambit_ztunnel");
        own.register(
            "active_connections",
            "Connections being proxied now",
            m.active.clone(),
        );
        own.register(
            "connections_refused",
            "Connections refused, by reason",
            m.refused.clone(),
        );
        own.register(
            "certificate_fetches",
            "Certificate requests to the CA, by result",
            m.certificate_fetches.clone(),
        );
        own.register(
            "capture_syncs",
            "Redirection rule updates, by result",
            m.capture_syncs.clone(),
        );
        own.register(
            "captured_pods",
            "Local pods whose traffic is redirected",
            m.captured_pods.clone(),
        );
        own.register(
            "config_connected",
            "1 while the config stream to the controller is open",
            m.config_connected.clone(),
        );
        m
    }

    pub fn certificate_fetch(&self, ok: bool) {
        self.certificate_fetches
            .get_or_create(&ResultLabel {
                result: if ok { "success" } else { "error" }.into(),
            })
            .inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }
}
