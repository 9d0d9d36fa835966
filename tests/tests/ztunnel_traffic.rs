//! The node agent end to end: two nodes in network namespaces, the real controller, real agents
//! with real TPROXY rules, and echo servers in pods.

use std::net::SocketAddr;

use ambit_tests::fixtures::{CHANGE, PORT, VIP, demo, seen_ip};
use ambit_tests::{eventually, probe};

#[test]
fn captured_traffic_is_mtls_keeps_the_client_ip_and_spreads_over_endpoints() {
    let mesh = demo("zt1");
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

    // The log level changes at run time, from the node only.
    let node2 = mesh.topology.node(2).unwrap().netns.clone();
    let admin: SocketAddr = "127.0.0.1:15000".parse().unwrap();
    let (status, _) = probe::http(&node2, admin, "POST", "/logging?level=debug").unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        probe::http_get(&node2, admin, "/logging").unwrap().1.trim(),
        "debug"
    );
    let (status, body) =
        probe::http(&node2, admin, "POST", "/logging?level=no=such=level").unwrap();
    assert_eq!(status, 400, "{body}");

    // Data flows both ways through the tunnel.
    let mut stream = probe::connect(&client.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&stream).unwrap();
    probe::echo(&mut stream, &[7u8; 100_000]).unwrap();
}

#[test]
fn between_nodes_the_wire_carries_only_tls_to_15008() {
    let mesh = demo("ztwire");
    let client = mesh.pod("client").clone();
    let outsider = mesh.pod("outsider").clone();
    let node2 = mesh.topology.node(2).unwrap().netns.clone();
    let secret = b"ambit-secret-payload-7f3a9c";
    let plain = b"ambit-plaintext-control-51d2";

    let sniffer = ambit_cli::lab::wire::Sniffer::start(&node2, &mesh.scratch()).unwrap();
    let mut stream = probe::connect(&client.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&stream).unwrap();
    probe::echo(&mut stream, secret).unwrap();
    // The control: a pod outside the mesh sends in the clear, and the capture must see it.
    let mut stream = probe::connect(&outsider.netns, mesh.address("server-b", PORT)).unwrap();
    probe::read_line(&stream).unwrap();
    probe::echo(&mut stream, plain).unwrap();
    let captured = sniffer.stop().unwrap();

    assert!(
        captured.contains(plain),
        "the capture saw no plaintext: it proves nothing ({} packets)",
        captured.count("tcp")
    );
    assert!(
        !captured.contains(secret),
        "captured payload crossed the wire in the clear"
    );
    assert!(
        captured.count("tcp dst port 15008") > 0,
        "no HBONE traffic seen"
    );
    // Every packet from the client pod to server-b went to 15008 (nothing to 8080 directly).
    let direct = format!(
        "src host {} and dst host {} and dst port {PORT}",
        client.ip,
        mesh.pod("server-b").ip
    );
    assert_eq!(
        captured.count(&direct),
        0,
        "the client reached the server without the tunnel"
    );
    // TLS 1.3 application data records (content type 23, legacy version 3.3).
    assert!(captured.contains(&[0x17, 0x03, 0x03]));
}
