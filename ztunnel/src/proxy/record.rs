//! One record per proxied connection: it counts the connection open in the metrics when created
//! and, when finished, counts it closed with its bytes and writes the access-log line (target
//! `access`). Every path (outbound, inbound, same-node) ends through here, so the log and the
//! metrics can never disagree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ambit_proto::Identity;
use ambit_proto::relay::{RelayEnd, Transferred};
use tracing::info;

use crate::metrics::{ConnectionLabels, Metrics};
use crate::state::Workload;

/// Which agent reports: the client's ("source") or the server's ("destination").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter {
    Source,
    Destination,
}

/// Who is talking to whom.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    pub source_addr: Option<SocketAddr>,
    pub source: Option<Arc<Workload>>,
    /// The identity proven by mTLS (inbound) or the source workload's (outbound).
    pub source_identity: Option<Identity>,
    pub destination_addr: Option<SocketAddr>,
    pub destination: Option<Arc<Workload>>,
    pub destination_identity: Option<Identity>,
    pub destination_service: Option<String>,
    pub mtls: bool,
    /// How: "hbone", "waypoint <name>", "local", "passthrough", "plaintext".
    pub path: String,
}

pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: Vec<ConnectionLabels>,
    peers: Peers,
    start: Instant,
    opened: bool,
}

impl ConnectionRecord {
    /// A record reported by `reporters` (a same-node connection is both source and destination).
    pub fn new(metrics: Arc<Metrics>, peers: Peers, reporters: &[Reporter]) -> Self {
        let labels = reporters.iter().map(|r| labels(&peers, *r)).collect();
        ConnectionRecord {
            metrics,
            labels,
            peers,
            start: Instant::now(),
            opened: false,
        }
    }

    /// The connection is established (upstream connected): counted as opened.
    pub fn opened(&mut self) {
        self.opened = true;
        self.metrics.active.inc();
        for l in &self.labels {
            self.metrics.opened.get_or_create(l).inc();
        }
    }

    /// Ends the record with a relay's outcome.
    pub fn finish(self, transferred: Transferred, end: &RelayEnd) {
        let (result, reason) = match end {
            RelayEnd::Complete => ("ok", String::new()),
            RelayEnd::Idle => ("ok", "idle timeout".into()),
            RelayEnd::HalfClosed => ("ok", "half-close timeout".into()),
            RelayEnd::Stopped(why) => ("revoked", why.clone()),
            RelayEnd::Error(e) => ("error", e.to_string()),
        };
        self.end(transferred, result, &reason, "");
    }

    /// Ends a connection that never carried data: refused by policy, or its upstream failed.
    /// `flag` is Istio's response flag ("DENY", "UF", "NR").
    pub fn refuse(mut self, flag: &str, reason: &str) {
        for l in &mut self.labels {
            l.response_flags = flag.to_string();
        }
        self.end(Transferred::default(), "refused", reason, flag);
    }

    fn end(self, t: Transferred, result: &str, reason: &str, flag: &str) {
        let m = &self.metrics;
        for l in &self.labels {
            let mut l = l.clone();
            l.response_flags = flag.to_string();
            if self.opened {
                m.closed.get_or_create(&l).inc();
            } else {
                // A refused connection still counts as opened and closed, as Istio reports it.
                m.opened.get_or_create(&l).inc();
                m.closed.get_or_create(&l).inc();
            }
            m.sent_bytes.get_or_create(&l).inc_by(t.a_to_b);
            m.received_bytes.get_or_create(&l).inc_by(t.b_to_a);
        }
        if self.opened {
            m.active.dec();
        }
        let p = &self.peers;
        let addr = |a: Option<SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        let name =
            |w: &Option<Arc<Workload>>| w.as_ref().map(|w| w.display_name()).unwrap_or_default();
        let id = |i: &Option<Identity>| i.as_ref().map(|i| i.to_string()).unwrap_or_default();
        info!(
            target: "access",
            src_addr = %addr(p.source_addr),
            src_workload = %name(&p.source),
            src_identity = %id(&p.source_identity),
            dst_addr = %addr(p.destination_addr),
            dst_workload = %name(&p.destination),
            dst_identity = %id(&p.destination_identity),
            dst_service = p.destination_service.as_deref().unwrap_or(""),
            path = %p.path,
            bytes_sent = t.a_to_b,
            bytes_received = t.b_to_a,
            duration_ms = self.start.elapsed().as_millis() as u64,
            result,
            reason,
            "connection complete"
        );
    }
}

fn labels(p: &Peers, reporter: Reporter) -> ConnectionLabels {
    let workload = |w: &Option<Arc<Workload>>| {
        w.as_ref()
            .map(|w| {
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
                (name, w.spec.namespace.clone(), app)
            })
            .unwrap_or_else(|| ("unknown".into(), "unknown".into(), "unknown".into()))
    };
    let principal = |i: &Option<Identity>| {
        i.as_ref()
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into())
    };
    let (sw, sns, sapp) = workload(&p.source);
    let (dw, dns, dapp) = workload(&p.destination);
    ConnectionLabels {
        reporter: match reporter {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
        .into(),
        source_workload: sw,
        source_workload_namespace: sns,
        source_principal: principal(&p.source_identity),
        source_app: sapp,
        destination_workload: dw,
        destination_workload_namespace: dns,
        destination_principal: principal(&p.destination_identity),
        destination_app: dapp,
        destination_service: p
            .destination_service
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        request_protocol: "tcp".into(),
        connection_security_policy: if p.mtls { "mutual_tls" } else { "none" }.into(),
        response_flags: String::new(),
    }
}
