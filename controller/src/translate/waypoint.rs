//! Which waypoint, if any, traffic to a service or a workload goes through.
//!
//! Istio's rules, which users already rely on:
//! - `istio.io/use-waypoint: <gateway>` on a pod or service overrides the same label on its
//!   namespace; the value `none` opts out; `istio.io/use-waypoint-namespace` names another
//!   namespace for the gateway;
//! - the gateway must exist and be of a waypoint class (`ambit-waypoint`, or `istio-waypoint`
//!   so existing manifests carry over);
//! - the waypoint's `istio.io/waypoint-for` (default `service`) says which traffic it takes:
//!   traffic addressed to services, to workloads (pod IPs), `all`, or `none`;
//! - a waypoint's own pods never use a waypoint (that would loop).
//!
//! And Istio 1.18-1.21's per-service-account waypoints, which need no label: a waypoint Gateway
//! annotated `istio.io/for-service-account: <sa>` serves the workloads of `<sa>` in its
//! namespace. It comes after the object's own `istio.io/use-waypoint` (so `none` still opts a
//! pod out) and before the namespace's. A workload uses it for the traffic addressed to it; a
//! Service uses it when every pod it selects runs as `<sa>` (agents pick one waypoint per
//! service, so a service over several accounts keeps its own or its namespace's waypoint).
//! Unlike Istio 1.18-1.20, where such a waypoint ran as the account it served, an Ambit
//! waypoint always has its own identity (`sa/<gateway>`), so the Gateway must not be named
//! like that account.

use std::collections::BTreeMap;

use ambit_proto::api;

use crate::model::{self, ClusterState, Gateway};

pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// Istio 1.18-1.21's annotation on a waypoint Gateway: the one service account it serves.
pub const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
/// Ambit's opt-in, on a pod or namespace: only its waypoints may connect to the pod.
pub const WAYPOINT_ONLY: &str = "ambit.dev/waypoint-only";
pub const WAYPOINT_CLASSES: &[&str] = &["ambit-waypoint", "istio-waypoint"];
/// Set by Gateway API implementations on a gateway's pods; marks waypoint pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Service,
    Workload,
}

pub fn is_waypoint(gw: &Gateway) -> bool {
    WAYPOINT_CLASSES.contains(&gw.spec.gateway_class_name.as_str())
}

/// "service" (the default), "workload", "all" or "none".
pub fn waypoint_for(gw: &Gateway) -> &str {
    model::labels(&gw.metadata)
        .get(WAYPOINT_FOR)
        .map(String::as_str)
        .unwrap_or("service")
}

fn serves(gw: &Gateway, traffic: Traffic) -> bool {
    matches!(
        (waypoint_for(gw), traffic),
        ("all", _) | ("service", Traffic::Service) | ("workload", Traffic::Workload)
    )
}

/// The service account a waypoint Gateway is for (`istio.io/for-service-account`), if any.
pub fn for_service_account(gw: &Gateway) -> Option<&str> {
    gw.metadata
        .annotations
        .as_ref()?
        .get(FOR_SERVICE_ACCOUNT)
        .map(String::as_str)
        .filter(|sa| !sa.is_empty())
}

/// The waypoints of `namespace` that serve one service account.
fn account_waypoints<'a>(
    state: &'a ClusterState,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a str, &'a Gateway)> + 'a {
    state
        .gateways_in(namespace)
        .filter(|gw| is_waypoint(gw))
        .filter_map(|gw| Some((for_service_account(gw)?, gw)))
}

/// Whether `namespace` has a per-service-account waypoint (only then does a Service's waypoint
/// depend on the accounts of its pods).
pub fn has_account_waypoints(state: &ClusterState, namespace: &str) -> bool {
    account_waypoints(state, namespace).next().is_some()
}

/// The waypoint for an object with `labels` in `namespace`, for `traffic`; `account` is the
/// service account its workloads run as (for a Service, the one all its pods share).
pub fn resolve(
    state: &ClusterState,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    account: Option<&str>,
    traffic: Traffic,
    cluster_domain: &str,
) -> Option<api::GatewayAddress> {
    let ns_labels = state
        .namespace(namespace)
        .map(|n| model::labels(&n.metadata));
    // The object's own label wins, then a waypoint for its account (the first by name), and
    // only then the namespace's label.
    let (name, gw_ns) = match labels.get(USE_WAYPOINT) {
        Some(name) => (name, labels.get(USE_WAYPOINT_NAMESPACE)),
        None => {
            if let Some(account) = account {
                let mut for_account = account_waypoints(state, namespace)
                    .filter(|(sa, gw)| *sa == account && serves(gw, traffic));
                if let Some((_, gw)) = for_account.next() {
                    return Some(address(gw, cluster_domain));
                }
            }
            let ns_labels = ns_labels?;
            (
                ns_labels.get(USE_WAYPOINT)?,
                ns_labels.get(USE_WAYPOINT_NAMESPACE),
            )
        }
    };
    if name == "none" || name.is_empty() {
        return None;
    }
    let gw_ns = gw_ns.map(String::as_str).unwrap_or(namespace);
    let gw = state.gateway(gw_ns, name)?;
    if !is_waypoint(gw) || !serves(gw, traffic) {
        return None;
    }
    Some(address(gw, cluster_domain))
}

/// Where a waypoint is reached: its Service's hostname, HBONE port.
pub fn address(gw: &Gateway, cluster_domain: &str) -> api::GatewayAddress {
    let ns = model::namespace(&gw.metadata);
    api::GatewayAddress {
        destination: Some(api::gateway_address::Destination::Hostname(
            api::NamespacedHostname {
                namespace: ns.to_string(),
                hostname: format!("{}.{ns}.svc.{cluster_domain}", model::name(&gw.metadata)),
            },
        )),
        hbone_mtls_port: u32::from(ambit_proto::hbone::HBONE_PORT),
    }
}
