//! Controller benchmark: 10,000 pods, 1,000 services, 500 policies, 50 subscribed node agents.
//!
//! Runs the real `ambit-controller` binary (release build, next to this one) in standalone mode
//! on a generated manifest directory, connects 50 node-agent clients over TLS gRPC, and measures:
//! - time from start to ready (parse, translate and publish the first snapshot);
//! - the time for all 50 clients to receive and ACK their first snapshot;
//! - the controller's RSS (current and peak) with everything connected;
//! - for repeated single-pod changes (one manifest file rewritten), the latency until all 50
//!   clients hold the change, p50/p99. It includes the manifest poll interval (10 ms here).
//!
//! Run: `cargo build --release -p ambit-controller && cargo run --release -p ambit-bench --bin controller-bench`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ambit_bench::{Table, percentiles};
use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::{self, DeltaDiscoveryRequest, type_url};
use ambit_proto::tls::TrustRoots;
use ambit_proto::{Identity, grpc};
use anyhow::{Context, Result, bail};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    #[arg(long, default_value_t = 100)]
    pods_per_namespace: usize,
    #[arg(long, default_value_t = 10)]
    services_per_namespace: usize,
    #[arg(long, default_value_t = 5)]
    policies_per_namespace: usize,
    #[arg(long, default_value_t = 50)]
    clients: usize,
    #[arg(long, default_value_t = 40)]
    changes: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async { tokio::spawn(run(args)).await? })
}

fn pod_yaml(out: &mut String, ns: usize, i: usize, args: &Args, generation: usize) {
    let node = (ns * args.pods_per_namespace + i) % args.clients;
    let svc = i % args.services_per_namespace;
    let ip = pod_ip(ns, i, generation);
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{i}, namespace: ns-{ns}, labels: {{app: svc-{svc}, version: v1}}}}\n\
         spec: {{nodeName: node-{node}, serviceAccountName: sa-{svc}, containers: [{{name: app, image: echo, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
         status: {{podIP: {ip}, conditions: [{{type: Ready, status: \"True\"}}]}}\n---\n"
    );
}

/// A pod's IP: generation 0 is the original, every change (1, 2, ...) moves it to another one,
/// however many changes a run makes.
fn pod_ip(ns: usize, i: usize, generation: usize) -> String {
    let octet = if generation == 0 {
        100
    } else {
        101 + (generation - 1) % 150
    };
    format!("10.{octet}.{ns}.{}", i % 250 + 1)
}

/// One file per namespace: the namespace, its pods, services and policies.
fn namespace_file(ns: usize, args: &Args, changed_pod: Option<(usize, usize)>) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{istio.io/dataplane-mode: ambient}}}}\n---\n"
    );
    for i in 0..args.pods_per_namespace {
        let generation = match changed_pod {
            Some((pod, g)) if pod == i => g,
            _ => 0,
        };
        pod_yaml(&mut out, ns, i, args, generation);
    }
    for s in 0..args.services_per_namespace {
        let _ = write!(
            out,
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{s}, namespace: ns-{ns}}}\n\
             spec: {{clusterIP: 10.96.{ns}.{}, selector: {{app: svc-{s}}}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n---\n",
            s + 1
        );
    }
    for p in 0..args.policies_per_namespace {
        let _ = write!(
            out,
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: policy-{p}, namespace: ns-{ns}}}\n\
             spec: {{selector: {{matchLabels: {{app: svc-{p}}}}}, rules: [{{from: [{{source: {{principals: [cluster.local/ns/ns-{ns}/sa/sa-{}]}}}}], to: [{{operation: {{ports: [\"8080\"]}}}}]}}]}}\n---\n",
            (p + 1) % args.services_per_namespace
        );
    }
    out
}

fn free_port() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn controller_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.parent().context("exe dir")?.join("ambit-controller");
    if !path.exists() {
        bail!(
            "{} not found: run `cargo build --release -p ambit-controller` first",
            path.display()
        );
    }
    Ok(path)
}

async fn admin_get(admin: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(admin).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn rss_mib(pid: u32) -> Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

struct Killer(Child);
impl Drop for Killer {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Received workload updates, as (client, pod name, address, when).
type Seen = (usize, String, String, Instant);

async fn client(
    id: usize,
    channel: tonic::transport::Channel,
    token: String,
    synced: mpsc::Sender<usize>,
    seen: mpsc::UnboundedSender<Seen>,
) -> Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let node = api::Node {
        id: format!("bench~node-{id}"),
        role: api::NodeRole::NodeAgent as i32,
        node_name: format!("node-{id}"),
        ..Default::default()
    };
    for (i, t) in [
        type_url::WORKLOAD,
        type_url::SERVICE,
        type_url::AUTHORIZATION,
    ]
    .iter()
    .enumerate()
    {
        tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| node.clone()),
            type_url: t.to_string(),
            resource_names_subscribe: vec!["*".into()],
            ..Default::default()
        })
        .await?;
    }
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let mut stream = ConfigDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(256 << 20)
        .delta_config(req)
        .await?
        .into_inner();
    let mut initial = 0;
    while let Some(r) = stream.message().await? {
        let now = Instant::now();
        tx.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await?;
        if initial < 3 {
            initial += 1;
            if initial == 3 {
                synced.send(id).await?;
            }
            continue;
        }
        for res in &r.resources {
            if let Some(api::resource::Kind::Workload(w)) = &res.kind {
                let _ = seen.send((id, w.name.clone(), w.addresses.join(","), now));
            }
        }
    }
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let manifests = tempfile::tempdir()?;
    let data = tempfile::tempdir()?;
    let write_ns = |ns: usize, changed: Option<(usize, usize)>| -> Result<()> {
        let path = manifests.path().join(format!("ns-{ns}.yaml"));
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, namespace_file(ns, &args, changed))?;
        std::fs::rename(&tmp, &path)?; // atomic: the controller never sees half a file
        Ok(())
    };
    for ns in 0..args.namespaces {
        write_ns(ns, None)?;
    }
    let (grpc_addr, admin) = (free_port()?, free_port()?);
    let start = Instant::now();
    let child = Command::new(controller_binary()?)
        .args(["--manifests".as_ref(), manifests.path().as_os_str()])
        .args(["--data-dir".as_ref(), data.path().as_os_str()])
        .args([
            "--grpc-addr",
            &grpc_addr.to_string(),
            "--admin-addr",
            &admin.to_string(),
            "--reload-interval",
            "10ms",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let _killer = Killer(child);
    loop {
        if let Ok((200, _)) = admin_get(admin, "/ready").await {
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            bail!("controller not ready after 120 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = start.elapsed();
    let (_, dump) = admin_get(admin, "/debug/config_dump").await?;

    let roots = TrustRoots::from_pem(&std::fs::read_to_string(
        data.path().join("ca/root-cert.pem"),
    )?)?;
    let me: Identity = "spiffe://cluster.local/ns/ambit-system/sa/ambit-controller".parse()?;
    let (synced_tx, mut synced_rx) = mpsc::channel(args.clients);
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let connect_start = Instant::now();
    for id in 0..args.clients {
        let token =
            std::fs::read_to_string(data.path().join(format!("tokens/node-node-{id}.token")))?;
        let channel = grpc::connect(grpc_addr, &roots, &me).await?;
        tokio::spawn(client(
            id,
            channel,
            token,
            synced_tx.clone(),
            seen_tx.clone(),
        ));
    }
    for _ in 0..args.clients {
        synced_rx
            .recv()
            .await
            .context("a client failed before syncing")?;
    }
    let all_synced = connect_start.elapsed();
    let (rss, peak) = rss_mib(pid)?;

    // Single-pod changes: rewrite one namespace's file with one pod's IP changed.
    let mut latencies = Vec::new();
    for change in 1..=args.changes {
        let ns = change % args.namespaces;
        let pod = change % args.pods_per_namespace;
        let written = Instant::now();
        write_ns(ns, Some((pod, change)))?;
        let want = pod_ip(ns, pod, change);
        let mut holders: HashMap<usize, Instant> = HashMap::new();
        let deadline = tokio::time::sleep(Duration::from_secs(10));
        tokio::pin!(deadline);
        while holders.len() < args.clients {
            tokio::select! {
                Some((client, name, addr, at)) = seen_rx.recv() => {
                    if name == format!("pod-{pod}") && addr == want {
                        holders.entry(client).or_insert(at);
                    }
                }
                _ = &mut deadline => bail!("change {change} reached {} of {} clients in 10 s", holders.len(), args.clients),
            }
        }
        latencies.push(
            holders
                .values()
                .max()
                .expect("clients")
                .duration_since(written),
        );
        write_ns(ns, None)?; // put it back; its propagation is not measured
        tokio::time::sleep(Duration::from_millis(50)).await;
        while seen_rx.try_recv().is_ok() {}
    }
    let p = percentiles(&mut latencies);
    let (_, peak_after) = rss_mib(pid)?;

    let pods = args.namespaces * args.pods_per_namespace;
    println!(
        "\n## Controller: {pods} pods, {} services, {} policies, {} clients\n",
        args.namespaces * args.services_per_namespace,
        args.namespaces * args.policies_per_namespace,
        args.clients
    );
    let table = Table::new(&["measure", "value", "target"]);
    table.row(&[
        "start to ready (parse + translate + publish)".into(),
        format!("{:.0} ms", ready.as_secs_f64() * 1e3),
        "-".into(),
    ]);
    table.row(&[
        format!("{} clients connected and synced", args.clients),
        format!("{:.0} ms", all_synced.as_secs_f64() * 1e3),
        "-".into(),
    ]);
    table.row(&[
        "controller RSS, all clients synced".into(),
        format!("{rss:.0} MiB"),
        "< 300 MB".into(),
    ]);
    table.row(&[
        "controller peak RSS (whole run)".into(),
        format!("{:.0} MiB", peak.max(peak_after)),
        "< 300 MB".into(),
    ]);
    table.row(&[
        format!(
            "one pod change -> all {} clients hold it, p50",
            args.clients
        ),
        format!("{:.1} ms", p.p50.as_secs_f64() * 1e3),
        "-".into(),
    ]);
    table.row(&[
        format!(
            "one pod change -> all {} clients hold it, p99",
            args.clients
        ),
        format!("{:.1} ms", p.p99.as_secs_f64() * 1e3),
        "< 100 ms".into(),
    ]);
    let ok = p.p99 < Duration::from_millis(100) && peak.max(peak_after) * 1.048_576 < 300.0;
    println!("\ntargets: {}", if ok { "met" } else { "NOT met" });
    if !dump.contains(&format!("\"workloads\":{pods}")) {
        bail!("the controller did not serve all {pods} workloads: {dump:.300}");
    }
    Ok(())
}
