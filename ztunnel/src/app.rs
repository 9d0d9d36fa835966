//! Wiring: config stream -> state -> (capture rules, certificates, policy re-checks) and the
//! listeners; admin on its own thread; shutdown.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_proto::api::{self, type_url};
use ambit_proto::hbone::{self, ClientSettings, ServerSettings};
use ambit_proto::net::Dialer;
use ambit_proto::relay::Timeouts;
use ambit_proto::{Identity, drain};
use ambit_runtime::admin;
use ambit_runtime::config_stream::ConfigStream;
use ambit_runtime::process::{SetLogLevel, Shutdown};
use anyhow::{Context as _, Result};
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tracing::{error, info};

use crate::admin::AgentView;
use crate::capture::{Capture, Ports};
use crate::certs::CertManager;
use crate::config::{CaptureMode, Config};
use crate::metrics::Metrics;
use crate::proxy::{self, Context, inbound, outbound, route, tracker::Tracker};
use crate::state::{MeshState, Store};

/// Runs the agent until `shutdown` resolves, then drains and removes its capture rules.
pub async fn run(config: Config, set_log_level: SetLogLevel, shutdown: Shutdown) -> Result<()> {
    let control = &config.control;
    let roots = control.roots()?;
    let controller_identity = control.controller_identity()?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let store = Store::new(&control.trust_domain);
    let certs = CertManager::new(
        control.controller_addr,
        controller_identity,
        roots.clone(),
        control.token_file.clone(),
        metrics.clone(),
    );
    let tracker = Arc::new(Tracker::default());
    let dialer = Dialer::new()
        .with_mark(config.socket_mark)
        .with_connect_timeout(config.connect_timeout);

    // Listeners first: a port in use is a start-up error, not a silent half-agent.
    let bind =
        |addr| proxy::transparent_listener(addr).with_context(|| format!("listening on {addr}"));
    let outbound_listener = bind(config.outbound_addr)?;
    let plaintext_listener = bind(config.inbound_plaintext_addr)?;
    let hbone_listener = bind(config.hbone_addr)?;

    let ctx = Arc::new(Context {
        node: config.node_name.clone(),
        store: store.clone(),
        certs: certs.clone(),
        hbone: hbone::Client::new(ClientSettings {
            dialer,
            ..ClientSettings::default()
        }),
        dialer,
        metrics: metrics.clone(),
        tracker: tracker.clone(),
        balancer: route::Balancer::default(),
        timeouts: Timeouts {
            idle: config.idle_timeout,
            half_close: config.half_close_timeout,
        },
        limit: Arc::new(Semaphore::new(config.max_connections)),
    });

    // Config from the controller.
    let node = api::Node {
        id: format!("ztunnel~{}~{}", config.node_name, std::process::id()),
        role: api::NodeRole::NodeAgent as i32,
        node_name: config.node_name.clone(),
        ..Default::default()
    };
    let config_stream = ConfigStream::start(
        control,
        roots,
        node,
        &[
            type_url::WORKLOAD,
            type_url::SERVICE,
            type_url::AUTHORIZATION,
        ],
        store.clone(),
        metrics.config_connected.clone(),
    )?;

    // Capture rules and certificates follow the local captured workloads.
    let (capture_ready_tx, capture_ready) = watch::channel(config.capture == CaptureMode::None);
    let capture = (config.capture == CaptureMode::Iptables).then(|| Capture {
        ports: Ports {
            outbound: config.outbound_addr.port(),
            inbound_plaintext: config.inbound_plaintext_addr.port(),
            hbone: config.hbone_addr.port(),
        },
        socket_mark: config.socket_mark,
        route_table: config.route_table,
    });
    if let Some(capture) = &capture {
        let c = capture.clone();
        tokio::task::spawn_blocking(move || c.install())
            .await?
            .context("installing capture rules (needs root / CAP_NET_ADMIN and iptables)")?;
    }
    tokio::spawn(follow_local_workloads(
        config.node_name.clone(),
        store.subscribe(),
        capture.clone(),
        capture_ready_tx,
        certs.clone(),
        metrics.clone(),
    ));
    tokio::spawn(certs.clone().rotate());
    tokio::spawn(ambit_runtime::alloc::release_periodically());
    tokio::spawn(tracker.clone().run(store.subscribe()));

    // Admin.
    let view = AgentView {
        node: config.node_name.clone(),
        store: store.clone(),
        certs: certs.clone(),
        tracker: tracker.clone(),
        config: config_stream.status(),
        capture_ready,
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
    let hbone_server = hbone::Server::new(
        hbone_listener,
        inbound::PodCertificates { ctx: ctx.clone() },
        inbound::HboneInbound { ctx: ctx.clone() },
        ServerSettings {
            max_connections: config.max_connections,
            ..ServerSettings::default()
        },
    );
    tokio::spawn(hbone_server.run(watch.clone()));
    tokio::spawn(proxy::serve(
        outbound_listener,
        ctx.clone(),
        "outbound",
        watch.clone(),
        outbound::handle,
    ));
    tokio::spawn(proxy::serve(
        plaintext_listener,
        ctx.clone(),
        "inbound_plaintext",
        watch.clone(),
        inbound::handle_plaintext,
    ));
    drop(watch);
    info!(node = %config.node_name, controller = %control.controller_addr, "node agent running");

    shutdown.await;
    info!("draining connections (up to {:?})", config.drain_timeout);
    let outcome = trigger.drain(config.drain_timeout).await;
    info!(?outcome, "drained");
    config_stream.stop().await;
    if let Some(capture) = capture {
        tokio::task::spawn_blocking(move || capture.remove()).await??;
    }
    Ok(())
}

/// The IPv4 addresses and identities of this node's captured workloads.
fn local_captured(state: &MeshState, node: &str) -> (BTreeSet<IpAddr>, Vec<Identity>) {
    let mut ips = BTreeSet::new();
    let mut identities = Vec::new();
    for w in state.workloads.values() {
        if w.spec.node == node && w.spec.node_captured {
            ips.extend(w.addresses.iter().copied());
            if !identities.contains(&w.identity) {
                identities.push(w.identity.clone());
            }
        }
    }
    (ips, identities)
}

/// On every config change: re-sync the capture rules (when the set of pods changed) and the
/// wanted certificates. A failed sync is retried on the next change and after a second.
async fn follow_local_workloads(
    node: String,
    mut states: watch::Receiver<Arc<MeshState>>,
    capture: Option<Capture>,
    ready: watch::Sender<bool>,
    certs: Arc<CertManager>,
    metrics: Arc<Metrics>,
) {
    let mut installed: Option<BTreeSet<IpAddr>> = None;
    let mut retry = false;
    loop {
        let state = states.borrow_and_update().clone();
        let (ips, identities) = local_captured(&state, &node);
        certs.set_wanted(&identities);
        if let Some(capture) = &capture
            && installed.as_ref() != Some(&ips)
        {
            let (c, wanted) = (capture.clone(), ips.clone());
            let result = tokio::task::spawn_blocking(move || c.sync(&wanted)).await;
            let ok = matches!(result, Ok(Ok(())));
            retry = !ok;
            metrics
                .capture_syncs
                .get_or_create(&crate::metrics::ResultLabel {
                    result: if ok { "success" } else { "error" }.into(),
                })
                .inc();
            match result {
                Ok(Ok(())) => {
                    info!(pods = ips.len(), "capture rules synced");
                    metrics.captured_pods.set(ips.len() as i64);
                    installed = Some(ips);
                    // Ready only after the first sync that reflects received config.
                    if state.version > 0 {
                        ready.send_replace(true);
                    }
                }
                Ok(Err(e)) => error!("syncing capture rules: {e}"),
                Err(e) => error!("capture sync task: {e}"),
            }
        } else if capture.is_some() && state.version > 0 {
            ready.send_replace(true);
        }
        tokio::select! {
            changed = states.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)), if retry => {}
        }
    }
}
