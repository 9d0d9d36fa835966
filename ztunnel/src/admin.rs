//! What the agent adds to the shared admin server (`ambit_runtime::admin`): its readiness
//! conditions and `/config_dump` (workloads, services, policies, certificates with expiry, the
//! config stream's state).

use std::sync::Arc;
use std::time::SystemTime;

use ambit_proto::api;
use ambit_proto::xds::ClientStatus;
use ambit_runtime::config_stream::ConfigDump;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::certs::CertManager;
use crate::proxy::tracker::Tracker;
use crate::state::Store;

/// What the agent's admin endpoints read.
#[derive(Clone)]
pub struct AgentView {
    pub node: String,
    pub store: Arc<Store>,
    pub certs: Arc<CertManager>,
    pub tracker: Arc<Tracker>,
    pub config: watch::Receiver<ClientStatus>,
    /// Whether the capture rules are installed (always true without capture).
    pub capture_ready: watch::Receiver<bool>,
}

impl AgentView {
    /// Ready once config has been received, every local workload holds its certificate and the
    /// capture rules are in place: before that, captured traffic could not be served.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if !self.config.borrow().synced {
            return Some("config not received from the controller yet");
        }
        if !*self.capture_ready.borrow() {
            return Some("capture rules not installed yet");
        }
        if !self.certs.all_ready() {
            return Some("certificates not issued yet");
        }
        None
    }
}

/// `/config_dump`, to merge into the local admin router.
pub fn routes(view: AgentView) -> axum::Router {
    axum::Router::new()
        .route("/config_dump", get(config_dump))
        .with_state(view)
}

#[derive(Serialize)]
pub struct Dump {
    pub node: String,
    pub ready: bool,
    pub not_ready_because: Option<String>,
    pub config: ConfigDump,
    pub workloads: Vec<WorkloadDump>,
    pub services: Vec<ServiceDump>,
    pub policies: Vec<PolicyDump>,
    pub certificates: Vec<CertificateDump>,
    pub open_connections: usize,
}

#[derive(Serialize)]
pub struct WorkloadDump {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub addresses: Vec<String>,
    pub identity: String,
    pub captured: bool,
    pub protocol: &'static str,
    pub local: bool,
    pub waypoint: Option<String>,
    pub services: Vec<String>,
    pub mtls_mode: String,
    pub healthy: bool,
}

#[derive(Serialize)]
pub struct ServiceDump {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    pub vips: Vec<String>,
    pub ports: Vec<String>,
    pub waypoint: Option<String>,
}

#[derive(Serialize)]
pub struct PolicyDump {
    pub name: String,
    pub namespace: String,
    pub scope: String,
    pub action: String,
    pub rules: usize,
}

#[derive(Serialize)]
pub struct CertificateDump {
    pub identity: String,
    pub state: &'static str,
    /// Seconds since the Unix epoch.
    pub not_after: Option<u64>,
    pub expires_in_seconds: Option<i64>,
}

fn gateway(g: &Option<api::GatewayAddress>) -> Option<String> {
    use ambit_proto::api::gateway_address::Destination;
    g.as_ref().map(|g| match &g.destination {
        Some(Destination::Hostname(h)) => format!("{}/{}", h.namespace, h.hostname),
        Some(Destination::Address(a)) => a.clone(),
        None => String::new(),
    })
}

pub fn dump(s: &AgentView) -> Dump {
    let state = s.store.current();
    let status = s.config.borrow().clone();
    let now = SystemTime::now();
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    Dump {
        node: s.node.clone(),
        ready: s.not_ready_because().is_none(),
        not_ready_because: s.not_ready_because().map(str::to_string),
        config: ConfigDump::new(status, state.version),
        workloads: state
            .workloads
            .values()
            .map(|w| WorkloadDump {
                uid: w.spec.uid.clone(),
                name: w.spec.name.clone(),
                namespace: w.spec.namespace.clone(),
                node: w.spec.node.clone(),
                addresses: w.spec.addresses.clone(),
                identity: w.identity.to_string(),
                captured: w.spec.node_captured,
                protocol: if w.speaks_hbone() { "HBONE" } else { "TCP" },
                local: w.spec.node == s.node,
                waypoint: gateway(&w.spec.waypoint),
                services: w.spec.services.keys().cloned().collect(),
                mtls_mode: api::MtlsMode::try_from(w.spec.mtls_mode)
                    .map(|m| m.as_str_name().trim_start_matches("MTLS_MODE_").to_string())
                    .unwrap_or_default(),
                healthy: w.is_healthy(),
            })
            .collect(),
        services: state
            .services
            .values()
            .map(|svc| ServiceDump {
                name: svc.spec.name.clone(),
                namespace: svc.spec.namespace.clone(),
                hostname: svc.spec.hostname.clone(),
                vips: svc.spec.addresses.clone(),
                ports: svc
                    .spec
                    .ports
                    .iter()
                    .map(|p| format!("{}->{}", p.service_port, p.target_port))
                    .collect(),
                waypoint: gateway(&svc.spec.waypoint),
            })
            .collect(),
        policies: state
            .policies
            .values()
            .map(|p| PolicyDump {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                scope: api::Scope::try_from(p.scope)
                    .map(|x| x.as_str_name().trim_start_matches("SCOPE_").to_string())
                    .unwrap_or_default(),
                action: api::Action::try_from(p.action)
                    .map(|x| x.as_str_name().trim_start_matches("ACTION_").to_string())
                    .unwrap_or_default(),
                rules: p.rules.len(),
            })
            .collect(),
        certificates: s
            .certs
            .held()
            .into_iter()
            .map(|(identity, cert)| CertificateDump {
                identity: identity.to_string(),
                state: if cert.is_some() { "issued" } else { "pending" },
                not_after: cert.as_ref().map(|c| secs(c.not_after())),
                expires_in_seconds: cert
                    .as_ref()
                    .map(|c| secs(c.not_after()) as i64 - secs(now) as i64),
            })
            .collect(),
        open_connections: s.tracker.len(),
    }
}

async fn config_dump(State(s): State<AgentView>) -> Json<Dump> {
    Json(dump(&s))
}
