//! The admin server every binary runs, served from one thread with its own current-thread
//! runtime, so a saturated data plane never fails a health check.
//!
//! A proxy's: on localhost (`--admin-addr`), readiness, metrics, the runtime log level (mutating,
//! hence local only) and whatever the binary adds (its config dump); on `--metrics-addr`, for
//! scrapers and probes, `/metrics` and `/healthz/ready` only. The controller's admin port is
//! reachable from its pod's network, so it serves the read-only routes and its own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tracing::warn;

use crate::flags::ControlPlaneFlags;
use crate::process::SetLogLevel;

/// Why the proxy is not ready yet (`None`: ready).
pub type Readiness = Arc<dyn Fn() -> Option<String> + Send + Sync>;

#[derive(Clone)]
pub struct Admin {
    registry: Arc<Mutex<Registry>>,
    readiness: Readiness,
    set_log_level: SetLogLevel,
    log_level: Arc<Mutex<String>>,
}

impl Admin {
    pub fn new(registry: Registry, readiness: Readiness, set_log_level: SetLogLevel) -> Self {
        Admin {
            registry: Arc::new(Mutex::new(registry)),
            readiness,
            set_log_level,
            log_level: Arc::new(Mutex::new(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )),
        }
    }

    pub fn not_ready_because(&self) -> Option<String> {
        (self.readiness)()
    }

    /// `/healthz/ready` and `/metrics`.
    pub fn public_router(&self) -> Router {
        Router::new()
            .route("/healthz/ready", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.clone())
    }

    /// The public routes plus `/ready`: nothing that changes the process, for an admin port that
    /// may be bound beyond localhost (the controller's, on its pod address for the kubelet).
    pub fn read_only_router(&self) -> Router {
        Router::new()
            .route("/ready", get(ready))
            .with_state(self.clone())
            .merge(self.public_router())
    }

    /// The read-only routes plus `/logging`; merge the binary's own routes into it.
    pub fn local_router(&self) -> Router {
        Router::new()
            .route("/logging", get(get_logging).post(set_logging))
            .with_state(self.clone())
            .merge(self.read_only_router())
    }
}

async fn ready(State(a): State<Admin>) -> Response {
    match a.not_ready_because() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

async fn metrics(State(a): State<Admin>) -> Response {
    match ambit_proto::admin::encode_metrics(&a.registry.lock().expect("registry")) {
        Ok((content_type, body)) => ([("content-type", content_type)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

#[derive(Deserialize)]
struct LevelQuery {
    level: String,
}

async fn get_logging(State(a): State<Admin>) -> String {
    format!("{}\n", a.log_level.lock().expect("level"))
}

async fn set_logging(State(a): State<Admin>, Query(q): Query<LevelQuery>) -> Response {
    match (a.set_log_level)(&q.level) {
        Ok(()) => {
            *a.log_level.lock().expect("level") = q.level.clone();
            format!("log level: {}\n", q.level).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// The usual admin setup: the local router (plus `local_routes`, the binary's own) on
/// `--admin-addr`, the public one on `--metrics-addr`, served from one admin thread.
pub fn start(
    flags: &ControlPlaneFlags,
    registry: Registry,
    readiness: Readiness,
    set_log_level: SetLogLevel,
    local_routes: Router,
) -> anyhow::Result<()> {
    let admin = Admin::new(registry, readiness, set_log_level);
    spawn(vec![
        (flags.admin_addr, admin.local_router().merge(local_routes)),
        (flags.metrics_addr, admin.public_router()),
    ])
}

/// Binds every address now (a port in use fails start-up) and serves from one admin thread.
pub fn spawn(servers: Vec<(SocketAddr, Router)>) -> anyhow::Result<()> {
    let mut bound = Vec::new();
    for (addr, router) in servers {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("binding the admin address {addr}"))?;
        listener.set_nonblocking(true)?;
        bound.push((listener, router));
    }
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("admin runtime");
            rt.block_on(async move {
                let servers = bound.into_iter().map(|(listener, router)| async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("admin listener");
                    if let Err(e) = axum::serve(listener, router).await {
                        warn!("admin server stopped: {e}");
                    }
                });
                futures::future::join_all(servers).await;
            });
        })?;
    Ok(())
}
