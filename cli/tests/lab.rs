//! The lab end to end, through the `ambit` binary as a user runs it: `explain` agrees with what
//! connections actually do, `lab down` leaves nothing after a killed `lab up`, and the demo
//! passes. Needs root and the workspace's binaries (`cargo test --workspace` builds them); as
//! root these tests never skip.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::lab::{LAB_UP, TestLab, UP_DEADLINE};

const EXPLAIN_LAB: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: demo, labels: {app: client}}
spec: {nodeName: node1, serviceAccountName: client, containers: [{name: c, image: ambit/client}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: demo, labels: {app: echo}}
spec: {nodeName: node2, serviceAccountName: server, containers: [{name: c, image: ambit/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: local, namespace: demo, labels: {app: local}}
spec: {nodeName: node1, serviceAccountName: local, containers: [{name: c, image: ambit/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy, labels: {app: outsider}}
spec: {nodeName: node1, containers: [{name: c, image: ambit/echo}]}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: demo}
spec: {selector: {app: echo}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: demo}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/client]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-demo, namespace: demo}
spec:
  selector: {matchLabels: {app: local}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [demo]}}]}]
";

/// `explain`'s verdict line.
fn verdict(explain: &str) -> &'static str {
    let line = explain
        .lines()
        .find(|l| l.starts_with("Verdict: "))
        .unwrap_or_else(|| panic!("no verdict in:\n{explain}"));
    if line.contains("ALLOWED") {
        "allowed"
    } else if line.contains("DENIED") {
        "denied"
    } else {
        panic!("unexpected verdict line {line:?}")
    }
}

#[test]
fn explain_agrees_with_the_data_plane() {
    let lab = TestLab::new("lx");
    lab.up(EXPLAIN_LAB);
    // (source, destination, what should happen, which path it exercises)
    let cases = [
        (
            "client",
            "echo:80",
            "denied",
            "HBONE across nodes, DENY by principal",
        ),
        (
            "client",
            "server:8080",
            "denied",
            "HBONE to the pod IP, DENY by principal",
        ),
        (
            "client",
            "local:8080",
            "allowed",
            "same-node short path, ALLOW by namespace",
        ),
        (
            "client",
            "outsider:8080",
            "allowed",
            "passthrough to a pod outside the mesh",
        ),
        (
            "outsider",
            "echo.demo:80",
            "allowed",
            "plaintext in after kube-proxy, no identity",
        ),
        (
            "outsider",
            "demo/local:8080",
            "denied",
            "plaintext in, ALLOW needs namespace demo",
        ),
    ];
    let state = lab.ok(&["get", "pods"]);
    let mut disagreements = Vec::new();
    for (src, dst, expected, path) in cases {
        let explained = lab.ok(&["explain", src, dst]);
        // Connect to the same destination the way explain named it: pods by IP, services by name.
        let target = resolve(&state, dst);
        let out = lab.run(&[
            "exec",
            src,
            "--",
            "ambit",
            "app",
            "connect",
            &target,
            "--timeout",
            "5s",
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let actual = if out.status.success() && stdout.starts_with("hello from") {
            "allowed"
        } else {
            "denied"
        };
        let said = verdict(&explained);
        if said != actual || actual != expected {
            disagreements.push(format!(
                "{src} -> {dst} ({path}): expected {expected}, explain said {said}, the data \
                 plane {actual} ({stdout}{})\n{explained}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(disagreements.is_empty(), "{}", disagreements.join("\n\n"));
}

const WAYPOINT: &str = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: demo}
spec: {gatewayClassName: ambit-waypoint}
";

#[test]
fn explain_names_the_waypoint_the_data_plane_goes_through() {
    let lab = TestLab::new("lw");
    lab.up(&format!("{EXPLAIN_LAB}---\n{WAYPOINT}"));
    lab.ok(&[
        "label",
        "service",
        "demo/echo",
        "istio.io/use-waypoint=waypoint",
    ]);
    let pods = lab.ok(&["get", "pods"]);
    let waypoint_ip = resolve(&pods, "waypoint-waypoint:15008");
    let explained = lab.ok(&["explain", "client", "echo:80", "--path", "/via-waypoint"]);
    assert!(
        explained.contains(
            "Verdict: ALLOWED: the waypoint forwards GET /via-waypoint to service demo/echo;"
        ),
        "{explained}"
    );
    assert!(explained.contains(&waypoint_ip), "{explained}");
    // The request does go through that waypoint: its access log has it.
    let out = lab.ok(&[
        "exec",
        "client",
        "--",
        "ambit",
        "app",
        "connect",
        "echo:80",
        "--http",
        "/via-waypoint",
    ]);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let log = lab.log("demo-waypoint-waypoint-waypoint");
    assert!(log.contains("path=/via-waypoint"), "{log}");
    // A pod outside the mesh is not sent through it (no agent acts for it).
    let explained = lab.ok(&["explain", "outsider", "echo.demo:80"]);
    assert_eq!(verdict(&explained), "allowed", "{explained}");
    let out = lab.connect("outsider", "echo.demo:80");
    assert!(out.starts_with("hello from server"), "{out}");
}

/// `name:port` with a pod name replaced by the pod's IP (from `ambit get pods`); service names
/// stay, for the pod's resolver.
fn resolve(pods: &str, dst: &str) -> String {
    let (host, port) = dst.rsplit_once(':').unwrap();
    let host = host.rsplit('/').next().unwrap();
    pods.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&host))
        .map_or_else(|| dst.to_owned(), |cols| format!("{}:{port}", cols[3]))
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{name}: {cmdline}"));
        }
    }
    found
}

/// The root namespace's iptables rules (what the lab must never touch), without counters.
fn root_rules() -> BTreeSet<String> {
    let out = Command::new("iptables-save")
        .output()
        .expect("iptables-save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with(':'))
        .map(str::to_owned)
        .collect()
}

#[test]
fn lab_down_after_a_killed_lab_up_leaves_nothing() {
    let lab = TestLab::new("lk");
    let rules_before = root_rules();
    let file = lab.dir.path().join("manifests.yaml");
    std::fs::write(&file, EXPLAIN_LAB).unwrap();
    let mut up = {
        let _turn = LAB_UP.lock().unwrap_or_else(|p| p.into_inner());
        lab.command(&["lab", "up", "-f", file.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn lab up")
    };
    // Kill it once the controller is started (or at the end, if it is that fast): the
    // controller, agents and apps it started are then orphans the state file may or may not
    // fully describe.
    let state_file = lab.root().join("state.json");
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&state_file).unwrap_or_default();
        if text.contains("\"controller\": {") || start.elapsed() > UP_DEADLINE {
            break;
        }
        if up.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = up.kill();
    let _ = up.wait();
    assert!(
        !lab.namespaces().is_empty(),
        "lab up had built nothing when it was killed"
    );
    let root = lab.root().display().to_string();
    assert!(
        !processes_mentioning(&root).is_empty(),
        "the lab's processes should be running before lab down"
    );

    let out = lab.ok(&["lab", "down"]);
    assert!(out.contains("lab removed"), "{out}");
    assert_eq!(lab.namespaces(), Vec::<String>::new(), "namespaces left");
    assert_eq!(
        processes_mentioning(&root),
        Vec::<String>::new(),
        "processes left"
    );
    let hosts: Vec<_> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{}-", lab.prefix)))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(hosts, Vec::<String>::new(), "/etc/netns entries left");
    assert!(!lab.root().exists(), "the lab directory is left");
    assert_eq!(
        root_rules(),
        rules_before,
        "the root namespace's rules changed"
    );
    // And from nothing at all, down is still fine.
    lab.ok(&["lab", "down"]);
}

#[test]
fn the_demo_passes() {
    let lab = TestLab::new("ld");
    let out = {
        let _turn = LAB_UP.lock().unwrap_or_else(|p| p.into_inner());
        lab.run(&["demo"])
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ambit demo failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Every observation was as expected."),
        "{stdout}"
    );
    // Every step ran, the waypoint's included.
    assert!(!stdout.contains("Skipped"), "{stdout}");
    assert!(stdout.contains("about 10% went to v2"), "{stdout}");
    assert!(lab.namespaces().is_empty(), "the demo left namespaces");
}

#[test]
fn lab_commands_report_what_they_did() {
    let lab = TestLab::new("lc");
    lab.up(EXPLAIN_LAB);
    let out = lab.run(&["lab", "up"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a lab is already up"),
        "{out:?}"
    );
    // A Deployment's replicas are placed and reachable by service name.
    let file = lab.dir.path().join("web.yaml");
    std::fs::write(
        &file,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\n\
         spec: {replicas: 2, template: {metadata: {labels: {app: web}}, spec: {containers: \
         [{name: w, image: ambit/echo, ports: [{containerPort: 9090}]}]}}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {selector: {app: web}, ports: [{port: 80, targetPort: 9090}]}\n",
    )
    .unwrap();
    let applied = lab.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(
        applied,
        "Deployment shop/web created\nService shop/web created\n"
    );
    let pods = lab.ok(&["get", "pods"]);
    assert!(pods.contains("web-0") && pods.contains("web-1"), "{pods}");
    let out = lab.connect("outsider", "web.shop:80");
    assert!(out.starts_with("hello from web-"), "{out}");
    // Labels: enrolling `shop` captures its pods.
    lab.ok(&[
        "label",
        "namespace",
        "shop",
        "istio.io/dataplane-mode=ambient",
    ]);
    let workloads = lab.ok(&["ztunnel-config", "workloads"]);
    let web0 = workloads.lines().find(|l| l.contains("web-0")).unwrap();
    assert!(web0.contains(" yes "), "{workloads}");
    lab.ok(&["label", "namespace", "shop", "istio.io/dataplane-mode-"]);
    let deleted = lab.ok(&["delete", "-f", file.to_str().unwrap()]);
    assert_eq!(
        deleted,
        "Deployment shop/web deleted\nService shop/web deleted\n"
    );
    assert!(!lab.ok(&["get", "pods"]).contains("web-0"));
    let status = lab.ok(&["lab", "status"]);
    assert!(status.contains("ready (pid"), "{status}");
}

#[test]
fn lab_up_says_starting_waypoints_only_when_one_starts() {
    // A pod whose process exits at once is restarted by the reconcile that starts waypoints
    // (once the controller runs): restarting it starts no waypoint, so none is announced.
    let lab = TestLab::new("lw");
    let file = lab.dir.path().join("crash.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: crash, namespace: demo}\n\
         spec: {containers: [{name: c, image: busybox, command: [sh, -c, 'echo started; exit 3']}]}\n",
    )
    .unwrap();
    let out = {
        let _turn = LAB_UP.lock().unwrap_or_else(|p| p.into_inner());
        lab.run(&["lab", "up", "--nodes", "1", "-f", file.to_str().unwrap()])
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("waypoint"), "{stderr}");
    // It did run twice: by the first reconcile, and again by the one after the agents.
    let log = std::fs::read_to_string(lab.root().join("logs/demo-crash-c.log")).unwrap();
    assert_eq!(log.matches("started").count(), 2, "{log}");
}

#[test]
fn lab_up_without_iptables_names_the_package_not_the_kernel() {
    let lab = TestLab::new("nt");
    // A PATH with `ip` but no iptables: what a fresh machine without the package looks like.
    let bin = lab.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let ip = ["/usr/sbin/ip", "/usr/bin/ip", "/sbin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("iproute2 installed");
    std::os::unix::fs::symlink(ip, bin.join("ip")).unwrap();
    let out = lab
        .command(&["lab", "up"])
        .env("PATH", &bin)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`iptables` is missing") && stderr.contains("apt-get install -y iptables"),
        "{stderr}"
    );
    assert!(!stderr.contains("kernel"), "{stderr}");
}
