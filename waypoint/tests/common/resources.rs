//! The config a controller would send: services, workloads and routes in the test namespace.

use ambit_proto::api::{self, resource::Kind};

use super::NS;

pub fn hostname(name: &str) -> String {
    format!("{name}.{NS}.svc.cluster.local")
}

pub fn resource(name: &str, kind: Kind) -> api::Resource {
    api::Resource {
        name: name.into(),
        version: "1".into(),
        kind: Some(kind),
    }
}

/// A service at `vip:80` that uses the test waypoint.
pub fn service(name: &str, vip: &str) -> api::Resource {
    resource(
        &format!("{NS}/{name}"),
        Kind::Service(api::Service {
            name: name.into(),
            namespace: NS.into(),
            hostname: hostname(name),
            addresses: vec![vip.into()],
            ports: vec![api::Port {
                service_port: 80,
                target_port: 0,
            }],
            waypoint: Some(api::GatewayAddress {
                destination: Some(api::gateway_address::Destination::Hostname(
                    api::NamespacedHostname {
                        namespace: NS.into(),
                        hostname: hostname("waypoint"),
                    },
                )),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        }),
    )
}

/// A captured pod speaking HBONE; `services` are (hostname, service port, target port).
pub fn workload(
    name: &str,
    ns: &str,
    sa: &str,
    ip: &str,
    services: &[(&str, u32, u16)],
) -> api::Resource {
    resource(
        &format!("cluster/core/Pod/{ns}/{name}"),
        Kind::Workload(api::Workload {
            uid: format!("cluster/core/Pod/{ns}/{name}"),
            name: name.into(),
            namespace: ns.into(),
            service_account: sa.into(),
            addresses: vec![ip.into()],
            tunnel_protocol: api::TunnelProtocol::Hbone as i32,
            node_captured: true,
            workload_name: name.into(),
            services: services
                .iter()
                .map(|(host, port, target)| {
                    (
                        format!("{NS}/{host}"),
                        api::PortList {
                            ports: vec![api::Port {
                                service_port: *port,
                                target_port: u32::from(*target),
                            }],
                        },
                    )
                })
                .collect(),
            ..Default::default()
        }),
    )
}

/// A backend reference to the service `name` with `weight`.
pub fn backend_ref(name: &str, weight: u32) -> api::BackendRef {
    api::BackendRef {
        namespace: NS.into(),
        hostname: hostname(name),
        port: 0,
        weight,
    }
}

/// An HTTPRoute on the service `parent` with `rules`.
pub fn route(name: &str, parent: &str, rules: Vec<api::RouteRule>) -> api::Route {
    api::Route {
        name: name.into(),
        namespace: NS.into(),
        parents: vec![api::ParentRef {
            kind: "Service".into(),
            namespace: NS.into(),
            name: parent.into(),
            port: 0,
        }],
        hostnames: Vec::new(),
        rules,
        creation_timestamp: 0,
    }
}

pub fn path_prefix(p: &str) -> api::RouteMatch {
    api::RouteMatch {
        path: Some(api::PathMatch {
            kind: Some(api::path_match::Kind::Prefix(p.into())),
        }),
        ..Default::default()
    }
}
