//! Wiring: certificate and config from the controller -> the HBONE server and its data path;
//! admin on its own thread; shutdown with a drain.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_proto::api::{self, type_url};
use ambit_proto::certs::CertManager;
use ambit_proto::hbone::{self, ClientSettings, ServerSettings};
use ambit_proto::mesh::Store;
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use ambit_proto::tls::TrustRoots;
use ambit_proto::xds::{self, ConfigClient};
use ambit_proto::{drain, grpc};
use anyhow::{Context as _, Result, anyhow};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::admin::{self, AdminState, SetLogLevel};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::inbound::Inbound;
use crate::proxy::{Context, OwnCertificate, Settings, balance};
use crate::state::WaypointConfig;

/// Runs the waypoint until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    set_log_level: SetLogLevel,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let roots_pem = std::fs::read_to_string(&config.root_cert)
        .with_context(|| format!("reading --root-cert {}", config.root_cert.display()))?;
    let roots = TrustRoots::from_pem(&roots_pem).context("parsing --root-cert")?;
    let controller_identity = config.controller_identity()?;
    let identity = config.identity().map_err(|e| anyhow!("--waypoint: {e}"))?;
    let gateway = config.gateway().map_err(|e| anyhow!("--waypoint: {e}"))?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));

    // Our own certificate, fetched now and renewed at half its life.
    let certs = CertManager::new(
        config.controller_addr,
        controller_identity.clone(),
        roots.clone(),
        config.token_file.clone(),
        metrics.clone(),
    );
    certs.set_wanted(std::slice::from_ref(&identity));
    tokio::spawn(certs.clone().rotate());

    // A port in use is a start-up error, not a silent half-waypoint.
    let hbone_listener = TcpListener::bind(config.hbone_addr)
        .await
        .with_context(|| format!("listening on {}", config.hbone_addr))?;

    let waypoint_config = WaypointConfig::new(Store::new(&config.trust_domain), gateway.clone());
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
    });

    // Config from the controller.
    let waypoint_name = format!("{}/{}", gateway.0, gateway.1);
    let node = api::Node {
        id: format!("waypoint~{waypoint_name}~{}", std::process::id()),
        role: api::NodeRole::Waypoint as i32,
        waypoint: waypoint_name.clone(),
        ..Default::default()
    };
    let mut types = vec![
        type_url::WORKLOAD,
        type_url::SERVICE,
        type_url::AUTHORIZATION,
    ];
    if config.routes_from_controller {
        types.extend([type_url::ROUTE, type_url::BACKEND_POLICY]);
    }
    let client = ConfigClient::new(
        xds::ClientSettings::new(node, &types),
        waypoint_config.clone(),
    );
    let xds_status = client.status();
    let (stop_config, config_stopped) = tokio::sync::oneshot::channel::<()>();
    let controller_addr = config.controller_addr;
    let (connect_roots, connect_identity) = (roots.clone(), controller_identity.clone());
    let config_task = tokio::spawn(client.run(
        move || {
            let (roots, identity) = (connect_roots.clone(), connect_identity.clone());
            async move {
                grpc::connect(controller_addr, &roots, &identity)
                    .await
                    .map_err(|e| e.to_string())
            }
        },
        async move {
            let _ = config_stopped.await;
        },
    ));
    {
        let metrics = metrics.clone();
        let mut status = xds_status.clone();
        tokio::spawn(async move {
            while status.changed().await.is_ok() {
                let connected = status.borrow_and_update().connected;
                metrics.config_connected.set(i64::from(connected));
            }
        });
    }

    // Admin.
    let admin_state = AdminState {
        identity: identity.clone(),
        registry: Arc::new(Mutex::new(registry)),
        config: waypoint_config,
        certs,
        xds: xds_status,
        set_log_level,
        log_level: Arc::new(Mutex::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )),
    };
    serve_admin(config.admin_addr, admin::local_router(admin_state.clone()))?;
    serve_admin(config.metrics_addr, admin::public_router(admin_state))?;

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
    let _ = stop_config.send(());
    let _ = tokio::time::timeout(Duration::from_secs(1), config_task).await;
    Ok(())
}

/// Serves `router` on `addr` from a thread of its own with a single-threaded runtime, so the
/// data plane's load never delays a probe.
fn serve_admin(addr: std::net::SocketAddr, router: axum::Router) -> Result<()> {
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the admin address {addr}"))?;
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the admin runtime")?;
    std::thread::Builder::new()
        .name(format!("admin {addr}"))
        .spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => {
                        if let Err(e) = axum::serve(l, router).await {
                            warn!("admin server on {addr} stopped: {e}");
                        }
                    }
                    Err(e) => warn!("admin listener on {addr}: {e}"),
                }
            });
        })?;
    Ok(())
}
