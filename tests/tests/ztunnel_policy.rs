//! L4 authorization and PeerAuthentication at the node agents, end to end.

use ambit_tests::fixtures::{CHANGE, PORT, demo};
use ambit_tests::manifests::{authorization_policy, peer_authentication};
use ambit_tests::mesh::Mesh;
use ambit_tests::{eventually, probe};

/// Connects from `pod` to server-b (on the other node) until the outcome is `allowed`.
fn expect(mesh: &Mesh, pod: &str, allowed: bool, why: &str) {
    expect_to(mesh, pod, "server-b", allowed, why)
}

fn expect_to(mesh: &Mesh, pod: &str, server: &str, allowed: bool, why: &str) {
    let netns = mesh.pod(pod).netns.clone();
    let to = mesh.address(server, PORT);
    eventually(why, CHANGE, || match (probe::hello(&netns, to), allowed) {
        (Ok(_), true) | (Err(_), false) => Ok(()),
        (Ok(h), false) => Err(format!("still allowed: {h}")),
        (Err(e), true) => Err(format!("still refused: {e}")),
    });
}

fn policy(mesh: &Mesh, spec: &str) {
    mesh.write("policy.yaml", &authorization_policy("p", "demo", spec));
}

#[test]
fn policies_apply_to_new_connections_and_close_open_ones() {
    let mesh = demo("ztpol");
    expect(&mesh, "client", true, "no policy: allowed");

    // An open connection that a new DENY covers is closed.
    let mut open =
        probe::connect(&mesh.pod("client").netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&open).unwrap();
    probe::echo(&mut open, b"before").unwrap();
    policy(
        &mesh,
        "  selector: {matchLabels: {app: echo}}\n  action: DENY\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}",
    );
    expect(&mesh, "client", false, "DENY by principal");
    expect_to(
        &mesh,
        "client",
        "server-a",
        false,
        "DENY applies on the same-node path too",
    );
    eventually("the open connection is closed", CHANGE, || {
        probe::is_closed(&mut open)
            .then_some(())
            .ok_or("still open".to_string())
    });
    // Other callers are unaffected: the outsider has no identity, so no principal matches.
    expect(&mesh, "outsider", true, "DENY by principal spares others");

    // DENY by source namespace: plaintext callers have none, so they stay allowed.
    policy(
        &mesh,
        "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [demo]}",
    );
    expect(&mesh, "client", false, "DENY by namespace");
    expect(
        &mesh,
        "outsider",
        true,
        "DENY by namespace spares plaintext",
    );

    // DENY by port.
    policy(
        &mesh,
        &format!("  action: DENY\n  rules:\n  - to:\n    - operation: {{ports: [\"{PORT}\"]}}"),
    );
    expect(&mesh, "client", false, "DENY by port");
    expect(
        &mesh,
        "outsider",
        false,
        "DENY by port applies to plaintext too",
    );

    // ALLOW by ipBlock: only the outsider's address.
    let outsider_ip = mesh.pod("outsider").ip;
    policy(
        &mesh,
        &format!(
            "  action: ALLOW\n  rules:\n  - from:\n    - source: {{ipBlocks: [\"{outsider_ip}/32\"]}}"
        ),
    );
    expect(
        &mesh,
        "client",
        false,
        "ALLOW by ipBlock excludes the client",
    );
    expect(
        &mesh,
        "outsider",
        true,
        "ALLOW by ipBlock admits the outsider",
    );

    // ALLOW by principal.
    policy(
        &mesh,
        "  action: ALLOW\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}",
    );
    expect(
        &mesh,
        "client",
        true,
        "ALLOW by principal admits the client",
    );
    expect(
        &mesh,
        "outsider",
        false,
        "ALLOW by principal needs an identity",
    );

    // An ALLOW rule that only a waypoint could check: the node agent fails closed.
    policy(
        &mesh,
        "  action: ALLOW\n  rules:\n  - to:\n    - operation: {methods: [GET]}",
    );
    expect(
        &mesh,
        "client",
        false,
        "L7-only ALLOW without a waypoint denies",
    );

    mesh.remove("policy.yaml");
    expect(&mesh, "client", true, "policy removed: allowed again");
    expect(&mesh, "outsider", true, "policy removed: allowed again");
}

#[test]
fn strict_mtls_refuses_plaintext_but_not_the_mesh_or_node_probes() {
    let mesh = demo("ztstrict");
    expect(
        &mesh,
        "outsider",
        true,
        "PERMISSIVE (default) accepts plaintext",
    );
    mesh.write("pa.yaml", &peer_authentication("default", "demo", "STRICT"));
    expect(&mesh, "outsider", false, "STRICT refuses plaintext");
    expect(&mesh, "client", true, "STRICT accepts mTLS");
    // The kubelet's probes come from the node itself and keep working.
    let node2 = mesh.topology.node(2).unwrap().netns.clone();
    probe::hello(&node2, mesh.address("server-b", PORT)).expect("node probe under STRICT");
    mesh.write(
        "pa.yaml",
        &peer_authentication("default", "demo", "PERMISSIVE"),
    );
    expect(
        &mesh,
        "outsider",
        true,
        "PERMISSIVE accepts plaintext again",
    );
}
