//! Which parents an HTTPRoute attaches to, and why not, as Gateway API defines attachment. One
//! function for both users: the translation (a parent the route may not attach to is not sent
//! to any waypoint) and the route status the leader writes (`reconcile::route_status`), so the
//! status says exactly what the waypoints were sent.
//!
//! A parent is Ambit's when it is a Service (Ambit is the mesh's GAMMA implementation: every
//! Service is in its mesh) or a Gateway of a waypoint class. Anything else (another
//! implementation's kind, a Gateway of another class, a Gateway not seen yet) is left to
//! whoever implements it: no status, and never a reason to drop the route.

use crate::model::gateway::{Listener, ParentReference};
use crate::model::{self, ClusterState, Gateway, Kind, ObjectRef};

use super::{label_selector_matches, waypoint};

pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The parent kinds Ambit implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentKind {
    Gateway,
    Service,
}

/// How one parentRef of a route attaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// Not a parent Ambit implements.
    NotOurs,
    Attached,
    /// Ambit's parent, but the route cannot attach to it; `reason` is Gateway API's.
    Refused {
        reason: &'static str,
        message: String,
    },
}

/// `None` for kinds other implementations serve (the defaults are the API server's).
pub fn kind(parent: &ParentReference) -> Option<ParentKind> {
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    match (group, kind) {
        (GATEWAY_GROUP, "Gateway") => Some(ParentKind::Gateway),
        ("" | "core", "Service") => Some(ParentKind::Service),
        _ => None,
    }
}

/// The parent's namespace: the route's unless it names another.
pub fn namespace<'a>(parent: &'a ParentReference, route_namespace: &'a str) -> &'a str {
    parent.namespace.as_deref().unwrap_or(route_namespace)
}

/// Whether the translation keeps `parent`: Ambit's kinds, unless a waypoint refuses the route.
/// A missing Service parent is kept (nothing serves a missing Service, and the route need not
/// be translated again when it appears).
pub fn sent(state: &ClusterState, route_namespace: &str, parent: &ParentReference) -> bool {
    match kind(parent) {
        None => false,
        Some(ParentKind::Service) => true,
        Some(ParentKind::Gateway) => !matches!(
            gateway(state, route_namespace, parent),
            Attachment::Refused { .. }
        ),
    }
}

pub fn attachment(
    state: &ClusterState,
    route_namespace: &str,
    parent: &ParentReference,
) -> Attachment {
    match kind(parent) {
        None => Attachment::NotOurs,
        Some(ParentKind::Gateway) => gateway(state, route_namespace, parent),
        Some(ParentKind::Service) => {
            let ns = namespace(parent, route_namespace);
            let key = ObjectRef {
                kind: Kind::Service,
                namespace: ns.to_string(),
                name: parent.name.clone(),
            };
            if state.get(&key).is_some() {
                Attachment::Attached
            } else {
                Attachment::Refused {
                    reason: "NoMatchingParent",
                    message: format!("Service {ns}/{} not found", parent.name),
                }
            }
        }
    }
}

/// A waypoint Gateway takes the route through a listener its `sectionName` and `port` select,
/// if that listener's `allowedRoutes` admit HTTPRoutes from the route's namespace.
fn gateway(state: &ClusterState, route_namespace: &str, parent: &ParentReference) -> Attachment {
    let ns = namespace(parent, route_namespace);
    let Some(gw) = state
        .gateway(ns, &parent.name)
        .filter(|g| waypoint::is_waypoint(g))
    else {
        return Attachment::NotOurs;
    };
    // A waypoint Gateway written without listeners has the one `ambit waypoint apply` writes.
    let implicit = [Listener {
        name: "mesh".into(),
        port: ambit_proto::hbone::HBONE_PORT,
        protocol: "HBONE".into(),
        allowed_routes: None,
    }];
    let listeners = if gw.spec.listeners.is_empty() {
        &implicit[..]
    } else {
        &gw.spec.listeners[..]
    };
    let selected: Vec<&Listener> = listeners
        .iter()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| parent.port.is_none_or(|p| p == l.port))
        .collect();
    if selected.is_empty() {
        let wanted = match (&parent.section_name, parent.port) {
            (Some(s), Some(p)) => format!("named {s:?} on port {p}"),
            (Some(s), None) => format!("named {s:?}"),
            (None, Some(p)) => format!("on port {p}"),
            (None, None) => "at all".into(),
        };
        return Attachment::Refused {
            reason: "NoMatchingParent",
            message: format!("Gateway {ns}/{} has no listener {wanted}", parent.name),
        };
    }
    if !selected
        .iter()
        .any(|l| admits(l, gw, route_namespace, state))
    {
        return Attachment::Refused {
            reason: "NotAllowedByListeners",
            message: format!(
                "the allowedRoutes of Gateway {ns}/{} do not admit HTTPRoutes from namespace {route_namespace}",
                parent.name
            ),
        };
    }
    Attachment::Attached
}

/// `allowedRoutes`: kinds (HTTPRoute, unless a list leaves it out) and namespaces (`Same` by
/// default, `All`, or a `Selector` over the route namespace's labels).
fn admits(listener: &Listener, gw: &Gateway, route_namespace: &str, state: &ClusterState) -> bool {
    let allowed = listener.allowed_routes.as_ref();
    let kind_ok = allowed.is_none_or(|a| {
        a.kinds.is_empty()
            || a.kinds.iter().any(|k| {
                k.kind == "HTTPRoute"
                    && k.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            })
    });
    let namespaces = allowed.and_then(|a| a.namespaces.as_ref());
    let namespace_ok = match namespaces.and_then(|n| n.from.as_deref()) {
        Some("All") => true,
        Some("Selector") => namespaces
            .and_then(|n| n.selector.as_ref())
            .zip(state.namespace(route_namespace))
            .is_some_and(|(selector, ns)| {
                label_selector_matches(selector, model::labels(&ns.metadata))
            }),
        _ => model::namespace(&gw.metadata) == route_namespace,
    };
    kind_ok && namespace_ok
}
