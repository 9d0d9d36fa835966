//! What the waypoint adds to the shared admin server (`ambit_runtime::admin`): its readiness
//! conditions and `/config_dump` (services, routes, policies, certificate, config stream).

use std::sync::Arc;
use std::time::SystemTime;

use ambit_proto::Identity;
use ambit_proto::api;
use ambit_proto::certs::CertManager;
use ambit_proto::xds::ClientStatus;
use ambit_runtime::config_stream::ConfigDump;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::state::WaypointConfig;

/// What the waypoint's admin endpoints read.
#[derive(Clone)]
pub struct WaypointView {
    pub identity: Identity,
    pub config: Arc<WaypointConfig>,
    pub certs: Arc<CertManager>,
    pub xds: watch::Receiver<ClientStatus>,
}

impl WaypointView {
    /// Ready once config has arrived and the waypoint holds its certificate: before that, every
    /// tunnel would fail its handshake or every request its routing.
    pub fn not_ready_because(&self) -> Option<&'static str> {
        if !self.xds.borrow().synced {
            return Some("config not received from the controller yet");
        }
        if !self.certs.all_ready() {
            return Some("certificate not issued yet");
        }
        None
    }
}

/// `/config_dump`, to merge into the shared local admin router (`ambit_runtime::admin`).
pub fn routes(view: WaypointView) -> axum::Router {
    axum::Router::new()
        .route("/config_dump", get(config_dump))
        .with_state(view)
}

/// What the waypoint serves and with which config; read by people and `ambit explain`.
#[derive(Serialize)]
pub struct Dump {
    pub waypoint: String,
    pub identity: String,
    pub ready: bool,
    pub not_ready_because: Option<String>,
    pub config: ConfigDump,
    /// Services whose traffic this waypoint takes.
    pub services: Vec<String>,
    pub routes: Vec<RouteDump>,
    pub backend_policies: Vec<String>,
    pub policies: Vec<PolicyDump>,
    pub certificate_expires_in_seconds: Option<i64>,
}

#[derive(Serialize)]
pub struct RouteDump {
    pub name: String,
    pub parents: Vec<String>,
    pub hostnames: Vec<String>,
    pub rules: usize,
}

#[derive(Serialize)]
pub struct PolicyDump {
    pub name: String,
    pub action: String,
    pub targets: Vec<String>,
    pub rules: usize,
}

pub fn dump(s: &WaypointView) -> Dump {
    let state = s.config.current();
    let status = s.xds.borrow().clone();
    let host_prefix = format!("{}.{}.svc.", s.config.gateway.1, s.config.gateway.0);
    let served = |g: &Option<api::GatewayAddress>| {
        matches!(
            g.as_ref().and_then(|g| g.destination.as_ref()),
            Some(api::gateway_address::Destination::Hostname(h)) if h.hostname.starts_with(&host_prefix)
        )
    };
    let now = SystemTime::now();
    let expires = s.certs.held().into_iter().find_map(|(_, c)| c).map(|c| {
        match c.not_after().duration_since(now) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    });
    Dump {
        waypoint: format!("{}/{}", s.config.gateway.0, s.config.gateway.1),
        identity: s.identity.to_string(),
        ready: s.not_ready_because().is_none(),
        not_ready_because: s.not_ready_because().map(str::to_string),
        config: ConfigDump::new(status, state.version),
        services: state
            .services
            .values()
            .filter(|svc| served(&svc.spec.waypoint))
            .map(|svc| svc.spec.hostname.clone())
            .collect(),
        routes: state
            .routes
            .values()
            .map(|r| RouteDump {
                name: format!("{}/{}", r.namespace, r.name),
                parents: r
                    .parents
                    .iter()
                    .map(|p| format!("{}/{}/{}:{}", p.kind, p.namespace, p.name, p.port))
                    .collect(),
                hostnames: r.hostnames.clone(),
                rules: r.rules.len(),
            })
            .collect(),
        backend_policies: state
            .backend_policies
            .values()
            .map(|p| format!("{}/{} -> {}", p.namespace, p.name, p.service_hostname))
            .collect(),
        policies: state
            .policies
            .values()
            .filter(|p| p.scope == api::Scope::Waypoint as i32)
            .map(|p| PolicyDump {
                name: format!("{}/{}", p.namespace, p.name),
                action: api::Action::try_from(p.action)
                    .map(|a| a.as_str_name().trim_start_matches("ACTION_").to_string())
                    .unwrap_or_default(),
                targets: p.targets.clone(),
                rules: p.rules.len(),
            })
            .collect(),
        certificate_expires_in_seconds: expires,
    }
}

async fn config_dump(State(s): State<WaypointView>) -> Json<Dump> {
    Json(dump(&s))
}
