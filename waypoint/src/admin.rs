//! Admin endpoints. On localhost (`--admin-addr`): readiness, metrics, the config dump and the
//! runtime log level (mutating, hence local only). On `--metrics-addr`, for scrapers and probes:
//! `/metrics` and `/healthz/ready` only. Both run on a current-thread runtime of their own (see
//! `app`) so a saturated data plane never fails a health check.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ambit_proto::Identity;
use ambit_proto::api;
use ambit_proto::certs::CertManager;
use ambit_proto::xds::ClientStatus;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::WaypointConfig;

/// Changes the log filter (an `EnvFilter` directive such as `info,access=debug`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
pub struct AdminState {
    pub identity: Identity,
    pub registry: Arc<Mutex<Registry>>,
    pub config: Arc<WaypointConfig>,
    pub certs: Arc<CertManager>,
    pub xds: watch::Receiver<ClientStatus>,
    pub set_log_level: SetLogLevel,
    pub log_level: Arc<Mutex<String>>,
}

impl AdminState {
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

pub fn public_router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

pub fn local_router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/ready", get(ready))
        .route("/healthz/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .route("/logging", get(get_logging).post(set_logging))
        .with_state(state)
}

async fn ready(State(s): State<AdminState>) -> Response {
    match s.not_ready_because() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    match ambit_proto::admin::encode_metrics(&s.registry.lock().expect("registry")) {
        Ok((content_type, body)) => ([("content-type", content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct LevelQuery {
    level: String,
}

async fn get_logging(State(s): State<AdminState>) -> String {
    format!("{}\n", s.log_level.lock().expect("level"))
}

async fn set_logging(State(s): State<AdminState>, Query(q): Query<LevelQuery>) -> Response {
    match (s.set_log_level)(&q.level) {
        Ok(()) => {
            *s.log_level.lock().expect("level") = q.level.clone();
            format!("log level: {}\n", q.level).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// What the waypoint serves and with which config; read by people and `ambit explain`.
#[derive(Serialize)]
pub struct Dump {
    pub waypoint: String,
    pub identity: String,
    pub ready: bool,
    pub not_ready_because: Option<String>,
    pub config: ClientStatusDump,
    /// Services whose traffic this waypoint takes.
    pub services: Vec<String>,
    pub routes: Vec<RouteDump>,
    pub backend_policies: Vec<String>,
    pub policies: Vec<PolicyDump>,
    pub certificate_expires_in_seconds: Option<i64>,
}

#[derive(Serialize)]
pub struct ClientStatusDump {
    pub connected: bool,
    pub synced: bool,
    pub connects: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
    pub applied_changes: u64,
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

pub fn dump(s: &AdminState) -> Dump {
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
        config: ClientStatusDump {
            connected: status.connected,
            synced: status.synced,
            connects: status.connects,
            nacks: status.nacks,
            last_error: status.last_error,
            applied_changes: state.version,
        },
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

async fn config_dump(State(s): State<AdminState>) -> Json<Dump> {
    Json(dump(&s))
}
