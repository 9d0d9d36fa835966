//! The lab topology on the real kernel: pods reach each other across and within nodes with their
//! own addresses, teardown leaves nothing behind (namespaces or processes), and topologies with
//! different prefixes coexist. Needs root, as CI has; without it every test fails and says so.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use ambit_cli::lab::netns::{NetnsError, PodInfo, Topology, command_in, in_netns, veth_name};
use common::{AMBIT, Echo, echo_args};

/// Bounds a connect or read that should succeed at once; only a broken topology comes near it.
const IO_DEADLINE: Duration = Duration::from_secs(10);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the network-namespace tests need root (CAP_NET_ADMIN and CAP_SYS_ADMIN): run them as \
         root, as CI does"
    );
}

/// A prefix no other test (in this run or a concurrent one) uses.
fn prefix(test: &str) -> String {
    format!("{test}{}", std::process::id())
}

fn namespaces_of(prefix: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| name.starts_with(&format!("{prefix}-")))
        .map(str::to_owned)
        .collect()
}

/// `ambit app echo` on port 8080 of `pod`.
fn echo_in(pod: &PodInfo) -> Echo {
    let listen = SocketAddr::from((pod.ip, 8080));
    Echo::spawn(echo_args(command_in(&pod.netns, AMBIT), listen, &pod.name))
}

/// Connects from inside `netns` to `server`, sends `ping`, half-closes, and returns the local
/// address and everything the server sent.
fn ping_from(netns: &str, server: SocketAddr) -> (SocketAddr, String) {
    let mut stream = in_netns(netns, move || {
        let stream = TcpStream::connect_timeout(&server, IO_DEADLINE)?;
        stream.set_read_timeout(Some(IO_DEADLINE))?;
        Ok(stream)
    })
    .expect("connect from inside the pod");
    // The socket stays in the pod's namespace although this thread never entered it.
    stream.write_all(b"ping").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    (stream.local_addr().unwrap(), reply)
}

#[test]
fn pods_reach_each_other_across_and_within_nodes_without_nat() {
    require_root();
    let mut topology = Topology::create(&prefix("reach")).unwrap();
    let node1 = topology.add_node(1).unwrap();
    let node2 = topology.add_node(2).unwrap();
    assert_eq!(node2.ip, Ipv4Addr::new(192, 168, 100, 2));
    assert_eq!(node2.pod_cidr.to_string(), "10.244.2.0/24");
    let a = topology.add_pod(1, "a").unwrap();
    let b = topology.add_pod(1, "b").unwrap();
    let c = topology.add_pod(2, "c").unwrap();
    assert_eq!(
        (a.ip, b.ip, c.ip),
        (
            Ipv4Addr::new(10, 244, 1, 2),
            Ipv4Addr::new(10, 244, 1, 3),
            Ipv4Addr::new(10, 244, 2, 2)
        )
    );
    assert_eq!(topology.pod("b"), Some(&b));
    assert_eq!(topology.node(1), Some(&node1));

    let (echo_b, echo_c) = (echo_in(&b), echo_in(&c));
    for (echo, server) in [(&echo_c, "c"), (&echo_b, "b")] {
        let (local, reply) = ping_from(&a.netns, echo.addr);
        assert_eq!(local.ip(), a.ip, "the client socket lives in pod a");
        assert_eq!(reply, format!("hello from {server}; you are {local}\nping"));
        assert_eq!(echo.next_line(), format!("accepted {local}"));
    }

    // The other way, with a client process in the pod: `ambit app connect` over HTTP.
    let echo_a = echo_in(&a);
    let out = command_in(&c.netns, AMBIT)
        .args(["app", "connect", &echo_a.addr.to_string(), "--http", "/x"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "{stdout}");
    assert!(stdout.contains(&format!("\nclient={}:", c.ip)), "{stdout}");
    assert!(stdout.contains("\nserver=a\n"), "{stdout}");

    // No end of any pod veth is in the root namespace.
    let root_links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let root_links = String::from_utf8(root_links.stdout).unwrap();
    for pod in [&a, &b, &c] {
        assert!(!root_links.contains(&veth_name(&pod.name)), "{root_links}");
    }
    topology.destroy().unwrap();
}

/// Reads sysctl `key` (dotted) inside `netns`.
fn sysctl_in(netns: &str, key: &str) -> String {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    in_netns(netns, move || std::fs::read_to_string(path))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn nodes_forward_and_answer_arp_for_their_pods_without_touching_the_root_namespace() {
    require_root();
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let mut topology = Topology::create(&prefix("sysctl")).unwrap();
    let node = topology.add_node(3).unwrap();
    let pod = topology.add_pod(3, "p").unwrap();
    let veth = &pod.node_veth;
    for (key, value) in [
        ("net.ipv4.ip_forward".to_owned(), "1"),
        ("net.ipv4.conf.all.rp_filter".to_owned(), "0"),
        ("net.ipv4.conf.eth0.rp_filter".to_owned(), "0"),
        (format!("net.ipv4.conf.{veth}.rp_filter"), "0"),
        (format!("net.ipv4.conf.{veth}.proxy_arp"), "1"),
        (format!("net.ipv4.neigh.{veth}.proxy_delay"), "0"),
    ] {
        assert_eq!(sysctl_in(&node.netns, &key), value, "{key} on the node");
    }
    let routes = Command::new("ip")
        .args([
            "-n",
            &node.netns,
            "route",
            "show",
            &format!("{}/32", pod.ip),
        ])
        .output()
        .unwrap();
    let routes = String::from_utf8(routes.stdout).unwrap();
    assert!(routes.contains(&format!("dev {veth}")), "{routes}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward
    );
    topology.destroy().unwrap();
}

#[test]
fn a_removed_pod_is_unreachable_and_its_name_can_be_reused() {
    require_root();
    let mut topology = Topology::create(&prefix("remove")).unwrap();
    topology.add_node(1).unwrap();
    let a = topology.add_pod(1, "a").unwrap();
    let b = topology.add_pod(1, "b").unwrap();
    let mut echo_b = echo_in(&b);
    let (_, reply) = ping_from(&a.netns, echo_b.addr);
    assert!(reply.starts_with("hello from b"), "{reply}");

    topology.remove_pod("b").unwrap();
    assert!(echo_b.wait_killed(), "removing a pod kills its processes");
    assert!(topology.pod("b").is_none());
    assert!(!namespaces_of(topology.prefix()).contains(&b.netns));
    let out = command_in(&a.netns, AMBIT)
        .args([
            "app",
            "connect",
            &echo_b.addr.to_string(),
            "--timeout",
            "10s",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the removed pod still answered");

    // Re-added, it gets a fresh address: the old one is reused as late as possible.
    let again = topology.add_pod(1, "b").unwrap();
    assert_eq!(again.ip, Ipv4Addr::new(10, 244, 1, 4));
    let echo = echo_in(&again);
    let (local, reply) = ping_from(&a.netns, echo.addr);
    assert_eq!(reply, format!("hello from b; you are {local}\nping"));
    topology.destroy().unwrap();
}

#[test]
fn destroy_leaves_no_namespace_and_no_process() {
    require_root();
    let mut topology = Topology::create(&prefix("destroy")).unwrap();
    let node = topology.add_node(7).unwrap();
    let pod = topology.add_pod(7, "web").unwrap();
    let mut in_pod = echo_in(&pod);
    let listen = SocketAddr::from((node.ip, 9000));
    let mut on_node = Echo::spawn(echo_args(command_in(&node.netns, AMBIT), listen, "node"));
    let prefix = topology.prefix().to_owned();
    assert_eq!(namespaces_of(&prefix).len(), 3, "lan, node7 and web");

    topology.destroy().unwrap();
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    assert!(in_pod.wait_killed());
    assert!(on_node.wait_killed());
}

#[test]
fn cleanup_removes_a_leaked_topology_and_create_replaces_one() {
    require_root();
    let prefix = prefix("leak");
    let mut leaked = Topology::create(&prefix).unwrap();
    leaked.add_node(1).unwrap();
    leaked.add_node(2).unwrap();
    let pod = leaked.add_pod(2, "db").unwrap();
    let mut echo = echo_in(&pod);
    std::mem::forget(leaked);
    assert_eq!(namespaces_of(&prefix).len(), 4);

    // Creating again starts from scratch: the old nodes and pods are gone.
    let fresh = Topology::create(&prefix).unwrap();
    assert_eq!(namespaces_of(&prefix), vec![format!("{prefix}-lan")]);
    assert!(echo.wait_killed());
    std::mem::forget(fresh);

    Topology::cleanup(&prefix).unwrap();
    assert_eq!(namespaces_of(&prefix), Vec::<String>::new());
    // Nothing left is not an error.
    Topology::cleanup(&prefix).unwrap();
}

#[test]
fn topologies_with_different_prefixes_coexist() {
    require_root();
    // Same node numbers, pod names and addresses in both: only the prefixes differ.
    let mut first = Topology::create(&prefix("left")).unwrap();
    let mut second = Topology::create(&prefix("right")).unwrap();
    let mut pods = Vec::new();
    for topology in [&mut first, &mut second] {
        topology.add_node(1).unwrap();
        topology.add_node(2).unwrap();
        topology.add_pod(1, "client").unwrap();
        pods.push((
            topology.add_pod(2, "server").unwrap(),
            topology.prefix().to_owned(),
        ));
    }
    let echoes: Vec<Echo> = pods
        .iter()
        .map(|(server, prefix)| {
            let listen = SocketAddr::from((server.ip, 8080));
            Echo::spawn(echo_args(command_in(&server.netns, AMBIT), listen, prefix))
        })
        .collect();
    for (topology, echo) in [&first, &second].into_iter().zip(&echoes) {
        let client = topology.pod("client").unwrap();
        let (_, reply) = ping_from(&client.netns, echo.addr);
        let expected = format!("hello from {}; you are {}:", topology.prefix(), client.ip);
        assert!(reply.starts_with(&expected), "{reply}");
    }
    first.destroy().unwrap();
    // The other topology is untouched by the first one's teardown.
    let client = second.pod("client").unwrap();
    let (_, reply) = ping_from(&client.netns, echoes[1].addr);
    assert!(reply.starts_with(&format!("hello from {}", second.prefix())));
    second.destroy().unwrap();
}

#[test]
fn mistakes_are_refused_without_changing_anything() {
    require_root();
    let mut topology = Topology::create(&prefix("refuse")).unwrap();
    topology.add_node(1).unwrap();
    topology.add_pod(1, "a").unwrap();
    let before = namespaces_of(topology.prefix());
    let refused = [
        topology.add_node(1).unwrap_err(),
        topology.add_node(0).unwrap_err(),
        topology.add_pod(1, "a").unwrap_err(),
        topology.add_pod(3, "b").unwrap_err(),
        topology.add_pod(1, "node2").unwrap_err(),
        topology.add_pod(1, "Upper").unwrap_err(),
        topology.remove_pod("nobody").unwrap_err(),
    ];
    assert!(matches!(refused[0], NetnsError::NodeExists(1)));
    assert!(matches!(refused[1], NetnsError::InvalidNode(0)));
    assert!(matches!(refused[2], NetnsError::PodExists(_)));
    assert!(matches!(refused[3], NetnsError::NoSuchNode(3)));
    assert!(matches!(refused[4], NetnsError::InvalidName { .. }));
    assert!(matches!(refused[5], NetnsError::InvalidName { .. }));
    assert!(matches!(refused[6], NetnsError::NoSuchPod(_)));
    assert_eq!(namespaces_of(topology.prefix()), before);
    assert!(matches!(
        Topology::create("has-dash"),
        Err(NetnsError::InvalidName { .. })
    ));
    let missing = format!("{}-missing", topology.prefix());
    let err = in_netns(&missing, || Ok(())).unwrap_err();
    assert!(err.to_string().contains(&missing), "{err}");
    topology.destroy().unwrap();
}
