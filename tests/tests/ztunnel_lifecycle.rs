//! The node agent through changes of membership, outages, restarts and certificate rotation.

use std::time::Duration;

use ambit_tests::fixtures::{CHANGE, PORT, demo, demo_with, namespaces, pods_opted_out, seen_ip};
use ambit_tests::mesh::Mesh;
use ambit_tests::{eventually, probe};

/// Whether node `n`'s capture rules mention `ip`.
/// Node `n`'s mangle table without iptables-save's timestamp comments.
fn mangle(mesh: &Mesh, n: u8) -> String {
    mesh.mangle_rules(n)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn captured(mesh: &Mesh, n: u8, ip: &str) -> bool {
    mesh.mangle_rules(n).contains(&format!("{ip}/32"))
}

fn wait_captured(mesh: &Mesh, n: u8, ip: &str, want: bool) {
    eventually(&format!("{ip} captured = {want}"), CHANGE, || {
        (captured(mesh, n, ip) == want)
            .then_some(())
            .ok_or_else(|| mesh.mangle_rules(n))
    });
}

#[test]
fn namespace_label_and_pod_opt_out_control_capture() {
    let mesh = demo("ztlabel");
    let client = mesh.pod("client").clone();
    let ip = client.ip.to_string();
    assert!(captured(&mesh, 1, &ip));
    assert!(!captured(&mesh, 1, &mesh.pod("outsider").ip.to_string()));

    // The namespace leaves the mesh: its pods' rules go, and traffic flows directly.
    mesh.write("namespaces.yaml", &namespaces(false));
    wait_captured(&mesh, 1, &ip, false);
    wait_captured(&mesh, 2, &mesh.pod("server-b").ip.to_string(), false);
    let hello = probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
    assert_eq!(seen_ip(&hello), ip);

    // Back in the mesh, but the client opts out.
    mesh.write("namespaces.yaml", &namespaces(true));
    mesh.write("pods.yaml", &pods_opted_out(&mesh, &["client"]));
    wait_captured(&mesh, 2, &mesh.pod("server-b").ip.to_string(), true);
    wait_captured(&mesh, 1, &mesh.pod("server-a").ip.to_string(), true);
    assert!(!captured(&mesh, 1, &ip), "an opted-out pod is not captured");
    // Uncaptured client to a captured server: plaintext in, PERMISSIVE.
    let hello = probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
    assert_eq!(seen_ip(&hello), ip);
}

#[test]
fn traffic_survives_a_controller_outage() {
    let mut mesh = demo("ztoutage");
    let client = mesh.pod("client").clone();
    let mut open = probe::connect(&client.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&open).unwrap();

    mesh.stop_controller();
    probe::echo(&mut open, b"still flowing").unwrap();
    for target in ["server-b", "server-a"] {
        probe::hello(&client.netns, mesh.address(target, PORT)).expect("new connection");
    }
    let dump = mesh.config_dump(1);
    assert_eq!(dump["config"]["connected"], false, "{dump}");

    mesh.start_controller(&[]);
    eventually("the agent reconnects", Duration::from_secs(30), || {
        let dump = mesh.config_dump(1);
        (dump["config"]["connected"] == true)
            .then_some(())
            .ok_or(dump.to_string())
    });
    probe::echo(&mut open, b"and after").unwrap();
}

#[test]
fn agent_restart_resumes_traffic_without_duplicating_rules() {
    let mut mesh = demo("ztrestart");
    let client = mesh.pod("client").clone();
    let ip = client.ip.to_string();
    let rules_before = mangle(&mesh, 1);

    // A crash leaves the rules in place: captured traffic fails closed, never goes around.
    mesh.stop_agent(1, false);
    assert!(probe::hello(&client.netns, mesh.address("server-b", PORT)).is_err());
    mesh.start_agent(1);
    let hello = probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
    assert_eq!(seen_ip(&hello), ip);
    let rules = mangle(&mesh, 1);
    assert_eq!(
        rules, rules_before,
        "a restart changes nothing in the rules"
    );
    assert_eq!(rules.matches("-j AMBIT-PREROUTING").count(), 1, "{rules}");
    assert_eq!(rules.matches(&format!("-s {ip}/32")).count(), 1, "{rules}");

    // A clean stop removes everything it installed.
    mesh.stop_agent(1, true);
    let rules = mangle(&mesh, 1);
    assert!(!rules.contains("AMBIT"), "{rules}");
    mesh.start_agent(1);
    probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
}

#[test]
fn certificates_rotate_under_traffic_without_dropping_connections() {
    let mesh = demo_with("ztrotate", &["--cert-ttl", "1m"]);
    let client = mesh.pod("client").clone();
    let expiry = |dump: &serde_json::Value| -> Vec<(String, u64)> {
        dump["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["identity"].as_str().unwrap().to_string(),
                    c["not_after"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    };
    let first = eventually("certificates issued", CHANGE, || {
        let e = expiry(&mesh.config_dump(1));
        (!e.is_empty() && e.iter().all(|(_, t)| *t > 0))
            .then_some(e.clone())
            .ok_or(format!("{e:?}"))
    });

    let mut open = probe::connect(&client.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&open).unwrap();
    // Renewal is due at half the lifetime (30 s); keep traffic going until it has happened.
    let renewed = || {
        let now = expiry(&mesh.config_dump(1));
        now.iter()
            .all(|(id, t)| first.iter().any(|(i, f)| i == id && t > f))
    };
    let mut rounds = 0;
    while !renewed() {
        rounds += 1;
        assert!(rounds < 900, "certificates not renewed within 90 s");
        probe::echo(&mut open, format!("round {rounds}").as_bytes()).expect("connection kept");
        std::thread::sleep(Duration::from_millis(100));
    }
    probe::echo(&mut open, b"after rotation").unwrap();
    // New connections use the new certificate.
    probe::hello(&client.netns, mesh.address("server-b", PORT)).unwrap();
}
