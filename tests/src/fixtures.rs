//! The standard test cluster: two nodes, an ambient namespace with a client and two servers behind
//! a service, and a namespace outside the mesh.

use std::net::SocketAddr;
use std::time::Duration;

use crate::manifests::{self, Pod};
use crate::mesh::Mesh;

pub const PORT: u16 = 8080;
pub const VIP: &str = "10.96.0.10:80";
/// An upper bound for a config change to take effect on a loaded CI machine (it takes well
/// under a second; bench/ measures it).
pub const CHANGE: Duration = Duration::from_secs(10);

/// demo (ambient): client + server-a on node1, server-b on node2; legacy (not in the mesh):
/// outsider on node1. Service `echo` (VIP 10.96.0.10:80 -> 8080) selects both servers.
pub fn demo(prefix: &str) -> Mesh {
    demo_with(prefix, &[])
}

/// [`demo`] with extra controller flags.
pub fn demo_with(prefix: &str, controller_flags: &[&str]) -> Mesh {
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
    mesh.start_controller(controller_flags);
    mesh.start_agent(1);
    mesh.start_agent(2);
    for pod in ["server-a", "server-b", "outsider", "client"] {
        mesh.start_echo(pod, PORT);
    }
    mesh
}

pub fn namespaces(demo_ambient: bool) -> String {
    let labels: &[(&str, &str)] = if demo_ambient {
        &[("istio.io/dataplane-mode", "ambient")]
    } else {
        &[]
    };
    manifests::namespace("demo", labels) + &manifests::namespace("legacy", &[])
}

pub fn pods(mesh: &Mesh) -> String {
    pods_opted_out(mesh, &[])
}

/// [`pods`], with `opted_out` labelled `istio.io/dataplane-mode: none`.
pub fn pods_opted_out(mesh: &Mesh, opted_out: &[&str]) -> String {
    let def = |name: &'static str, ns: &'static str, sa: &'static str, app: &'static str| {
        let info = mesh.pod(name);
        let mut labels = vec![("app", app)];
        if opted_out.contains(&name) {
            labels.push(("istio.io/dataplane-mode", "none"));
        }
        manifests::pod(&Pod {
            name,
            namespace: ns,
            node: if info.node == 1 { "node1" } else { "node2" },
            ip: info.ip.to_string(),
            service_account: sa,
            labels,
        })
    };
    def("client", "demo", "client", "client")
        + &def("server-a", "demo", "server", "echo")
        + &def("server-b", "demo", "server", "echo")
        + &def("outsider", "legacy", "default", "outsider")
}

/// The `you are <ip:port>` part of a greeting, as an IP.
pub fn seen_ip(greeting: &str) -> String {
    let addr = greeting
        .rsplit("you are ")
        .next()
        .unwrap_or_default()
        .trim();
    addr.parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| panic!("unexpected greeting {greeting:?}"))
}
