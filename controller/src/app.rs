//! Wiring: source -> pipeline -> gRPC (config + CA) and admin, and shutdown; on Kubernetes also
//! the leader election and the waypoint reconciler it gates.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::api::certificate_service_server::CertificateServiceServer;
use ambit_proto::tls::authority::CertificateAuthority;
use ambit_runtime::admin::Admin;
use ambit_runtime::process::{SetLogLevel, Shutdown};
use anyhow::Context;
use kube::Api;
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admin::{self, AdminState};
use crate::auth::token_review::TokenReviewer;
use crate::auth::{Authenticator, Caller, TokenFiles};
use crate::ca::{CaMetrics, CaService, secret, store};
use crate::config::Config;
use crate::leader::{self, LeaderMetrics};
use crate::model::{self, ClusterState};
use crate::pipeline;
use crate::push::{ConfigServer, Generation, PushMetrics};
use crate::reconcile::routes::Mesh;
use crate::reconcile::{ReconcileMetrics, Reconciler};
use crate::source::kubernetes::KubernetesSource;
use crate::source::standalone::{self, Directory, LoadReport};
use crate::translate::waypoint;

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    config: Config,
    set_log_level: SetLogLevel,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    // Shutdown has several listeners on Kubernetes (the gRPC server, the leader election).
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        stop_tx.send_replace(true);
    });
    let mut registry = Registry::with_prefix("ambit_controller");
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (reports_tx, reports) = watch::channel(LoadReport::default());
    let (ready_tx, source_ready) = watch::channel(false);
    let started = match &config.manifests {
        Some(dir) => {
            let source = Directory::new(dir);
            start_standalone(
                &config,
                source,
                (states_tx, states.clone()),
                reports_tx,
                ready_tx,
            )?
        }
        // Validation guarantees --kubernetes here.
        None => {
            start_kubernetes(
                &config,
                (states_tx, states.clone()),
                ready_tx,
                &mut registry,
                stop.clone(),
            )
            .await?
        }
    };
    let Started {
        authority,
        auth,
        leader,
    } = started;
    let authority = Arc::new(authority);

    let (generations_tx, generations) = watch::channel(Arc::new(Generation::empty()));
    tokio::spawn(pipeline::run(
        states,
        source_ready.clone(),
        config.translation(),
        generations_tx,
    ));

    // One authenticator for both services: whoever may not have certificates is not served
    // config either.
    let config_server = ConfigServer::new(
        generations.clone(),
        auth.clone(),
        PushMetrics::new(&mut registry),
    );
    let ca = CaService::new(
        authority.clone(),
        auth,
        generations.clone(),
        config.cert_ttl,
        CaMetrics::new(&mut registry),
    );

    let admin_state = AdminState {
        generations,
        source_ready,
        reports,
        config_server: config_server.clone(),
    };
    let ready_state = admin_state.clone();
    let common = Admin::new(
        registry,
        Arc::new(move || ready_state.not_ready_because()),
        set_log_level,
    );
    // The log level may be changed only where only this host can ask: on Kubernetes the admin
    // port is on the pod's address, for the kubelet's probes.
    let base = if config.admin_addr.ip().is_loopback() {
        common.local_router()
    } else {
        common.read_only_router()
    };
    ambit_runtime::admin::spawn(vec![(
        config.admin_addr,
        base.merge(admin::router(admin_state)),
    )])?;

    let server_configs = own_certificate(&config, authority)?;
    let listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.grpc_addr))?;
    info!(grpc = %config.grpc_addr, admin = %config.admin_addr, "controller serving");
    tonic::transport::Server::builder()
        .add_service(config_server.service())
        .add_service(CertificateServiceServer::new(ca))
        .serve_with_incoming_shutdown(
            ambit_proto::grpc::incoming(listener, server_configs),
            stopped(stop),
        )
        .await
        .context("gRPC server")?;
    if let Some(leader) = leader {
        // The leader releases its Lease on the same signal; wait for that (bounded by its own
        // timeout) so the next leader need not wait out the lease.
        let _ = leader.await;
    }
    info!("controller stopped");
    Ok(())
}

struct Started {
    authority: CertificateAuthority,
    auth: Arc<dyn Authenticator>,
    /// Kubernetes: the leader election, which ends after shutdown once its Lease is released.
    leader: Option<JoinHandle<()>>,
}

async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Standalone: watches the manifest directory; the CA lives in the data directory and callers
/// authenticate with the token files written there. Ready once the manifests are loaded and every
/// token file they call for is written (an agent told the controller is ready finds its token).
fn start_standalone(
    config: &Config,
    source: Directory,
    (states_tx, states): (watch::Sender<ClusterState>, watch::Receiver<ClusterState>),
    reports_tx: watch::Sender<LoadReport>,
    ready_tx: watch::Sender<bool>,
) -> anyhow::Result<Started> {
    let authority =
        store::load_or_generate(&config.ca_dir(), &config.trust_domain, config.root_ttl)
            .context("loading the CA")?;
    let tokens = Arc::new(
        TokenFiles::open(config.data_dir.join("tokens")).context("opening the token directory")?,
    );
    let mut reports = reports_tx.subscribe();
    tokio::spawn(standalone::watch(
        source,
        config.reload_interval,
        states_tx,
        reports_tx,
    ));
    let written_by = tokens.clone();
    tokio::spawn(async move {
        if reports.changed().await.is_ok() {
            let (written_tx, written) = oneshot::channel();
            tokio::spawn(keep_tokens(states, written_by, written_tx));
            if written.await.is_ok() {
                ready_tx.send_replace(true);
            }
        }
    });
    Ok(Started {
        authority,
        auth: tokens,
        leader: None,
    })
}

/// Kubernetes: watches the API server; callers authenticate with their ServiceAccount tokens
/// (TokenReview). A plug-in CA mounted into the CA directory is used as it is; otherwise the root
/// is kept in a Secret, so restarts and replicas share it. Every replica serves config and
/// certificates; only the one holding the leader Lease deploys waypoints (writes to the cluster).
async fn start_kubernetes(
    config: &Config,
    (states_tx, states): (watch::Sender<ClusterState>, watch::Receiver<ClusterState>),
    ready_tx: watch::Sender<bool>,
    registry: &mut Registry,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Started> {
    let source = KubernetesSource::try_default()
        .await
        .context("connecting to Kubernetes")?;
    let client = source.client();
    let authority = match store::load(&config.ca_dir(), &config.trust_domain)
        .context("loading the plug-in CA")?
    {
        Some(ca) => ca,
        None => secret::load_or_create(
            client.clone(),
            &config.controller_namespace,
            &config.trust_domain,
            config.root_ttl,
        )
        .await
        .context("loading the CA")?,
    };
    let audiences = config
        .token_audiences
        .iter()
        .filter(|a| !a.is_empty())
        .cloned()
        .collect();
    let node_agent = config.node_agent_account().map_err(anyhow::Error::msg)?;
    // HTTPRoute status reads the same state the translation does, once the source has read it all.
    let mesh = Mesh {
        states: states.clone(),
        ready: ready_tx.subscribe(),
    };
    let auth = TokenReviewer::new(client.clone(), node_agent, audiences, states);
    tokio::spawn(async move {
        if let Err(e) = source.run(states_tx, ready_tx).await {
            warn!("Kubernetes source stopped: {e}");
        }
    });

    let election = config.leader().map_err(anyhow::Error::msg)?;
    let (leading_tx, leading) = watch::channel(false);
    let leases = Api::namespaced(client.clone(), &election.namespace);
    let leader = tokio::spawn(leader::run(
        leases,
        election,
        leading_tx,
        LeaderMetrics::new(registry),
        stopped(stop),
    ));
    let (settings, controller) = config.waypoints(authority.roots().to_pem().concat());
    let reconciler = Reconciler::new(client, settings, controller)
        .with_metrics(ReconcileMetrics::new(registry))
        .with_mesh(mesh);
    tokio::spawn(reconciler.run(leading));
    Ok(Started {
        authority,
        auth: Arc::new(auth),
        leader: Some(leader),
    })
}

/// The controller's own TLS certificate, re-issued at half its life so it never expires while
/// serving.
fn own_certificate(
    config: &Config,
    authority: Arc<CertificateAuthority>,
) -> anyhow::Result<watch::Receiver<Arc<rustls::ServerConfig>>> {
    let identity = config.controller_identity()?;
    let lifetime = config.cert_ttl;
    let issue = move || -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let cert = authority.issue(&identity, lifetime)?;
        Ok(Arc::new(cert.control_plane_server_config()))
    };
    let (tx, rx) = watch::channel(issue()?);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(lifetime / 2).await;
            match issue() {
                Ok(c) => {
                    tx.send_replace(c);
                    info!("controller certificate rotated");
                }
                Err(e) => warn!("controller certificate rotation failed, retrying: {e}"),
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Keeps one token file per node and per waypoint that the config names; `written` fires after
/// the first round.
async fn keep_tokens(
    mut states: watch::Receiver<ClusterState>,
    tokens: Arc<TokenFiles>,
    written: oneshot::Sender<()>,
) {
    let mut written = Some(written);
    loop {
        let callers: BTreeSet<Caller> = {
            let state = states.borrow_and_update();
            // Distinct node names first: 10k pods run on a few dozen nodes.
            let nodes: BTreeSet<&str> = state
                .pods()
                .filter_map(|p| p.spec.as_ref()?.node_name.as_deref())
                .chain(
                    state
                        .iter()
                        .filter(|(k, _)| k.kind == model::Kind::Node)
                        .map(|(k, _)| k.name.as_str()),
                )
                .collect();
            let waypoints = state
                .gateways()
                .filter(|g| waypoint::is_waypoint(g))
                .map(|g| Caller::Waypoint {
                    namespace: model::namespace(&g.metadata).to_string(),
                    name: model::name(&g.metadata).to_string(),
                });
            nodes
                .into_iter()
                .map(|node| Caller::NodeAgent {
                    node: node.to_string(),
                })
                .chain(waypoints)
                .collect()
        };
        if let Err(e) = tokens.ensure(&callers) {
            warn!("writing token files: {e}");
        }
        if let Some(written) = written.take() {
            let _ = written.send(());
        }
        if states.changed().await.is_err() {
            return;
        }
        // Coalesce bursts of changes.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
