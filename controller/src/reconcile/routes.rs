//! HTTPRoute status: for each parentRef that is Ambit's (a waypoint Gateway, or a Service as
//! GAMMA has it), an entry under `status.parents` with `controllerName`
//! [`status::CONTROLLER_NAME`] and two conditions:
//!
//! - `Accepted`: [`attach::attachment`], the very rule the translation uses to decide which
//!   waypoints are sent the route, so the status says exactly what the waypoints were sent; or
//!   `UnsupportedValue` when the route does not validate (the waypoints keep its last good
//!   version, if any);
//! - `ResolvedRefs`: every backendRef names a Service of the route's namespace that exists
//!   (`BackendNotFound`, `InvalidKind`, `RefNotPermitted` otherwise: Ambit reads no
//!   ReferenceGrant, so it grants no cross-namespace reference, as `translate::route` says).
//!
//! Attachment depends on Gateways, Services and Namespaces too, so besides the routes' own
//! watch every route is looked at again when one of those changes in the mesh's state. Entries
//! of other controllers are kept as they are; unchanged statuses are not written. Runs only
//! while this replica leads, and only once the source has read the whole cluster (a Service not
//! read yet must not be reported missing).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::status::{self, Condition, ParentStatus};
use super::{ReconcileError, gateway_api_resource, patch_status};
use crate::model::gateway::{BackendObjectReference, ParentReference};
use crate::model::{self, ClusterState, Kind, Object, ObjectRef};
use crate::translate::{self, attach};

/// A failed status write is tried again after this long (the next change retries it sooner).
const RETRY: Duration = Duration::from_secs(10);
/// Bursts of mesh changes (a Deployment's pods starting) are looked at once.
const COALESCE: Duration = Duration::from_millis(200);

pub fn route_resource() -> ApiResource {
    gateway_api_resource("HTTPRoute", "httproutes")
}

/// What the route status needs of the mesh: its state and whether the source has read it all.
#[derive(Clone)]
pub struct Mesh {
    pub states: watch::Receiver<ClusterState>,
    pub ready: watch::Receiver<bool>,
}

struct Context {
    client: Client,
    states: watch::Receiver<ClusterState>,
}

/// Writes route status until `stop` resolves.
pub(super) async fn run(
    client: Client,
    mesh: Mesh,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let mut ready = mesh.ready.clone();
    let stop = futures::FutureExt::shared(Box::pin(stop));
    tokio::select! {
        r = ready.wait_for(|r| *r) => if r.is_err() { return },
        _ = stop.clone() => return,
    }
    let routes = Api::<DynamicObject>::all_with(client.clone(), &route_resource());
    let ctx = Arc::new(Context {
        client,
        states: mesh.states.clone(),
    });
    Controller::new_with(routes, watcher::Config::default(), route_resource())
        .reconcile_all_on(parents_changed(mesh.states))
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx)
        .for_each(|outcome| async move {
            if let Err(e) = outcome {
                debug!("route status: {e}");
            }
        })
        .await;
}

/// Ticks when a Gateway, Service or Namespace of the state changed: what attachment and backend
/// resolution read besides the route. Objects are compared by pointer (the state never changes
/// one in place), so a tick costs a pass over the state, not a comparison of objects.
fn parents_changed(states: watch::Receiver<ClusterState>) -> impl Stream<Item = ()> + Send {
    let fingerprint = |state: &ClusterState| {
        let mut hasher = DefaultHasher::new();
        for (key, object) in state.iter() {
            if matches!(key.kind, Kind::Gateway | Kind::Service | Kind::Namespace) {
                key.hash(&mut hasher);
                (object as *const Object as usize).hash(&mut hasher);
            }
        }
        hasher.finish()
    };
    let seen = fingerprint(&states.borrow());
    futures::stream::unfold((states, seen), move |(mut states, mut seen)| async move {
        loop {
            states.changed().await.ok()?;
            tokio::time::sleep(COALESCE).await;
            let now = fingerprint(&states.borrow_and_update());
            if now != seen {
                seen = now;
                return Some(((), (states, seen)));
            }
        }
    })
}

async fn reconcile(route: Arc<DynamicObject>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let value = serde_json::to_value(&*route).unwrap_or_default();
    let parents = parent_statuses(&value, &ctx.states.borrow());
    let Some(body) = status::route_patch(&value, &parents) else {
        return Ok(Action::await_change());
    };
    let namespace = route.namespace().unwrap_or_default();
    patch_status(
        &ctx.client,
        &route_resource(),
        Some(&namespace),
        &route.name_any(),
        "HTTPRoute",
        &body,
    )
    .await?;
    Ok(Action::await_change())
}

fn error_policy(route: Arc<DynamicObject>, error: &ReconcileError, _: Arc<Context>) -> Action {
    warn!(
        route = %format!("{}/{}", route.namespace().unwrap_or_default(), route.name_any()),
        retry_in = ?RETRY,
        "writing the route's status failed: {error}"
    );
    Action::requeue(RETRY)
}

/// The status of each of the route's parents that is Ambit's, in `spec.parentRefs` order, each
/// with its parentRef exactly as written there. Pure: `route` as read from the API server.
pub fn parent_statuses(route: &Value, state: &ClusterState) -> Vec<ParentStatus> {
    let namespace = route["metadata"]["namespace"].as_str().unwrap_or("default");
    let decoded = serde_json::from_value::<model::HttpRoute>(route.clone())
        .map_err(|e| format!("the HTTPRoute does not decode: {e}"))
        .and_then(|r| {
            let object = Object::HttpRoute(r).with_defaults();
            translate::validate(&object).map_err(|e| format!("{}: {}", e.field, e.reason))?;
            match object {
                Object::HttpRoute(r) => Ok(r),
                _ => unreachable!("validated as an HTTPRoute"),
            }
        });
    let resolved = match &decoded {
        Ok(r) => resolved_refs(r, namespace, state),
        Err(_) => condition(
            "ResolvedRefs",
            false,
            "UnsupportedValue",
            "the route is invalid",
        ),
    };
    let raw = route["spec"]["parentRefs"].as_array().cloned();
    raw.unwrap_or_default()
        .into_iter()
        .filter_map(|parent_ref| {
            let parent: ParentReference = serde_json::from_value(parent_ref.clone()).ok()?;
            let accepted = match attach::attachment(state, namespace, &parent) {
                attach::Attachment::NotOurs => return None,
                attach::Attachment::Refused { reason, message } => {
                    condition("Accepted", false, reason, &message)
                }
                attach::Attachment::Attached => match &decoded {
                    Err(message) => condition("Accepted", false, "UnsupportedValue", message),
                    Ok(_) => condition("Accepted", true, "Accepted", "sent to the waypoint"),
                },
            };
            Some(ParentStatus {
                parent_ref,
                conditions: vec![accepted, resolved.clone()],
            })
        })
        .collect()
}

/// `ResolvedRefs` of a valid route: the first backendRef that cannot be followed, with every
/// such reference named in the message.
fn resolved_refs(route: &model::HttpRoute, namespace: &str, state: &ClusterState) -> Condition {
    let mut problems: Vec<(&'static str, String)> = Vec::new();
    for (i, rule) in route.spec.rules.iter().enumerate() {
        for (j, backend) in rule.backend_refs.iter().enumerate() {
            if let Some(problem) = unresolved(&backend.backend, namespace, state) {
                problems.push((
                    problem.0,
                    format!("spec.rules[{i}].backendRefs[{j}]: {}", problem.1),
                ));
            }
        }
    }
    match problems.first() {
        None => condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "every backend is a Service",
        ),
        Some((reason, _)) => {
            let message: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
            condition("ResolvedRefs", false, reason, &message.join("; "))
        }
    }
}

fn unresolved(
    b: &BackendObjectReference,
    namespace: &str,
    state: &ClusterState,
) -> Option<(&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !matches!(group, "" | "core") || kind != "Service" {
        return Some((
            "InvalidKind",
            format!("{kind} (group {group:?}) is not a Service"),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(namespace);
    if ns != namespace {
        return Some((
            "RefNotPermitted",
            format!("Service {ns}/{} is in another namespace", b.name),
        ));
    }
    let key = ObjectRef {
        kind: Kind::Service,
        namespace: ns.to_string(),
        name: b.name.clone(),
    };
    state.get(&key).is_none().then(|| {
        (
            "BackendNotFound",
            format!("Service {ns}/{} not found", b.name),
        )
    })
}

fn condition(type_: &'static str, status: bool, reason: &'static str, message: &str) -> Condition {
    Condition {
        type_,
        status,
        reason,
        message: message.to_string(),
    }
}
