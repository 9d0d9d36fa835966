//! Wiring: certificate and config from the controller -> the HBONE server and its data path;
//! admin on its own thread; shutdown with a drain.

use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::{self, type_url};
use ambit_proto::certs::CertManager;
use ambit_proto::drain;
use ambit_proto::hbone::{self, ClientSettings, ServerSettings};
use ambit_proto::mesh::Store;
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use ambit_runtime::admin;
use ambit_runtime::config_stream::ConfigStream;
use ambit_runtime::process::{SetLogLevel, Shutdown};
use anyhow::{Context as _, Result, anyhow};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::info;

use crate::admin::WaypointView;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::inbound::Inbound;
use crate::proxy::{Context, OwnCertificate, Settings, balance};
use crate::state::WaypointConfig;
use crate::trace::Tracer;

/// Runs the waypoint until `shutdown` resolves, then drains.
pub async fn run(config: Config, set_log_level: SetLogLevel, shutdown: Shutdown) -> Result<()> {
    let control = &config.control;
    let roots = control.roots()?;
    let controller_identity = control.controller_identity()?;
    let identity = config.identity().map_err(|e| anyhow!("--waypoint: {e}"))?;
    let gateway = config.gateway().map_err(|e| anyhow!("--waypoint: {e}"))?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));

    // Our own certificate, fetched now and renewed at half its life.
    let certs = CertManager::new(
        control.controller_addr,
        controller_identity,
        roots.clone(),
        control.token_file.clone(),
        metrics.clone(),
    );
    certs.set_wanted(std::slice::from_ref(&identity));
    tokio::spawn(certs.clone().rotate());

    // A port in use is a start-up error, not a silent half-waypoint.
    let hbone_listener = TcpListener::bind(config.hbone_addr)
        .await
        .with_context(|| format!("listening on {}", config.hbone_addr))?;

    let waypoint_config = WaypointConfig::new(Store::new(&control.trust_domain), gateway.clone());
    // Traces, when asked for: the exporter runs until after the drain, to send the last spans.
    let (tracer, exporter) = match config.trace_settings() {
        Some(settings) => {
            info!(endpoint = %settings.endpoint.uri, sampling = settings.sampling, "exporting traces");
            let (tracer, exporter) = Tracer::start(settings, metrics.clone());
            (Some(tracer), Some(exporter))
        }
        None => (None, None),
    };
    let dialer = Dialer::new().with_connect_timeout(config.connect_timeout);
    let ctx = Arc::new(Context {
        config: waypoint_config.clone(),
        certificate: OwnCertificate::Ca {
            manager: certs.clone(),
            identity: identity.clone(),
        },
        hbone: hbone::Client::new(ClientSettings {
            dialer,
            ..ClientSettings::default()
        }),
        dialer,
        metrics: metrics.clone(),
        backends: balance::Backends::default(),
        settings: Settings {
            upstream_hbone_port: config.upstream_hbone_port,
            detect_timeout: config.protocol_detect_timeout,
            retry_buffer: config.retry_buffer_bytes,
            tcp_timeouts: Timeouts {
                idle: config.idle_timeout,
                half_close: config.half_close_timeout,
            },
        },
        requests: Arc::new(Semaphore::new(config.max_requests)),
        tracer,
    });

    // Config from the controller.
    let waypoint_name = format!("{}/{}", gateway.0, gateway.1);
    let node = api::Node {
        id: format!("waypoint~{waypoint_name}~{}", std::process::id()),
        role: api::NodeRole::Waypoint as i32,
        waypoint: waypoint_name.clone(),
        ..Default::default()
    };
    let types = [
        type_url::WORKLOAD,
        type_url::SERVICE,
        type_url::AUTHORIZATION,
        type_url::ROUTE,
        type_url::BACKEND_POLICY,
    ];
    let config_stream = ConfigStream::start(
        control,
        roots,
        node,
        &types,
        waypoint_config.clone(),
        metrics.config_connected.clone(),
    )?;

    // Admin.
    let view = WaypointView {
        identity: identity.clone(),
        config: waypoint_config,
        certs,
        xds: config_stream.status(),
    };
    let ready_view = view.clone();
    admin::start(
        control,
        registry,
        Arc::new(move || ready_view.not_ready_because().map(str::to_string)),
        set_log_level,
        crate::admin::routes(view),
    )?;

    // The data path.
    let (trigger, watch) = drain::channel();
    let server = hbone::Server::new(
        hbone_listener,
        ctx.certificate.clone(),
        Inbound {
            ctx: ctx.clone(),
            drain: watch.clone(),
        },
        ServerSettings {
            max_connections: config.max_connections,
            ..ServerSettings::default()
        },
    );
    tokio::spawn(server.run(watch));
    drop(ctx);
    info!(waypoint = %waypoint_name, %identity, hbone = %config.hbone_addr, "waypoint running");

    shutdown.await;
    info!("draining (up to {:?})", config.drain_timeout);
    let outcome = trigger.drain(config.drain_timeout).await;
    info!(?outcome, "drained");
    if let Some(exporter) = exporter {
        exporter.shutdown(Duration::from_secs(2)).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), config_stream.stop()).await;
    Ok(())
}
