use std::collections::HashMap;

use ambit_proto::api::{
    self, GatewayAddress, HealthStatus, NamespacedHostname, Port, PortList, Resource,
    TunnelProtocol, resource::Kind, type_url,
};

use super::*;
use crate::state::Store;

const NODE: &str = "node1";

fn workload(name: &str, node: &str, ip: &str, captured: bool) -> api::Workload {
    api::Workload {
        uid: format!("c//Pod/demo/{name}"),
        name: name.into(),
        namespace: "demo".into(),
        service_account: name.into(),
        node: node.into(),
        addresses: vec![ip.into()],
        tunnel_protocol: if captured {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        } as i32,
        node_captured: captured,
        ..Default::default()
    }
}

fn backing(mut w: api::Workload, service: &str, target: u32) -> api::Workload {
    w.services.insert(
        format!("demo/{service}.demo.svc.cluster.local"),
        PortList {
            ports: vec![Port {
                service_port: 80,
                target_port: target,
            }],
        },
    );
    w
}

fn service(name: &str, vip: &str, waypoint: Option<GatewayAddress>) -> api::Service {
    api::Service {
        name: name.into(),
        namespace: "demo".into(),
        hostname: format!("{name}.demo.svc.cluster.local"),
        addresses: vec![vip.into()],
        ports: vec![Port {
            service_port: 80,
            target_port: 8080,
        }],
        waypoint,
        ..Default::default()
    }
}

fn waypoint_address() -> GatewayAddress {
    GatewayAddress {
        destination: Some(api::gateway_address::Destination::Hostname(
            NamespacedHostname {
                namespace: "demo".into(),
                hostname: "waypoint.demo.svc.cluster.local".into(),
            },
        )),
        hbone_mtls_port: 15008,
    }
}

fn workload_resources(workloads: Vec<api::Workload>) -> Vec<Resource> {
    workloads
        .into_iter()
        .map(|w| Resource {
            name: w.uid.clone(),
            version: "1".into(),
            kind: Some(Kind::Workload(w)),
        })
        .collect()
}

fn store(workloads: Vec<api::Workload>, services: Vec<api::Service>) -> Arc<MeshState> {
    let store = Store::new("cluster.local");
    store
        .apply(type_url::WORKLOAD, workload_resources(workloads), vec![])
        .unwrap();
    let s = services
        .into_iter()
        .map(|s| Resource {
            name: format!("{}/{}", s.namespace, s.name),
            version: "1".into(),
            kind: Some(Kind::Service(s)),
        })
        .collect();
    store.apply(type_url::SERVICE, s, vec![]).unwrap();
    store.current()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The HBONE route's tunnel address, authority, expected identity and waypoint.
fn hbone(
    route: Route,
) -> (
    SocketAddr,
    SocketAddr,
    ambit_proto::Identity,
    Option<String>,
) {
    match route {
        Route::Hbone {
            hbone_address,
            authority,
            identity,
            waypoint,
            ..
        } => (hbone_address, authority, identity, waypoint),
        other => panic!("expected HBONE, got {other:?}"),
    }
}

#[test]
fn workloads_by_where_they_are_and_what_they_speak() {
    let state = store(
        vec![
            workload("local", NODE, "10.244.1.5", true),
            workload("remote", "node2", "10.244.2.5", true),
            workload("legacy", "node2", "10.244.2.9", false),
        ],
        vec![],
    );
    let b = Balancer::default();
    assert!(matches!(
        outbound(&state, NODE, addr("10.244.1.5:8080"), &b),
        Route::Local { target, .. } if target == addr("10.244.1.5:8080")
    ));
    match outbound(&state, NODE, addr("10.244.2.5:8080"), &b) {
        Route::Hbone {
            hbone_address,
            authority,
            identity,
            waypoint,
            ..
        } => {
            assert_eq!(hbone_address, addr("10.244.2.5:15008"));
            assert_eq!(authority, addr("10.244.2.5:8080"));
            assert_eq!(
                identity.to_string(),
                "spiffe://cluster.local/ns/demo/sa/remote"
            );
            assert_eq!(waypoint, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        outbound(&state, NODE, addr("10.244.2.9:8080"), &b),
        Route::Passthrough {
            destination: Some(_),
            ..
        }
    ));
    assert!(matches!(
        outbound(&state, NODE, addr("1.1.1.1:443"), &b),
        Route::Passthrough { destination: None, target, .. } if target == addr("1.1.1.1:443")
    ));
}

#[test]
fn service_vips_round_robin_over_healthy_endpoints_with_target_ports() {
    let mut sick = backing(workload("c", "node2", "10.244.2.7", true), "echo", 9090);
    sick.status = HealthStatus::Unhealthy as i32;
    let state = store(
        vec![
            backing(workload("a", NODE, "10.244.1.5", true), "echo", 8080),
            backing(workload("b", "node2", "10.244.2.5", true), "echo", 9090),
            sick,
        ],
        vec![service("echo", "10.96.0.10", None)],
    );
    let b = Balancer::default();
    let mut targets = HashMap::new();
    for _ in 0..10 {
        let target = match outbound(&state, NODE, addr("10.96.0.10:80"), &b) {
            Route::Local {
                target, service, ..
            } => {
                assert!(service.is_some());
                target
            }
            Route::Hbone { authority, .. } => authority,
            other => panic!("{other:?}"),
        };
        *targets.entry(target).or_insert(0) += 1;
    }
    assert_eq!(targets.get(&addr("10.244.1.5:8080")), Some(&5));
    assert_eq!(targets.get(&addr("10.244.2.5:9090")), Some(&5));
    // A port the service does not have is not the service: the VIP itself is passed through.
    assert!(matches!(
        outbound(&state, NODE, addr("10.96.0.10:81"), &b),
        Route::Passthrough { .. }
    ));
}

#[test]
fn waypoints_keep_the_original_destination_and_fail_closed() {
    let wp = backing(
        workload("waypoint", "node2", "10.244.2.100", true),
        "waypoint",
        15008,
    );
    let mut direct = workload("pod", "node2", "10.244.2.5", true);
    direct.waypoint = Some(waypoint_address());
    let state = store(
        vec![wp, direct],
        vec![
            service("echo", "10.96.0.10", Some(waypoint_address())),
            service("waypoint", "10.96.0.99", None),
        ],
    );
    let b = Balancer::default();
    for dst in ["10.96.0.10:80", "10.244.2.5:8080"] {
        let (hbone_address, authority, identity, waypoint) =
            hbone(outbound(&state, NODE, addr(dst), &b));
        assert_eq!(hbone_address, addr("10.244.2.100:15008"));
        assert_eq!(authority, addr(dst));
        assert_eq!(identity.service_account(), "waypoint");
        assert_eq!(waypoint.as_deref(), Some("demo/waypoint"));
    }
    // No waypoint instance: refused, never sent around the waypoint.
    let mut orphan = workload("pod", "node2", "10.244.2.5", true);
    orphan.waypoint = Some(waypoint_address());
    let state = store(vec![orphan], vec![]);
    assert!(matches!(
        outbound(&state, NODE, addr("10.244.2.5:8080"), &b),
        Route::Refuse { reason } if reason.contains("waypoint")
    ));
}

#[test]
fn a_service_without_endpoints_is_refused() {
    let state = store(vec![], vec![service("echo", "10.96.0.10", None)]);
    assert!(matches!(
        outbound(&state, NODE, addr("10.96.0.10:80"), &Balancer::default()),
        Route::Refuse { reason } if reason.contains("no healthy endpoint")
    ));
}

#[test]
fn bad_config_is_rejected_whole() {
    let store = Store::new("cluster.local");
    let good = workload("a", NODE, "10.244.1.5", true);
    let bad = workload("b", NODE, "not-an-ip", true);
    let err = store
        .apply(
            type_url::WORKLOAD,
            workload_resources(vec![good, bad]),
            vec![],
        )
        .unwrap_err();
    assert!(err.to_string().contains("not-an-ip"), "{err}");
    assert!(store.current().workloads.is_empty(), "nothing applied");
}
