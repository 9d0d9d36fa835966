//! Pod -> `ambit.v1.Workload`: capture, tunnel, waypoint, services, mTLS mode and policies.

use std::collections::BTreeMap;

use ambit_proto::api;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::waypoint::{self, Traffic};
use super::{Settings, authorization, peer_auth, selector_matches, selector_policies_for, service};
use crate::model::{self, ClusterState};

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";

/// A pod's workload name on the wire.
pub fn uid(namespace: &str, name: &str, settings: &Settings) -> String {
    format!("{}//Pod/{namespace}/{name}", settings.cluster_id)
}

/// `None` for pods that are not workloads (finished, or not yet scheduled).
pub fn translate(pod: &Pod, state: &ClusterState, settings: &Settings) -> Option<api::Workload> {
    let meta = &pod.metadata;
    let (name, namespace) = (model::name(meta), model::namespace(meta));
    let labels = model::labels(meta);
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref();
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded") | Some("Failed")
    ) {
        return None;
    }
    let node = spec.node_name.clone().filter(|n| !n.is_empty())?;
    let host_network = spec.host_network.unwrap_or(false);
    let mut addresses: Vec<String> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.clone()).collect())
        .unwrap_or_default();
    if addresses.is_empty() {
        addresses.extend(
            status
                .and_then(|s| s.pod_ip.clone())
                .filter(|ip| !ip.is_empty()),
        );
    }

    let has_sidecar = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("sidecar.istio.io/status"))
        || spec.containers.iter().any(|c| c.name == "istio-proxy");
    let ns_ambient = state.namespace(namespace).is_some_and(|n| {
        model::labels(&n.metadata)
            .get(DATAPLANE_MODE)
            .map(String::as_str)
            == Some("ambient")
    });
    let enrolled = match labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("none") => false,
        Some("ambient") => true,
        _ => ns_ambient,
    };
    // A host-network pod shares the node's address: capturing it would capture the node.
    let node_captured = enrolled && !has_sidecar && !host_network;
    let tunnel = if node_captured || has_sidecar {
        api::TunnelProtocol::Hbone
    } else {
        api::TunnelProtocol::None
    };

    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_none_or(|c| c.status == "True");
    let healthy = ready && meta.deletion_timestamp.is_none();

    // The pod's own label wins over its namespace's, as for use-waypoint.
    let waypoint_only = labels
        .get(waypoint::WAYPOINT_ONLY)
        .or_else(|| {
            state
                .namespace(namespace)
                .and_then(|n| model::labels(&n.metadata).get(waypoint::WAYPOINT_ONLY))
        })
        .is_some_and(|v| v == "true");
    let gateway_name = labels.get(waypoint::GATEWAY_NAME_LABEL);
    let own_waypoint = gateway_name
        .and_then(|gw| state.gateway(namespace, gw))
        .filter(|gw| waypoint::is_waypoint(gw));
    let service_account = service_account(pod);
    let waypoint = if gateway_name.is_some() {
        None
    } else {
        waypoint::resolve(
            state,
            namespace,
            labels,
            Some(service_account),
            Traffic::Workload,
            &settings.cluster_domain,
        )
    };

    let services = state
        .services_in(namespace)
        .filter(|svc| {
            svc.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| !sel.is_empty() && selector_matches(sel, labels))
        })
        .map(|svc| {
            (
                service::key(namespace, model::name(&svc.metadata), settings),
                api::PortList {
                    ports: service_ports(svc, pod),
                },
            )
        })
        .collect();

    let authorization_policies = selector_policies_for(state, namespace, &settings.root_namespace)
        .filter(|p| {
            p.spec
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(&s.match_labels, labels))
        })
        .map(|p| authorization::key(model::namespace(&p.metadata), model::name(&p.metadata)))
        .collect();

    let service_account = service_account.to_string();
    let workload_name = workload_name(pod);
    Some(api::Workload {
        uid: uid(namespace, name, settings),
        name: name.to_string(),
        namespace: namespace.to_string(),
        service_account,
        node,
        addresses,
        trust_domain: settings.trust_domain.clone(),
        tunnel_protocol: tunnel as i32,
        node_captured,
        waypoint,
        services,
        status: if healthy {
            api::HealthStatus::Healthy
        } else {
            api::HealthStatus::Unhealthy
        } as i32,
        mtls_mode: peer_auth::mtls_mode(state, namespace, labels, settings) as i32,
        authorization_policies,
        canonical_name: first_label(
            labels,
            &[
                "service.istio.io/canonical-name",
                "app.kubernetes.io/name",
                "app",
            ],
        )
        .unwrap_or(&workload_name)
        .to_string(),
        canonical_revision: first_label(
            labels,
            &[
                "service.istio.io/canonical-revision",
                "app.kubernetes.io/version",
                "version",
            ],
        )
        .unwrap_or("latest")
        .to_string(),
        workload_name,
        host_network,
        cluster_id: settings.cluster_id.clone(),
        waypoint_for: own_waypoint
            .map(|gw| waypoint::waypoint_for(gw).to_string())
            .unwrap_or_default(),
        // A waypoint's own pods are reached by agents, never through a waypoint.
        waypoint_only: waypoint_only && gateway_name.is_none(),
    })
}

/// The account the pod runs as: `default` unless it names one.
pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| labels.get(*k)).map(String::as_str)
}

/// The owning Deployment's name (a ReplicaSet "<deployment>-<hash>"), another owner's, or the pod's.
fn workload_name(pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()
        .and_then(|o| o.iter().find(|o| o.controller == Some(true)).or(o.first()));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => o
            .name
            .rsplit_once('-')
            .map_or(o.name.clone(), |(d, _)| d.to_string()),
        Some(o) => o.name.clone(),
        None => model::name(&pod.metadata).to_string(),
    }
}

/// The service's ports with named target ports resolved against this pod's container ports.
/// A name the pod does not declare leaves the port out, as Kubernetes endpoints do.
fn service_ports(svc: &Service, pod: &Pod) -> Vec<api::Port> {
    let container_ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten());
    let named: BTreeMap<&str, i32> = container_ports
        .filter_map(|p| p.name.as_deref().map(|n| (n, p.container_port)))
        .collect();
    svc.spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let target = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(t)) => *t,
                Some(IntOrString::String(n)) => match n.parse::<i32>() {
                    Ok(t) => t,
                    Err(_) => *named.get(n.as_str())?,
                },
            };
            Some(api::Port {
                service_port: p.port as u32,
                target_port: target as u32,
            })
        })
        .collect()
}
