//! The admin endpoints: readiness, Prometheus metrics, and a debug dump of what the controller
//! serves and what each client holds. Served on their own single-threaded runtime (see `app`), so
//! a busy control plane never starves a health check.

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::push::{ClientDump, ConfigServer, Generation};
use crate::source::standalone::LoadReport;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Mutex<Registry>>,
    pub generations: watch::Receiver<Arc<Generation>>,
    pub source_ready: watch::Receiver<bool>,
    pub reports: watch::Receiver<LoadReport>,
    pub config_server: ConfigServer,
}

impl AdminState {
    /// Ready once the source's first full state has been translated (the pipeline does not
    /// translate before the source is ready).
    pub fn is_ready(&self) -> bool {
        *self.source_ready.borrow() && self.generations.borrow().number > 0
    }
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/debug/config_dump", get(config_dump))
        .with_state(state)
}

async fn ready(State(s): State<AdminState>) -> Response {
    if s.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: config not loaded yet\n",
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &s.registry.lock().expect("lock")) {
        Ok(()) => (
            [(
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Serialize)]
struct Dump {
    generation: u64,
    workloads: usize,
    services: usize,
    authorizations: usize,
    /// Manifest documents that were rejected, as `file document N (object) field F: reason`.
    manifest_errors: Vec<String>,
    clients: Vec<ClientDump>,
}

async fn config_dump(State(s): State<AdminState>) -> Json<impl Serialize> {
    let generation = s.generations.borrow().clone();
    let count = |t: &str| generation.resources(t).map_or(0, |r| r.len());
    use ambit_proto::api::type_url;
    Json(Dump {
        generation: generation.number,
        workloads: count(type_url::WORKLOAD),
        services: count(type_url::SERVICE),
        authorizations: count(type_url::AUTHORIZATION),
        manifest_errors: s
            .reports
            .borrow()
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect(),
        clients: s.config_server.dump(),
    })
}
