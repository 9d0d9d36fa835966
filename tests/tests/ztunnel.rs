//! The node agent end to end: two nodes in network namespaces, the real controller, real agents
//! with real TPROXY rules, and echo servers in pods.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_tests::manifests::{self, Pod};
use ambit_tests::mesh::Mesh;
use ambit_tests::{eventually, probe};

const PORT: u16 = 8080;
const VIP: &str = "10.96.0.10:80";
const CHANGE: Duration = Duration::from_secs(10);

/// demo (ambient): client + server-a on node1, server-b on node2; legacy (not in the mesh):
/// outsider on node1. Service `echo` (VIP 10.96.0.10:80 -> 8080) selects both servers.
fn mesh(prefix: &str) -> Mesh {
    let mut mesh = Mesh::new(prefix, 2);
    for (name, node) in [
        ("client", 1),
        ("server-a", 1),
        ("server-b", 2),
        ("outsider", 1),
    ] {
        mesh.add_pod(name, node);
    }
    mesh.write("namespaces.yaml", &namespaces(true));
    mesh.write("pods.yaml", &pods(&mesh));
    mesh.write(
        "service.yaml",
        &manifests::service("echo", "demo", "10.96.0.10", &[("app", "echo")], 80, PORT),
    );
    mesh.start_controller(&[]);
    mesh.start_agent(1);
    mesh.start_agent(2);
    for pod in ["server-a", "server-b", "outsider", "client"] {
        mesh.start_echo(pod, PORT);
    }
    mesh
}

fn namespaces(demo_ambient: bool) -> String {
    let labels: &[(&str, &str)] = if demo_ambient {
        &[("istio.io/dataplane-mode", "ambient")]
    } else {
        &[]
    };
    manifests::namespace("demo", labels) + &manifests::namespace("legacy", &[])
}

fn pods(mesh: &Mesh) -> String {
    let def = |name: &'static str, ns: &'static str, sa: &'static str, app: &'static str| {
        let info = mesh.pod(name);
        manifests::pod(&Pod {
            name,
            namespace: ns,
            node: if info.node == 1 { "node1" } else { "node2" },
            ip: info.ip.to_string(),
            service_account: sa,
            labels: vec![("app", app)],
        })
    };
    def("client", "demo", "client", "client")
        + &def("server-a", "demo", "server", "echo")
        + &def("server-b", "demo", "server", "echo")
        + &def("outsider", "legacy", "default", "outsider")
}

/// The `you are <ip:port>` part of a greeting, as an IP.
fn seen_ip(greeting: &str) -> String {
    let addr = greeting
        .rsplit("you are ")
        .next()
        .unwrap_or_default()
        .trim();
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| panic!("unexpected greeting {greeting:?}"))
}

#[test]
fn captured_traffic_is_mtls_keeps_the_client_ip_and_spreads_over_endpoints() {
    let mesh = mesh("zt1");
    let client = mesh.pod("client").clone();
    let client_ip = client.ip.to_string();

    // Cross-node, captured at both ends: the server sees the client pod's own address.
    let hello = probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
    assert!(hello.starts_with("hello from server-b"), "{hello}");
    assert_eq!(seen_ip(&hello), client_ip);

    // The destination agent knows who called: the client's SPIFFE identity, in the access log
    // and in Istio's metrics.
    let identity = "spiffe://cluster.local/ns/demo/sa/client";
    eventually("access log names the client", CHANGE, || {
        let log = mesh.read_log("agent-node2");
        log.lines()
            .any(|l| l.contains("access") && l.contains(identity) && l.contains("path=hbone"))
            .then_some(())
            .ok_or_else(|| "no access line yet".to_string())
    });
    let (_, metrics) = mesh.agent_admin(2, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{identity}\""))
                && l.contains("connection_security_policy=\"mutual_tls\"")),
        "{metrics}"
    );

    // Same node: the short path, still the client's own address.
    let hello = probe::hello(&client.netns, mesh.address("server-a", PORT)).unwrap();
    assert!(hello.starts_with("hello from server-a"), "{hello}");
    assert_eq!(seen_ip(&hello), client_ip);

    // A service VIP spreads over the endpoints on both nodes.
    let vip: SocketAddr = VIP.parse().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let hello = probe::hello(&client.netns, vip).unwrap();
        seen.insert(hello.split(';').next().unwrap().to_string());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["hello from server-a", "hello from server-b"]
    );

    // Out of the mesh: passthrough to a non-mesh pod, and plaintext in from it (PERMISSIVE).
    let hello = probe::hello(&client.netns, mesh.address("outsider", PORT)).unwrap();
    assert_eq!(seen_ip(&hello), client_ip);
    let outsider = mesh.pod("outsider").clone();
    let hello = probe::hello(&outsider.netns, mesh.address("server-b", PORT)).unwrap();
    assert_eq!(seen_ip(&hello), outsider.ip.to_string());

    // Data flows both ways through the tunnel.
    let mut stream = probe::connect(&client.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&stream).unwrap();
    probe::echo(&mut stream, &[7u8; 100_000]).unwrap();
}
