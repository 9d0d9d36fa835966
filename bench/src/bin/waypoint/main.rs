//! Waypoint benchmark: HTTP/1.1 requests between lab pods (network namespaces) over four paths,
//! measured in the same run:
//! - **direct**: client pod -> server pod, outside the mesh;
//! - **agents**: client pod -> node agent -> HBONE/mTLS -> node agent -> server pod;
//! - **waypoint**: client pod -> agent -> waypoint -> agent -> server pods, the service labelled
//!   `istio.io/use-waypoint` and split 90/10 between its two versions by an HTTPRoute;
//! - **nginx**: client pod -> nginx in a pod of its own -> the two server pods, weighted 90/10
//!   (nginx as a peer L7 proxy on the same machine, without the mesh's mTLS);
//! - **nginx-tls**: the same nginx doing the waypoint's work with TLS on both sides: a front nginx
//!   (where the client's agent would be) -> TLS -> the measured nginx -> TLS -> a back nginx (where
//!   the server's agent would be) -> the server pods (`ambit_bench::nginx` has the details).
//!
//! Each path gets an open-loop run at a fixed rate (latency counted from the scheduled send
//! time; the proxy's CPU and RSS per 1,000 requests/s) and a closed-loop run (the most the path
//! carries over a fixed number of keep-alive connections; requests/s per core of the proxy).
//!
//! Needs root, nginx (`apt-get install nginx-light`) and release builds of the binaries:
//! `cargo build --release -p ambit-controller -p ambit-ztunnel -p ambit-waypoint -p ambit-bench`,
//! then `target/release/waypoint-bench`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use ambit_bench::pod::in_pod;
use ambit_bench::proc::{self, Owned};
use ambit_bench::{Table, http1, micros, nginx, pace, percentiles};
use ambit_cli::lab::netns::command_in;
use ambit_tests::manifests::{self, Pod};
use ambit_tests::mesh::{CONTROLLER, Mesh};
use ambit_tests::{binaries, eventually, probe};
use anyhow::{Context, Result};
use clap::Parser;

mod backends;
use backends::{Served, counts, split, start_backends};

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: pace::Load,
    /// Connections of the closed-loop run.
    #[arg(long, default_value_t = 32)]
    closed_connections: u32,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Run only these parts (comma-separated): open, closed.
    #[arg(long, value_delimiter = ',', default_values_t = ["open".to_string(), "closed".into()])]
    only: Vec<String>,
    /// Paths to measure (comma-separated): direct, agents, waypoint, nginx, nginx-tls.
    #[arg(long, value_delimiter = ',', default_values_t = ["direct".to_string(), "agents".into(), "waypoint".into(), "nginx".into(), "nginx-tls".into()])]
    paths: Vec<String>,
}

const HTTP: u16 = 8080;
const WEB_VIP: &str = "10.96.0.20";
const WAYPOINT_VIP: &str = "10.96.0.15";

/// A pod: name, node, namespace, labels.
type PodSpec = (
    &'static str,
    u8,
    &'static str,
    Vec<(&'static str, &'static str)>,
);

/// One way from a client pod to the backends, and the proxy whose cost is measured.
struct Path {
    label: &'static str,
    client: &'static str,
    target: SocketAddr,
    host: &'static str,
    /// The L7 proxy on the path, if any, and whether its children count (nginx's workers).
    proxy: Option<(u32, bool)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut mesh = Mesh::new("wbench", 2);
    let pods: [PodSpec; 10] = [
        ("mesh-client", 1, "m", vec![("app", "client")]),
        (
            "mesh-server-a",
            2,
            "m",
            vec![("app", "web"), ("version", "a")],
        ),
        (
            "mesh-server-b",
            2,
            "m",
            vec![("app", "web"), ("version", "b")],
        ),
        (
            "waypoint",
            1,
            "m",
            vec![
                ("gateway.networking.k8s.io/gateway-name", "waypoint"),
                // A waypoint speaks HBONE itself: never captured.
                ("istio.io/dataplane-mode", "none"),
            ],
        ),
        ("direct-client", 1, "d", vec![("app", "client")]),
        ("direct-server-a", 2, "d", vec![("app", "web")]),
        ("direct-server-b", 2, "d", vec![("app", "web")]),
        ("nginx", 1, "d", vec![("app", "nginx")]),
        ("nginx-front", 1, "d", vec![("app", "nginx-front")]),
        ("nginx-back", 2, "d", vec![("app", "nginx-back")]),
    ];
    let mut yaml = manifests::namespace("m", &[("istio.io/dataplane-mode", "ambient")])
        + &manifests::namespace("d", &[]);
    for (name, node, ns, labels) in pods {
        let info = mesh.add_pod(name, node);
        yaml += &manifests::pod(&Pod {
            name,
            namespace: ns,
            node: if node == 1 { "node1" } else { "node2" },
            ip: info.ip.to_string(),
            service_account: name,
            labels,
        });
    }
    yaml += &manifests::service(
        "waypoint",
        "m",
        WAYPOINT_VIP,
        &[("gateway.networking.k8s.io/gateway-name", "waypoint")],
        15008,
        15008,
    );
    yaml += &format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: m, labels: {{istio.io/use-waypoint: waypoint}}}}\n\
         spec: {{clusterIP: {WEB_VIP}, selector: {{app: web}}, ports: [{{name: http, port: 80, targetPort: {HTTP}}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web-a, namespace: m}}\n\
         spec: {{clusterIP: 10.96.0.21, selector: {{app: web, version: a}}, ports: [{{name: http, port: 80, targetPort: {HTTP}}}]}}\n---\n\
         apiVersion: v1\nkind: Service\nmetadata: {{name: web-b, namespace: m}}\n\
         spec: {{clusterIP: 10.96.0.22, selector: {{app: web, version: b}}, ports: [{{name: http, port: 80, targetPort: {HTTP}}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: web-split, namespace: m}}\n\
         spec: {{parentRefs: [{{group: \"\", kind: Service, name: web, port: 80}}], rules: [{{backendRefs: \
         [{{name: web-a, port: 80, weight: 90}}, {{name: web-b, port: 80, weight: 10}}]}}]}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: waypoint, namespace: m}}\n\
         spec: {{gatewayClassName: ambit-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n---\n"
    );
    mesh.write("bench.yaml", &yaml);
    mesh.start_controller(&[]);
    mesh.start_agent(1);
    mesh.start_agent(2);
    let served = start_backends(&mesh)?;
    let waypoint = start_waypoint(&mesh)?;
    let (nginx, _nginx_peers) = start_nginx(&mesh)?;

    let paths = [
        Path {
            label: "direct",
            client: "direct-client",
            target: mesh.address("direct-server-a", HTTP),
            host: "web",
            proxy: None,
        },
        Path {
            label: "agents",
            client: "mesh-client",
            target: mesh.address("mesh-server-a", HTTP),
            host: "web",
            proxy: None,
        },
        Path {
            label: "waypoint",
            client: "mesh-client",
            target: SocketAddr::new(WEB_VIP.parse()?, 80),
            host: "web.m.svc.cluster.local",
            proxy: Some((waypoint.0.id(), false)),
        },
        Path {
            label: "nginx",
            client: "direct-client",
            target: mesh.address("nginx", 80),
            host: "web",
            proxy: Some((nginx.0.id(), true)),
        },
        Path {
            label: "nginx-tls",
            client: "direct-client",
            target: mesh.address("nginx-front", 80),
            host: "web",
            proxy: Some((nginx.0.id(), true)),
        },
    ];
    let paths: Vec<&Path> = paths
        .iter()
        .filter(|p| args.paths.iter().any(|a| a == p.label))
        .collect();
    for p in &paths {
        warm_up(&mesh, p)?;
    }
    let run = |part: &str| args.only.iter().any(|p| p == part);
    if run("open") {
        open(&mesh, &paths, &args)?;
    }
    if run("closed") {
        closed(&mesh, &paths, &args, &served)?;
    }
    println!(
        "\nWaypoint peak RSS (VmHWM): {:.1} MiB",
        proc::status_mib(waypoint.0.id(), "VmHWM:")?
    );
    Ok(())
}

/// `ambit-waypoint` in its pod, as the lab starts it, with access logs off (Istio's default).
fn start_waypoint(mesh: &Mesh) -> Result<Owned> {
    let data = mesh.scratch().join("data");
    let token = data.join("tokens/waypoint-m.waypoint.token");
    eventually(
        "the controller wrote the waypoint's token",
        Duration::from_secs(60),
        || token.is_file().then_some(()).ok_or("not yet".to_string()),
    );
    let netns = mesh.pod("waypoint").netns.clone();
    let log = std::fs::File::create(mesh.scratch().join("logs/waypoint.log"))?;
    let child = command_in(&netns, binaries::path("ambit-waypoint"))
        .args(["--waypoint", "m/waypoint", "--controller-addr", CONTROLLER])
        .arg("--root-cert")
        .arg(data.join("ca/root-cert.pem"))
        .arg("--token-file")
        .arg(&token)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting ambit-waypoint")?;
    let child = Owned(child);
    let admin: SocketAddr = "127.0.0.1:15000".parse()?;
    eventually(
        "waypoint ready",
        Duration::from_secs(60),
        || match probe::http_get(&netns, admin, "/ready")? {
            (200, _) => Ok(()),
            (s, body) => Err(format!("{s} {body}")),
        },
    );
    Ok(child)
}

/// nginx in its own pod, measured: on port 80 the two backends weighted 90/10 over plain HTTP;
/// on port 443, behind TLS, the same split to a back nginx over TLS (one port per backend, as the
/// server's agent learns the destination from the CONNECT authority). Also starts the front and
/// back instances of the TLS path, returned second.
fn start_nginx(mesh: &Mesh) -> Result<(Owned, Vec<Owned>)> {
    let root = mesh.scratch().join("nginx");
    std::fs::create_dir_all(&root)?;
    let tls = nginx::Tls::generate(&root)?;
    let (a, b) = (
        mesh.address("direct-server-a", HTTP),
        mesh.address("direct-server-b", HTTP),
    );
    let back = |port| mesh.address("nginx-back", port);
    let measured = nginx::upstream("web", &[(a, 9), (b, 1)])
        + &nginx::upstream("web_tls", &[(back(8443), 9), (back(8444), 1)])
        + &nginx::server(80, None, "web", false)
        + &nginx::server(443, Some(&tls), "web_tls", true);
    let front = nginx::upstream("mid", &[(mesh.address("nginx", 443), 1)])
        + &nginx::server(80, None, "mid", true);
    let back_conf = nginx::upstream("a", &[(a, 1)])
        + &nginx::upstream("b", &[(b, 1)])
        + &nginx::server(8443, Some(&tls), "a", false)
        + &nginx::server(8444, Some(&tls), "b", false);
    let mut started = Vec::new();
    for (pod, conf) in [
        ("nginx", measured),
        ("nginx-front", front),
        ("nginx-back", back_conf),
    ] {
        let netns = mesh.pod(pod).netns.clone();
        started.push(Owned(nginx::start(&netns, &root.join(pod), &conf)?));
        let addr = mesh.address(pod, if pod == "nginx-back" { 8443 } else { 80 });
        if pod != "nginx-back" {
            eventually(&format!("{pod} answers"), Duration::from_secs(30), || {
                probe::http_get(&netns, addr, "/").map(drop)
            });
        }
    }
    let measured = started.remove(0);
    Ok((measured, started))
}

/// Until a request goes through (the agents learn the waypoint from the controller).
fn warm_up(mesh: &Mesh, p: &Path) -> Result<()> {
    let netns = mesh.pod(p.client).netns.clone();
    let (target, host) = (p.target, p.host.to_string());
    let start = Instant::now();
    loop {
        let host = host.clone();
        let ok = in_pod(&netns, move || async move {
            let mut conn = http1::Conn::open(target, &host).await?;
            conn.get().await
        });
        match ok {
            Ok(200) => return Ok(()),
            _ if start.elapsed() > Duration::from_secs(60) => {
                anyhow::bail!("{}: no 200 from {} after 60 s: {ok:?}", p.label, p.target)
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// CPU seconds of the path's proxy so far (0 without one).
fn proxy_cpu(p: &Path) -> Result<f64> {
    Ok(match p.proxy {
        Some((pid, true)) => proc::cpu_seconds_with_children(pid)?,
        Some((pid, false)) => proc::cpu_seconds(pid)?,
        None => 0.0,
    })
}

/// RSS of the path's proxy (nginx: master and workers together), MiB.
fn proxy_rss(p: &Path) -> Result<f64> {
    Ok(match p.proxy {
        Some((pid, children)) => {
            let mut total = proc::status_mib(pid, "VmRSS:")?;
            if children {
                for c in proc::children(pid)? {
                    total += proc::status_mib(c, "VmRSS:").unwrap_or(0.0);
                }
            }
            total
        }
        None => 0.0,
    })
}

fn open(mesh: &Mesh, paths: &[&Path], args: &Args) -> Result<()> {
    println!(
        "\n## Open loop: {} req/s over {} connections, {} s\n",
        args.load.rate, args.load.connections, args.seconds
    );
    let table = Table::new(&[
        "path",
        "p50",
        "p99",
        "added p99 vs direct",
        "errors",
        "proxy vCPU per 1k req/s",
        "proxy RSS",
        "proxy RSS per 1k req/s",
    ]);
    let mut direct_p99 = None;
    let per_1k = f64::from(args.load.rate) / 1000.0;
    for p in paths {
        let netns = mesh.pod(p.client).netns.clone();
        let (target, host) = (p.target, p.host.to_string());
        let conns = args.load.connections;
        let mut opened = in_pod(&netns, move || async move {
            let mut opened = Vec::new();
            for _ in 0..conns {
                opened.push(http1::Conn::open(target, &host).await?.into_blocking()?);
            }
            Ok(opened)
        })?;
        let cpu_before = proxy_cpu(p)?;
        let start = Instant::now();
        let length = Duration::from_secs(args.seconds);
        let mut out = http1::open_loop(&mut opened, args.load.rate, length)?;
        let elapsed = start.elapsed().as_secs_f64();
        let cpu = proxy_cpu(p)? - cpu_before;
        let rss = proxy_rss(p)?;
        let pc = percentiles(&mut out.latencies);
        if p.label == "direct" {
            direct_p99 = Some(pc.p99);
        }
        let (cpu_cell, rss_cell, rss_1k) = match p.proxy {
            Some(_) => (
                format!("{:.3}", cpu / elapsed / per_1k),
                format!("{rss:.1} MiB"),
                format!("{:.1} MiB", rss / per_1k),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        table.row(&[
            p.label.into(),
            micros(pc.p50),
            micros(pc.p99),
            direct_p99
                .map(|d| micros(pc.p99.saturating_sub(d)))
                .unwrap_or_else(|| "-".into()),
            out.errors.to_string(),
            cpu_cell,
            rss_cell,
            rss_1k,
        ]);
    }
    Ok(())
}

fn closed(mesh: &Mesh, paths: &[&Path], args: &Args, served: &Served) -> Result<()> {
    println!(
        "\n## Closed loop: {} keep-alive connections, {} s\n",
        args.closed_connections, args.seconds
    );
    let table = Table::new(&[
        "path",
        "req/s",
        "p50",
        "p99",
        "errors",
        "proxy cores busy",
        "req/s per proxy core",
        "% to server a/b",
    ]);
    for p in paths {
        let netns = mesh.pod(p.client).netns.clone();
        let (target, host) = (p.target, p.host.to_string());
        let (conns, secs) = (args.closed_connections, args.seconds);
        let cpu_before = proxy_cpu(p)?;
        let served_before = counts(served);
        let start = Instant::now();
        let mut out = in_pod(&netns, move || {
            http1::closed_loop(target, host, conns, secs)
        })?;
        let elapsed = start.elapsed().as_secs_f64();
        let cores = (proxy_cpu(p)? - cpu_before) / elapsed;
        let rate = out.latencies.len() as f64 / elapsed;
        let pc = percentiles(&mut out.latencies);
        let (cores_cell, per_core) = match p.proxy {
            Some(_) => (format!("{cores:.2}"), format!("{:.0}", rate / cores)),
            None => ("-".into(), "-".into()),
        };
        table.row(&[
            p.label.into(),
            format!("{rate:.0}"),
            micros(pc.p50),
            micros(pc.p99),
            out.errors.to_string(),
            cores_cell,
            per_core,
            split(served, p.client, &served_before),
        ]);
    }
    Ok(())
}
