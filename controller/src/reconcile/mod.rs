//! Kubernetes mode: every waypoint Gateway (class `ambit-waypoint` or `istio-waypoint`) gets a
//! running waypoint, and its status says how that went.
//!
//! This module owns the writes to the cluster: the objects of [`objects`], applied server-side
//! under the field manager [`MANAGER`] (so reconciling again changes nothing and fields others
//! own are left alone), the status of Gateways ([`status`]), of HTTPRoutes ([`routes`]) and of
//! Ambit's GatewayClass ([`class`]), all through [`patch_status`], and the deletion of objects whose
//! Gateway is gone ([`sweep`]: the garbage collector does it through the owner references, the
//! sweep covers clusters where it is off). It runs only while this replica leads
//! ([`crate::leader`]); it does not read the mesh's state or translate anything.
//!
//! kube-runtime's `Controller` drives it: a change of a Gateway, or of a Deployment it owns,
//! reconciles that Gateway; errors retry with a per-Gateway exponential back-off.

pub mod class;
pub mod objects;
pub mod routes;
pub mod status;
mod sweep;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{oneshot, watch};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::model::{self, Object};
use crate::translate::{self, waypoint};
use objects::{GatewayKey, MANAGED_BY, WaypointSettings};
use sweep::sweep_loop;

/// The field manager of every write, so the API server knows which fields are the controller's.
pub const MANAGER: &str = "ambit-controller";
/// The controller's Service, whose cluster IP waypoints dial unless told otherwise.
pub const CONTROLLER_SERVICE: &str = "ambit-controller";
/// A reconciled Gateway is looked at again this often even if nothing changed, so drift (an
/// object edited or deleted by hand while the watch was down) is repaired.
const RESYNC: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{action} {kind} {namespace}/{name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
    /// Waypoints dial the controller by address; without `--waypoint-controller-addr` that is
    /// the cluster IP of the controller's Service.
    #[error("Service {namespace}/{CONTROLLER_SERVICE} has no cluster IP for waypoints to dial")]
    NoControllerAddress { namespace: String },
}

/// `ambit_controller_waypoint_reconciles_total{result}`: "ok", or which error (its variant).
#[derive(Clone, Debug, Default)]
pub struct ReconcileMetrics {
    reconciles: Family<ResultLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

impl ReconcileMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = ReconcileMetrics::default();
        registry.register(
            "waypoint_reconciles",
            "Waypoint Gateway reconciles, by result",
            m.reconciles.clone(),
        );
        m
    }

    fn count(&self, result: &'static str) {
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
    }
}

impl ReconcileError {
    /// The metric label: what an operator would look at first.
    fn label(&self) -> &'static str {
        match self {
            ReconcileError::Api { .. } => "api_error",
            ReconcileError::NoControllerAddress { .. } => "no_controller_address",
        }
    }
}

/// Where waypoints reach the controller.
#[derive(Debug, Clone)]
pub enum ControllerAddress {
    Fixed(SocketAddr),
    /// The cluster IP of [`CONTROLLER_SERVICE`] in the controller's namespace, on this port.
    ServiceIp(u16),
}

/// The reconciler's context: the client, the settings, and each Gateway's failure count (for
/// the back-off).
pub struct Reconciler {
    client: Client,
    settings: WaypointSettings,
    controller: ControllerAddress,
    sweep_interval: Duration,
    failures: Mutex<HashMap<(String, String), u32>>,
    metrics: ReconcileMetrics,
    /// The mesh's state, for HTTPRoute status; without it no route status is written.
    mesh: Option<routes::Mesh>,
}

/// A Gateway API kind of gateway.networking.k8s.io/v1.
pub(crate) fn gateway_api_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "gateway.networking.k8s.io".into(),
        version: "v1".into(),
        api_version: objects::GATEWAY_API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub fn gateway_resource() -> ApiResource {
    gateway_api_resource("Gateway", "gateways")
}

/// Resolves when `leading` turns false (or its sender is gone). A oneshot rather than the watch
/// itself: kube-runtime's shutdown trigger must be `Sync`.
fn until_not_leading(mut until: watch::Receiver<bool>) -> impl Future<Output = ()> + Send + Sync {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = until.wait_for(|l| !*l).await;
        let _ = stop_tx.send(());
    });
    stop_rx.map(drop)
}

/// Server-side apply of `body` to the status subresource of one object of `resource`
/// (`namespace` None: cluster-scoped), forced: these conditions are the controller's.
pub(crate) async fn patch_status(
    client: &Client,
    resource: &ApiResource,
    namespace: Option<&str>,
    name: &str,
    kind: &'static str,
    body: &serde_json::Value,
) -> Result<(), ReconcileError> {
    let api = match namespace {
        Some(ns) => Api::<DynamicObject>::namespaced_with(client.clone(), ns, resource),
        None => Api::<DynamicObject>::all_with(client.clone(), resource),
    };
    let params = PatchParams::apply(MANAGER).force();
    api.patch_status(name, &params, &Patch::Apply(body))
        .await
        .map_err(|e| {
            let ns = namespace.unwrap_or_default();
            api_error("writing the status of", kind, ns, name, e)
        })?;
    Ok(())
}

impl Reconciler {
    pub fn new(client: Client, settings: WaypointSettings, controller: ControllerAddress) -> Self {
        Reconciler {
            client,
            settings,
            controller,
            sweep_interval: Duration::from_secs(60),
            failures: Mutex::default(),
            metrics: ReconcileMetrics::default(),
            mesh: None,
        }
    }

    /// Also writes the status of HTTPRoutes attached to waypoints or Services, from this state.
    pub fn with_mesh(mut self, mesh: routes::Mesh) -> Self {
        self.mesh = Some(mesh);
        self
    }

    pub fn with_metrics(mut self, metrics: ReconcileMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// How often objects of vanished Gateways are looked for (tests shorten it).
    pub fn with_sweep_interval(mut self, interval: Duration) -> Self {
        self.sweep_interval = interval;
        self
    }

    /// Reconciles while `leading` is true; stops when it turns false and starts again (with a
    /// fresh list of the cluster) when it turns true again. Returns when `leading` is dropped.
    pub async fn run(self, mut leading: watch::Receiver<bool>) {
        let ctx = Arc::new(self);
        loop {
            if leading.wait_for(|l| *l).await.is_err() {
                return;
            }
            info!("leading: reconciling waypoints");
            let classes = tokio::spawn(class::run(
                ctx.client.clone(),
                until_not_leading(leading.clone()),
            ));
            let routes = ctx.mesh.clone().map(|mesh| {
                tokio::spawn(routes::run(
                    ctx.client.clone(),
                    mesh,
                    until_not_leading(leading.clone()),
                ))
            });
            let gateways = Api::<DynamicObject>::all_with(ctx.client.clone(), &gateway_resource());
            let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
            let controller =
                Controller::new_with(gateways, watcher::Config::default(), gateway_resource())
                    .owns(
                        Api::<Deployment>::all(ctx.client.clone()),
                        watcher::Config::default().labels(&managed),
                    )
                    .graceful_shutdown_on(until_not_leading(leading.clone()));
            let sweeper = tokio::spawn(sweep_loop(ctx.clone()));
            controller
                .run(reconcile, error_policy, ctx.clone())
                .for_each(|outcome| async move {
                    if let Err(e) = outcome {
                        debug!("reconcile: {e}");
                    }
                })
                .await;
            sweeper.abort();
            // They stop on the same signal: no status is written once another replica leads.
            let _ = classes.await;
            if let Some(routes) = routes {
                let _ = routes.await;
            }
            info!("stopped reconciling waypoints");
        }
    }

    async fn controller_addr(&self) -> Result<SocketAddr, ReconcileError> {
        let port = match &self.controller {
            ControllerAddress::Fixed(addr) => return Ok(*addr),
            ControllerAddress::ServiceIp(port) => *port,
        };
        let namespace = &self.settings.controller_namespace;
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let service = services
            .get_opt(CONTROLLER_SERVICE)
            .await
            .map_err(|e| api_error("reading", "Service", namespace, CONTROLLER_SERVICE, e))?;
        let ip = service
            .and_then(|s| s.spec?.cluster_ip)
            .and_then(|ip| ip.parse::<IpAddr>().ok());
        ip.map(|ip| SocketAddr::new(ip, port))
            .ok_or_else(|| ReconcileError::NoControllerAddress {
                namespace: namespace.clone(),
            })
    }

    /// Server-side apply, forced: these fields are the controller's, whoever wrote them last.
    async fn apply<K>(&self, object: &K) -> Result<K, ReconcileError>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(self.client.clone(), &namespace);
        let params = PatchParams::apply(MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .map_err(|e| api_error("applying", kind_of::<K>(), &namespace, &name, e))
    }
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "ServiceAccount" => "ServiceAccount",
        "ConfigMap" => "ConfigMap",
        _ => "object",
    }
}

fn api_error(
    action: &'static str,
    kind: &'static str,
    namespace: &str,
    name: &str,
    source: kube::Error,
) -> ReconcileError {
    ReconcileError::Api {
        action,
        kind,
        namespace: namespace.into(),
        name: name.into(),
        source: Box::new(source),
    }
}

/// Whether the Gateway names a waypoint class, read from the raw object so a Gateway too broken
/// to decode is still recognised as ours (and told so in its status).
fn waypoint_class(gw: &DynamicObject) -> bool {
    gw.data["spec"]["gatewayClassName"]
        .as_str()
        .is_some_and(|c| waypoint::WAYPOINT_CLASSES.contains(&c))
}

/// The Gateway decoded and checked as the sources do it, and its annotations as its waypoint
/// will read them; `Err` is the message for its status. `Ok` is the OTLP endpoint, if any.
fn validate(gw: &DynamicObject) -> Result<Option<String>, String> {
    let value = serde_json::to_value(gw).map_err(|e| e.to_string())?;
    let decoded: model::Gateway =
        serde_json::from_value(value).map_err(|e| format!("the Gateway does not decode: {e}"))?;
    translate::validate(&Object::Gateway(decoded).with_defaults())
        .map_err(|e| format!("{}: {}", e.field, e.reason))?;
    objects::otlp_endpoint(gw.annotations())
}

async fn reconcile(gw: Arc<DynamicObject>, ctx: Arc<Reconciler>) -> Result<Action, ReconcileError> {
    let namespace = gw.namespace().unwrap_or_default();
    let name = gw.name_any();
    let span = info_span!("reconcile", gateway = %format!("{namespace}/{name}"));
    let outcome: Result<Action, ReconcileError> = async {
        if !waypoint_class(&gw) || gw.metadata.deletion_timestamp.is_some() {
            // Not ours, or on its way out (the garbage collector follows).
            return Ok(Action::await_change());
        }
        let checked = validate(&gw);
        let key = GatewayKey {
            namespace: namespace.clone(),
            name: name.clone(),
            uid: gw.uid().unwrap_or_default(),
            otlp_endpoint: checked.clone().ok().flatten(),
        };
        let outcome = match &checked {
            Err(message) => {
                // The last good waypoint, if any, keeps running: the translation also keeps the
                // last accepted version of an object edited into nonsense.
                warn!(reason = %message, "invalid waypoint Gateway; not accepted");
                Err(message.clone())
            }
            Ok(_) => Ok(deploy(&ctx, &key).await?),
        };
        let hostname = checked
            .is_ok()
            .then(|| key.service_hostname(&ctx.settings.cluster_domain));
        write_status(&ctx, &gw, &outcome, hostname.as_deref()).await?;
        Ok(Action::requeue(RESYNC))
    }
    .instrument(span)
    .await;
    match &outcome {
        Ok(_) => {
            ctx.metrics.count("ok");
            ctx.failures.lock().unwrap().remove(&(namespace, name));
        }
        Err(e) => ctx.metrics.count(e.label()),
    }
    outcome
}

/// Applies the waypoint's objects; true if its Deployment has an available replica.
async fn deploy(ctx: &Reconciler, key: &GatewayKey) -> Result<bool, ReconcileError> {
    let controller = ctx.controller_addr().await?;
    ctx.apply(&objects::service_account(key)).await?;
    ctx.apply(&objects::root_config_map(key, &ctx.settings))
        .await?;
    let deployment = ctx
        .apply(&objects::deployment(key, &ctx.settings, controller))
        .await?;
    ctx.apply(&objects::service(key)).await?;
    Ok(objects::is_available(&deployment))
}

async fn write_status(
    ctx: &Reconciler,
    gw: &DynamicObject,
    outcome: &Result<bool, String>,
    hostname: Option<&str>,
) -> Result<(), ReconcileError> {
    let current = serde_json::to_value(gw).unwrap_or_default();
    let Some(body) = status::patch(&current, &status::conditions(outcome), hostname) else {
        return Ok(());
    };
    let namespace = gw.namespace().unwrap_or_default();
    let resource = gateway_resource();
    patch_status(
        &ctx.client,
        &resource,
        Some(&namespace),
        &gw.name_any(),
        "Gateway",
        &body,
    )
    .await
}

/// Retries a failed Gateway after 1s, 2s, 4s ... up to 5 minutes.
fn error_policy(gw: Arc<DynamicObject>, error: &ReconcileError, ctx: Arc<Reconciler>) -> Action {
    let key = (gw.namespace().unwrap_or_default(), gw.name_any());
    let mut failures = ctx.failures.lock().unwrap();
    let n = failures.entry(key.clone()).or_insert(0);
    let delay = Duration::from_secs(1u64 << (*n).min(9)).min(MAX_BACKOFF);
    *n += 1;
    warn!(gateway = %format!("{}/{}", key.0, key.1), retry_in = ?delay, "reconcile failed: {error}");
    Action::requeue(delay)
}
