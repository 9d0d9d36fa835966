//! Translation table tests: Kubernetes YAML in, mesh resources out, one group per object kind.
//! AuthorizationPolicy has its own file, `translate_policies.rs`.

mod translate_common;

use ambit_controller::translate::Snapshot;
use ambit_proto::api;
use translate_common::*;

#[test]
fn namespace_label_captures_pods_and_pods_can_opt_out_or_in() {
    let yaml = [
        AMBIENT_NS,
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod(
            "shop",
            "batch",
            ", istio.io/dataplane-mode: none",
            "10.244.1.6",
        ),
        &pod("legacy", "old", "", "10.244.1.7"),
        &pod(
            "legacy",
            "early",
            ", istio.io/dataplane-mode: ambient",
            "10.244.1.8",
        ),
    ]
    .concat();
    let s = snapshot(&yaml);
    let cart = workload(&s, "shop", "cart");
    assert!(cart.node_captured);
    assert_eq!(cart.tunnel_protocol, api::TunnelProtocol::Hbone as i32);
    assert_eq!(cart.addresses, ["10.244.1.5"]);
    assert_eq!(cart.service_account, "cart-sa");
    assert_eq!(cart.node, "node-1");
    assert_eq!(cart.trust_domain, "cluster.local");
    let batch = workload(&s, "shop", "batch");
    assert!(!batch.node_captured);
    assert_eq!(batch.tunnel_protocol, api::TunnelProtocol::None as i32);
    assert!(!workload(&s, "legacy", "old").node_captured);
    assert!(workload(&s, "legacy", "early").node_captured);
}

#[test]
fn sidecar_host_network_not_ready_and_finished_pods() {
    let yaml = format!(
        r#"{AMBIENT_NS}
apiVersion: v1
kind: Pod
metadata: {{name: sidecar, namespace: shop, annotations: {{sidecar.istio.io/status: "{{}}"}}}}
spec: {{nodeName: node-1, containers: [{{name: app, image: x}}, {{name: istio-proxy, image: proxyv2}}]}}
status: {{podIP: 10.244.1.9}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostnet, namespace: shop}}
spec: {{nodeName: node-1, hostNetwork: true, containers: [{{name: app, image: x}}]}}
status: {{podIP: 192.168.100.1}}
---
apiVersion: v1
kind: Pod
metadata: {{name: starting, namespace: shop}}
spec: {{nodeName: node-1, containers: [{{name: app, image: x}}]}}
status: {{podIP: 10.244.1.10, conditions: [{{type: Ready, status: "False"}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: done, namespace: shop}}
spec: {{nodeName: node-1, containers: [{{name: app, image: x}}]}}
status: {{phase: Succeeded, podIP: 10.244.1.11}}
---
apiVersion: v1
kind: Pod
metadata: {{name: pending, namespace: shop}}
spec: {{containers: [{{name: app, image: x}}]}}
"#
    );
    let s = snapshot(&yaml);
    let sidecar = workload(&s, "shop", "sidecar");
    assert!(
        !sidecar.node_captured,
        "the sidecar captures its own traffic"
    );
    assert_eq!(
        sidecar.tunnel_protocol,
        api::TunnelProtocol::Hbone as i32,
        "but it speaks HBONE"
    );
    let hostnet = workload(&s, "shop", "hostnet");
    assert!(!hostnet.node_captured && hostnet.host_network);
    assert_eq!(hostnet.tunnel_protocol, api::TunnelProtocol::None as i32);
    assert_eq!(
        workload(&s, "shop", "starting").status,
        api::HealthStatus::Unhealthy as i32
    );
    assert!(
        !s.workloads
            .keys()
            .any(|k| k.ends_with("/done") || k.ends_with("/pending"))
    );
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.10
  selector: {app: cart}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: admin, port: 9090, targetPort: 9091}
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: cart-headless, namespace: shop}
spec: {clusterIP: None, selector: {app: cart}, ports: [{port: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: external, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
---"#;

#[test]
fn services_vips_headless_and_ports() {
    let yaml = [
        AMBIENT_NS,
        SERVICES,
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod("shop", "other", "", "10.244.1.6"),
    ]
    .concat();
    let s = snapshot(&yaml);
    let svc = &s.services["shop/cart.shop.svc.cluster.local"];
    assert_eq!(svc.addresses, ["10.96.0.10"]);
    assert!(!svc.headless);
    let ports: Vec<(u32, u32)> = svc
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        [(80, 0), (9090, 9091)],
        "UDP is not meshed; named ports resolve per pod"
    );
    let headless = &s.services["shop/cart-headless.shop.svc.cluster.local"];
    assert!(headless.headless && headless.addresses.is_empty());
    assert!(!s.services.keys().any(|k| k.contains("external")));

    let cart = workload(&s, "shop", "cart");
    let backs = &cart.services["shop/cart.shop.svc.cluster.local"].ports;
    let resolved: Vec<(u32, u32)> = backs
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        resolved,
        [(80, 8080), (9090, 9091)],
        "the named port 'http' is 8080 on this pod"
    );
    assert!(
        cart.services
            .contains_key("shop/cart-headless.shop.svc.cluster.local")
    );
    assert!(workload(&s, "shop", "other").services.is_empty());
}

fn waypoint_gateway(ns: &str, name: &str, class: &str, waypoint_for: Option<&str>) -> String {
    let label = waypoint_for
        .map(|f| format!("\n  labels: {{istio.io/waypoint-for: {f}}}"))
        .unwrap_or_default();
    format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: {ns}{label}
spec:
  gatewayClassName: {class}
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---"#
    )
}

#[test]
fn use_waypoint_follows_istio_rules() {
    let ns = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp}}
---
apiVersion: v1
kind: Service
metadata: {name: opted-out, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.0.11, selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: special, namespace: shop, labels: {istio.io/use-waypoint: other, istio.io/use-waypoint-namespace: infra}}
spec: {clusterIP: 10.96.0.12, selector: {app: x}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: wp, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: wp}}
spec: {clusterIP: 10.96.0.13, selector: {gateway.networking.k8s.io/gateway-name: wp}, ports: [{port: 15008}]}
---"#;
    let yaml = [
        ns,
        SERVICES,
        &waypoint_gateway("shop", "wp", "ambit-waypoint", None),
        &waypoint_gateway("infra", "other", "istio-waypoint", Some("all")),
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod(
            "shop",
            "wp-pod",
            ", gateway.networking.k8s.io/gateway-name: wp",
            "10.244.1.20",
        ),
    ]
    .concat();
    let s = snapshot(&yaml);
    // waypoint-for defaults to "service": services use it, workload-addressed traffic does not.
    assert_eq!(
        waypoint_host(&s.services["shop/cart.shop.svc.cluster.local"].waypoint).as_deref(),
        Some("wp.shop.svc.cluster.local")
    );
    assert_eq!(
        s.services["shop/cart.shop.svc.cluster.local"]
            .waypoint
            .as_ref()
            .unwrap()
            .hbone_mtls_port,
        15008
    );
    assert_eq!(workload(&s, "shop", "cart").waypoint, None);
    assert_eq!(
        s.services["shop/opted-out.shop.svc.cluster.local"].waypoint,
        None
    );
    assert_eq!(
        waypoint_host(&s.services["shop/special.shop.svc.cluster.local"].waypoint).as_deref(),
        Some("other.infra.svc.cluster.local")
    );
    // The waypoint itself never loops through a waypoint, and says what it serves.
    assert_eq!(s.services["shop/wp.shop.svc.cluster.local"].waypoint, None);
    let wp = workload(&s, "shop", "wp-pod");
    assert_eq!(wp.waypoint, None);
    assert_eq!(wp.waypoint_for, "service");

    // waypoint-for: workload flips it; a non-waypoint class or a missing gateway means none.
    let yaml = [
        ns,
        SERVICES,
        &waypoint_gateway("shop", "wp", "ambit-waypoint", Some("workload")),
        &pod("shop", "cart", "", "10.244.1.5"),
    ]
    .concat();
    let s = snapshot(&yaml);
    assert_eq!(
        waypoint_host(&workload(&s, "shop", "cart").waypoint).as_deref(),
        Some("wp.shop.svc.cluster.local")
    );
    assert_eq!(
        s.services["shop/cart.shop.svc.cluster.local"].waypoint,
        None
    );
    for gw in [waypoint_gateway("shop", "wp", "nginx", None), String::new()] {
        let yaml = [ns, SERVICES, &gw, &pod("shop", "cart", "", "10.244.1.5")].concat();
        let s = snapshot(&yaml);
        assert_eq!(
            s.services["shop/cart.shop.svc.cluster.local"].waypoint,
            None
        );
    }
}

#[test]
fn peer_authentication_resolves_workload_then_namespace_then_mesh() {
    let pa = |ns: &str, name: &str, selector: &str, mode: &str| {
        format!(
            "\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{{selector}mtls: {{mode: {mode}}}}}\n---"
        )
    };
    let pods = [
        AMBIENT_NS,
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod("shop", "db", "", "10.244.1.6"),
        &pod("legacy", "old", "", "10.244.1.7"),
    ]
    .concat();
    let mode =
        |s: &Snapshot, ns, name| api::MtlsMode::try_from(workload(s, ns, name).mtls_mode).unwrap();

    let s = snapshot(&pods);
    assert_eq!(
        mode(&s, "shop", "cart"),
        api::MtlsMode::Permissive,
        "nothing set: PERMISSIVE"
    );

    let yaml = [pods.as_str(), &pa("istio-system", "mesh", "", "STRICT")].concat();
    let s = snapshot(&yaml);
    assert_eq!(mode(&s, "legacy", "old"), api::MtlsMode::Strict);

    let yaml = [
        pods.as_str(),
        &pa("istio-system", "mesh", "", "STRICT"),
        &pa("shop", "ns", "", "PERMISSIVE"),
        &pa(
            "shop",
            "db-only",
            "selector: {matchLabels: {app: db}}, ",
            "DISABLE",
        ),
        &pa("legacy", "unset", "", "UNSET"),
    ]
    .concat();
    let s = snapshot(&yaml);
    assert_eq!(
        mode(&s, "shop", "cart"),
        api::MtlsMode::Permissive,
        "namespace overrides mesh"
    );
    assert_eq!(
        mode(&s, "shop", "db"),
        api::MtlsMode::Disable,
        "workload overrides namespace"
    );
    assert_eq!(
        mode(&s, "legacy", "old"),
        api::MtlsMode::Strict,
        "UNSET inherits the mesh"
    );
}

#[test]
fn translation_is_deterministic_whatever_the_input_order() {
    let docs = [
        AMBIENT_NS.to_string(),
        SERVICES.to_string(),
        pod("shop", "cart", "", "10.244.1.5"),
        pod("shop", "db", "", "10.244.1.6"),
        policy("shop", "p", "  rules: [{}]"),
    ];
    let forward = snapshot(&docs.concat());
    let mut reversed = docs.clone();
    reversed.reverse();
    assert_eq!(forward, snapshot(&reversed.concat()));
    assert_eq!(forward, snapshot(&docs.concat()));
}
