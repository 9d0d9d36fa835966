//! Service -> `ambit.v1.Service`: its addresses, ports, and waypoint.

use ambit_proto::api;
use k8s_openapi::api::core::v1::Service;

use super::waypoint::{self, Traffic};
use super::{Settings, selector_matches, workload};
use crate::model::{self, ClusterState};

pub fn hostname(name: &str, namespace: &str, settings: &Settings) -> String {
    format!("{name}.{namespace}.svc.{}", settings.cluster_domain)
}

/// A service's name on the wire: "<namespace>/<hostname>".
pub fn key(namespace: &str, name: &str, settings: &Settings) -> String {
    format!("{namespace}/{}", hostname(name, namespace, settings))
}

/// `None` for services the mesh does not route (ExternalName: DNS-only).
pub fn translate(svc: &Service, state: &ClusterState, settings: &Settings) -> Option<api::Service> {
    let meta = &svc.metadata;
    let (name, namespace) = (model::name(meta), model::namespace(meta));
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let addresses = if headless {
        Vec::new()
    } else {
        let mut ips: Vec<String> = spec.cluster_ips.clone().unwrap_or_default();
        if ips.is_empty() {
            ips.extend(spec.cluster_ip.clone().filter(|ip| !ip.is_empty()));
        }
        ips
    };
    let ports = spec
        .ports
        .iter()
        .flatten()
        // The mesh carries TCP only; UDP and SCTP ports are left to kube-proxy.
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| api::Port {
            service_port: p.port as u32,
            target_port: match &p.target_port {
                Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(t)) => {
                    *t as u32
                }
                // A named target port is resolved per workload (Workload.services).
                _ => 0,
            },
        })
        .collect();
    Some(api::Service {
        name: name.to_string(),
        namespace: namespace.to_string(),
        hostname: hostname(name, namespace, settings),
        addresses,
        ports,
        // A waypoint's own Service never goes through a waypoint: that would loop.
        waypoint: if model::labels(meta).contains_key(waypoint::GATEWAY_NAME_LABEL) {
            None
        } else {
            let account = waypoint::has_account_waypoints(state, namespace)
                .then(|| account(svc, state))
                .flatten();
            waypoint::resolve(
                state,
                namespace,
                model::labels(meta),
                account,
                Traffic::Service,
                &settings.cluster_domain,
            )
        },
        load_balancing: api::LoadBalancingMode::PowerOfTwo as i32,
        headless,
    })
}

/// The service account every pod the service selects runs as, if they share one (and there is
/// at least one): then a waypoint for that account serves the service.
fn account<'a>(svc: &'a Service, state: &'a ClusterState) -> Option<&'a str> {
    let selector = svc
        .spec
        .as_ref()?
        .selector
        .as_ref()
        .filter(|s| !s.is_empty())?;
    let mut accounts = state
        .pods_in(model::namespace(&svc.metadata))
        .filter(|pod| selector_matches(selector, model::labels(&pod.metadata)))
        .map(workload::service_account);
    let first = accounts.next()?;
    accounts.all(|a| a == first).then_some(first)
}
