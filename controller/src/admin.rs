//! The controller's own admin endpoint, `/debug/config_dump` (what it serves and what each client
//! holds), and its readiness. Readiness, metrics and the log level are `ambit_runtime::admin`'s,
//! served with this on their own single-threaded runtime (see `app`), so a busy control plane
//! never starves a health check.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use serde::Serialize;
use tokio::sync::watch;

use crate::push::{ClientDump, ConfigServer, Generation};
use crate::source::standalone::LoadReport;

#[derive(Clone)]
pub struct AdminState {
    pub generations: watch::Receiver<Arc<Generation>>,
    pub source_ready: watch::Receiver<bool>,
    pub reports: watch::Receiver<LoadReport>,
    pub config_server: ConfigServer,
}

impl AdminState {
    /// Why the controller is not ready (`None`: ready): once the source's first full state has
    /// been translated (the pipeline does not translate before the source is ready).
    pub fn not_ready_because(&self) -> Option<String> {
        let ready = *self.source_ready.borrow() && self.generations.borrow().number > 0;
        (!ready).then(|| "config not loaded yet".to_string())
    }
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/debug/config_dump", get(config_dump))
        .with_state(state)
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
