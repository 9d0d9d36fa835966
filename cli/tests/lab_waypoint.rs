//! A waypoint in the lab, configured the way users configure one: Gateway API HTTPRoute (query
//! match, weights), an `HTTPFault` named by an ExtensionRef, a DestinationRule and an L7
//! AuthorizationPolicy, all translated by the controller and applied by the waypoint, checked
//! from a client pod and in the waypoint's access log. Needs root, as CI runs it.

mod common;

use common::lab::TestLab;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: node1, containers: [{name: c, image: ambit/client}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: echo, version: v1}}
spec: {nodeName: node2, containers: [{name: echo, image: ambit/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server-v2, namespace: demo, labels: {app: echo, version: v2}}
spec: {nodeName: node1, containers: [{name: echo, image: ambit/echo, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: demo}
spec: {selector: {app: echo, version: v1}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v2, namespace: demo}
spec: {selector: {app: echo, version: v2}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: ambit-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: demo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - matches: [{queryParams: [{name: version, value: v2}]}]
    backendRefs: [{name: echo-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /teapot}}]
    filters: [{type: ExtensionRef, extensionRef: {group: ambit.dev, kind: HTTPFault, name: teapot}}]
    backendRefs: [{name: echo-v1, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-routed-by, value: httproute}]}
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: ambit.dev/v1alpha1
kind: HTTPFault
metadata: {name: teapot, namespace: demo}
spec: {abort: {httpStatus: 418}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo-v1, namespace: demo}
spec: {host: echo-v1, trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-secrets, namespace: demo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/secret*"]}}]}]
"#;

/// `GET <path>` from the client pod to Service echo: the status line and the server's name.
fn get(lab: &TestLab, path: &str) -> (String, String, String) {
    let out = lab.ok(&[
        "exec", "client", "--", "ambit", "app", "connect", "echo:80", "--http", path,
    ]);
    let status = out.lines().next().unwrap_or_default().to_owned();
    let server = out
        .lines()
        .find_map(|l| l.strip_prefix("server="))
        .unwrap_or_default()
        .to_owned();
    (status, server, out)
}

#[test]
fn the_controller_configures_the_waypoint_from_httproute_faults_and_policies() {
    let lab = TestLab::new("lr");
    lab.up(MESH);

    // The catch-all rule: v1 only, with the header the route adds.
    for _ in 0..5 {
        let (status, server, out) = get(&lab, "/hello");
        assert!(status.starts_with("HTTP/1.1 200"), "{out}");
        assert!(server.contains("server") && !server.contains("v2"), "{out}");
        assert!(out.contains("header x-routed-by: httproute"), "{out}");
    }
    // A query-parameter match sends to v2.
    let (status, server, out) = get(&lab, "/hello?version=v2");
    assert!(
        status.starts_with("HTTP/1.1 200") && server.contains("server-v2"),
        "{out}"
    );
    // The HTTPFault the rule names aborts every request with its status.
    let (status, _, out) = get(&lab, "/teapot");
    assert!(status.starts_with("HTTP/1.1 418"), "{out}");
    // L7 policy at the waypoint: 403 with the policy named.
    let (status, _, out) = get(&lab, "/secret/keys");
    assert!(status.starts_with("HTTP/1.1 403"), "{out}");

    // The waypoint saw and logged each of them.
    let log = std::fs::read_to_string(lab.root().join("logs/demo-waypoint-waypoint-waypoint.log"))
        .unwrap_or_default();
    for needle in [
        "path=/teapot",
        "status=418",
        "path=/secret/keys",
        "status=403",
    ] {
        assert!(
            log.contains(needle),
            "{needle} not in the waypoint's log:\n{log}"
        );
    }

    // The route changes while the lab runs: the waypoint follows (v2 for everything).
    let file = lab.dir.path().join("route.yaml");
    std::fs::write(
        &file,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: demo}\n\
         spec: {parentRefs: [{group: '', kind: Service, name: echo}], rules: [{backendRefs: [{name: echo-v2, port: 80}]}]}\n",
    )
    .unwrap();
    lab.ok(&["apply", "-f", file.to_str().unwrap()]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, server, out) = get(&lab, "/teapot");
        if server.contains("server-v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new route never applied: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Only via the waypoint: the pod dialled directly (bypassing the waypoint's L7 policy) is
    // refused by its node agent, while the service, through the waypoint, still answers.
    lab.ok(&["label", "namespace", "demo", "ambit.dev/waypoint-only=true"]);
    let pods = lab.ok(&["get", "pods"]);
    let server_ip = pods
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&"server"))
        .map(|cols| cols[3].to_owned())
        .unwrap_or_else(|| panic!("no server pod in {pods}"));
    let direct = format!("{server_ip}:8080");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = lab.run(&[
            "exec", "client", "--", "ambit", "app", "connect", &direct, "--http", "/secret",
        ]);
        if !out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bypass was never refused: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, _, out) = get(&lab, "/hello");
    assert!(status.starts_with("HTTP/1.1 200"), "{out}");
}
