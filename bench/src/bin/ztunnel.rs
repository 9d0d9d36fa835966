//! Node-agent benchmark: two lab nodes (network namespaces), pods in the mesh talking through
//! both agents (TPROXY -> HBONE/mTLS -> TPROXY) against pods outside the mesh talking directly,
//! measured in the same run:
//! - single-stream throughput (iperf3, 5 s), beside the floor below;
//! - request latency p50/p99 at a fixed rate (open loop, 64-byte echo requests spread over many
//!   connections; latency counted from the scheduled send time, so queueing shows);
//! - the agents' CPU seconds (split into user and system time) and RSS during that load, per
//!   1,000 requests/s, beside a floor: a plain user-space TCP relay (the agents' own relay code,
//!   no TLS, no HTTP/2, no capture rules) on each node, in the agents' places, with the same
//!   socket hops (`relay`);
//! - new connections per second (connect, one request, close; closed loop).
//!
//! Needs root, iperf3, and release builds of the binaries:
//! `cargo build --release -p ambit-controller -p ambit-ztunnel -p ambit-cli -p ambit-bench`,
//! then `target/release/ztunnel-bench`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ambit_bench::pace;
use ambit_bench::pod::in_pod;
use ambit_bench::proc::{self, CpuTimes, Owned};
use ambit_bench::{Table, micros, percentiles};
use ambit_cli::lab::netns::command_in;
use ambit_tests::manifests::{self, Pod};
use ambit_tests::mesh::Mesh;
use anyhow::{Context, Result};
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[command(flatten)]
    load: pace::Load,
    /// Seconds of fixed-rate load per path, in total over the rounds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// The paths take turns this many times during the fixed-rate load.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// Concurrent clients in the connection-rate test.
    #[arg(long, default_value_t = 16)]
    connect_workers: u32,
    /// Run only these parts (comma-separated): throughput, latency, connections.
    #[arg(long, value_delimiter = ',', default_values_t = ["throughput".to_string(), "latency".into(), "connections".into()])]
    only: Vec<String>,
    /// Internal: run as the floor's relay: pairs of addresses, accepting on the first of each and
    /// dialling the second.
    #[arg(long, num_args = 2.., hide = true)]
    relay: Option<Vec<SocketAddr>>,
}

const ECHO: u16 = 8080;
const IPERF: u16 = 5201;

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addrs) = &args.relay {
        anyhow::ensure!(addrs.len() % 2 == 0, "--relay takes pairs of addresses");
        return relay(addrs.chunks(2).map(|pair| (pair[0], pair[1])).collect());
    }
    let mut mesh = Mesh::new("zbench", 2);
    let pods = [
        ("mesh-client", 1, "m"),
        ("mesh-server", 2, "m"),
        ("direct-client", 1, "d"),
        ("direct-server", 2, "d"),
    ];
    let mut yaml = manifests::namespace("m", &[("istio.io/dataplane-mode", "ambient")])
        + &manifests::namespace("d", &[]);
    for (name, node, ns) in pods {
        let info = mesh.add_pod(name, node);
        yaml += &manifests::pod(&Pod {
            name,
            namespace: ns,
            node: if node == 1 { "node1" } else { "node2" },
            ip: info.ip.to_string(),
            service_account: name,
            labels: vec![("app", name)],
        });
    }
    mesh.write("bench.yaml", &yaml);
    mesh.start_controller(&[]);
    mesh.start_agent(1);
    mesh.start_agent(2);
    for server in ["mesh-server", "direct-server"] {
        mesh.start_echo(server, ECHO);
        mesh.run_in_pod(server, "iperf3", &["-s", "-p", &IPERF.to_string()]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let relays = start_relays(&mesh)?;
    // Every path pays the kernel's TCP costs, and on a VM they move with these: BBR without the fq
    // qdisc paces each socket with its own timer (bench/README.md).
    let sysctl = |key: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{key}"))
            .map_or_else(|e| format!("unknown ({e})"), |v| v.trim().to_string())
    };
    println!(
        "TCP congestion control {}, default qdisc {}\n",
        sysctl("ipv4/tcp_congestion_control"),
        sysctl("core/default_qdisc")
    );

    let run = |part: &str| args.only.iter().any(|p| p == part);
    if run("throughput") {
        throughput(&mesh, &relays)?;
    }
    if run("latency") {
        latency(&mesh, &args, &relays)?;
    }
    if run("connections") {
        connections(&mesh, &args)?;
    }
    println!("\nAgents' peak RSS (VmHWM): {}", agents_peak(&mesh)?);
    Ok(())
}

const PATHS: [(&str, &str, &str); 2] = [
    ("direct", "direct-client", "direct-server"),
    ("mesh", "mesh-client", "mesh-server"),
];

fn throughput(mesh: &Mesh, relays: &Relays) -> Result<()> {
    let paths = PATHS
        .map(|(label, client, server)| (label, client, mesh.address(server, IPERF)))
        .into_iter()
        // The floor: the same three TCP connections as the mesh, with no TLS and no HTTP/2.
        .chain([("relay", "direct-client", relays.iperf)]);
    println!("## Throughput (iperf3, one stream, 5 s, best of 2)\n");
    let table = Table::new(&["path", "Gbit/s", "ratio to direct"]);
    let mut direct_gbps = 0.0;
    for (label, client, target) in paths {
        let mut best: f64 = 0.0;
        for _ in 0..2 {
            best = best.max(iperf(mesh, client, target)?);
        }
        if label == "direct" {
            direct_gbps = best;
        }
        table.row(&[
            label.into(),
            format!("{best:.2}"),
            format!("{:.0}%", best / direct_gbps * 100.0),
        ]);
    }
    Ok(())
}

/// What one path accumulated over the rounds.
struct PathRun {
    label: &'static str,
    streams: Vec<std::net::TcpStream>,
    /// Whose CPU is charged to the path: the two agents, or the two relays.
    pids: [u32; 2],
    samples: Vec<Duration>,
    cpu: [CpuTimes; 2],
    elapsed: f64,
}

fn latency(mesh: &Mesh, args: &Args, relays: &Relays) -> Result<()> {
    println!(
        "\n## Latency at {} req/s over {} connections, {} s per path in {} alternating rounds (64-byte echo)\n",
        args.load.rate, args.load.connections, args.seconds, args.rounds
    );
    let relay_pids = relays.processes.each_ref().map(|p| p.0.id());
    let agent_pids = [1, 2].map(|n| mesh.agent_pid(n).expect("agent running"));
    let targets = [
        (
            "direct",
            "direct-client",
            mesh.address("direct-server", ECHO),
            agent_pids,
        ),
        (
            "mesh",
            "mesh-client",
            mesh.address("mesh-server", ECHO),
            agent_pids,
        ),
        // The floor: the direct pods, through the two relays.
        ("relay", "direct-client", relays.echo, relay_pids),
    ];
    let mut runs = Vec::new();
    for (label, client, target, pids) in targets {
        runs.push(PathRun {
            label,
            streams: open_streams(&mesh.pod(client).netns, target, args.load.connections)?,
            pids,
            samples: Vec::new(),
            cpu: [CpuTimes::default(); 2],
            elapsed: 0.0,
        });
    }
    // The paths take turns in short rounds, each round starting from the next path, so a slow
    // spell of this VM falls on all of them alike instead of on whichever ran then.
    let round = Duration::from_secs_f64(args.seconds as f64 / f64::from(args.rounds));
    let paths = runs.len();
    for turn in 0..paths * args.rounds as usize {
        let run = &mut runs[(turn / paths + turn % paths) % paths];
        let before = cpu_of(run.pids)?;
        let start = Instant::now();
        let samples = pace::open_loop(&mut run.streams, args.load.rate, round, echo_64)?;
        run.elapsed += start.elapsed().as_secs_f64();
        let after = cpu_of(run.pids)?;
        for (total, (a, b)) in run.cpu.iter_mut().zip(after.into_iter().zip(before)) {
            *total += a - b;
        }
        run.samples
            .extend(samples.into_iter().map(|(latency, ())| latency));
    }

    let table = Table::new(&[
        "path",
        "p50",
        "p99",
        "added p99",
        "agents' (relays') CPU s",
        "vCPU per 1k req/s (both)",
        "per agent (node1, node2)",
        "of which user, system (both)",
        "RSS (node1 + node2)",
    ]);
    let mut direct_p99 = Duration::ZERO;
    for run in &mut runs {
        let p = percentiles(&mut run.samples);
        if run.label == "direct" {
            direct_p99 = p.p99;
        }
        // Istio publishes its ztunnel's cost per process; both agents carry every request here.
        let per_1k = |secs: f64| secs / run.elapsed / (f64::from(args.load.rate) / 1000.0);
        let [a, b] = run.cpu;
        let (a_total, b_total) = (a.total(), b.total());
        table.row(&[
            run.label.into(),
            micros(p.p50),
            micros(p.p99),
            micros(p.p99.saturating_sub(direct_p99)),
            format!("{:.2}", a_total + b_total),
            format!("{:.3}", per_1k(a_total + b_total)),
            format!("{:.3}, {:.3}", per_1k(a_total), per_1k(b_total)),
            // The split says whose cost it is: the agents' own code (TLS, HTTP/2, the runtime),
            // or the kernel's syscalls and wake-ups, which the floor pays alike.
            format!(
                "{:.3}, {:.3}",
                per_1k(a.user + b.user),
                per_1k(a.system + b.system)
            ),
            rss_of(run.pids, "VmRSS:")?,
        ]);
    }
    Ok(())
}

fn connections(mesh: &Mesh, args: &Args) -> Result<()> {
    let paths = PATHS;
    println!(
        "\n## New connections per second ({} concurrent clients, 5 s)\n",
        args.connect_workers
    );
    let table = Table::new(&["path", "connections/s", "ratio to direct"]);
    let mut direct_rate = 0.0;
    for (label, client, server) in paths {
        let rate = connection_rate(
            &mesh.pod(client).netns,
            mesh.address(server, ECHO),
            args.connect_workers,
        )?;
        if label == "direct" {
            direct_rate = rate;
        }
        table.row(&[
            label.into(),
            format!("{rate:.0}"),
            format!("{:.0}%", rate / direct_rate * 100.0),
        ]);
    }
    Ok(())
}

fn iperf(mesh: &Mesh, client: &str, server: SocketAddr) -> Result<f64> {
    let out = command_in(&mesh.pod(client).netns, "iperf3")
        .args([
            "-c",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
            "-t",
            "5",
            "-J",
        ])
        .output()
        .context("running iperf3 (apt-get install iperf3)")?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 output")?;
    let bps = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no result from iperf3: {json}"))?;
    Ok(bps / 1e9)
}

/// `count` echo connections from inside the pod, as blocking sockets for [`pace::open_loop`]'s
/// threads (a socket stays in its namespace whichever thread uses it).
fn open_streams(netns: &str, target: SocketAddr, count: u32) -> Result<Vec<std::net::TcpStream>> {
    in_pod(netns, move || async move {
        let mut streams = Vec::new();
        for _ in 0..count {
            let stream = open_echo(target).await?.into_std()?;
            stream.set_nonblocking(false)?;
            streams.push(stream);
        }
        Ok(streams)
    })
}

/// One request: 64 bytes out, the same 64 back.
fn echo_64(stream: &mut std::net::TcpStream) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = [0u8; 64];
    stream.write_all(&[b'x'; 64])?;
    stream.read_exact(&mut buf)
}

/// Connects to the echo server and consumes its greeting (sent once the first bytes arrive).
async fn open_echo(target: SocketAddr) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    stream.write_all(b"\n").await?;
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    // The greeting line, then the echoed newline.
    while seen.iter().filter(|b| **b == b'\n').count() < 2 {
        stream.read_exact(&mut byte).await?;
        seen.push(byte[0]);
    }
    Ok(stream)
}

fn connection_rate(netns: &str, target: SocketAddr, workers: u32) -> Result<f64> {
    let count = in_pod(netns, move || async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let mut tasks = Vec::new();
        for _ in 0..workers {
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while tokio::time::Instant::now() < deadline {
                    let mut s = TcpStream::connect(target).await?;
                    s.write_all(b"ping\n").await?;
                    s.shutdown().await?;
                    let mut sink = Vec::new();
                    s.read_to_end(&mut sink).await?;
                    done += 1;
                }
                Ok::<_, std::io::Error>(done)
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.map_err(std::io::Error::other)??;
        }
        Ok(total)
    })?;
    Ok(count as f64 / 5.0)
}

/// User and system CPU seconds of each process so far (node1's, node2's).
fn cpu_of(pids: [u32; 2]) -> Result<[CpuTimes; 2]> {
    Ok([proc::cpu_times(pids[0])?, proc::cpu_times(pids[1])?])
}

fn rss_of(pids: [u32; 2], field: &str) -> Result<String> {
    let mut parts = Vec::new();
    for pid in pids {
        parts.push(format!("{:.1} MiB", proc::status_mib(pid, field)?));
    }
    Ok(parts.join(" + "))
}

fn agents_peak(mesh: &Mesh) -> Result<String> {
    let [a, b] = [1, 2].map(|n| mesh.agent_pid(n).context("agent running"));
    rss_of([a?, b?], "VmHWM:")
}

/// The floor's first listening port; each proxied server port gets its own.
const RELAY_PORT: u16 = 17000;

/// The floor's relays, one in each node's namespace where its agent runs: node1's accepts from
/// the direct client and dials node2's, which dials the direct servers.
struct Relays {
    processes: [Owned; 2],
    /// Where the direct client dials to reach the echo server, and the iperf3 server, through
    /// both relays.
    echo: SocketAddr,
    iperf: SocketAddr,
}

fn start_relays(mesh: &Mesh) -> Result<Relays> {
    let exe = std::env::current_exe()?;
    let node = |n: u8| mesh.topology.node(n).context("node");
    let at = |n: u8| -> Result<std::net::IpAddr> { Ok(node(n)?.ip.into()) };
    let start = |n: u8, pairs: [(SocketAddr, SocketAddr); 2]| -> Result<Owned> {
        let args = pairs
            .iter()
            .flat_map(|(listen, to)| [listen.to_string(), to.to_string()]);
        let child = command_in(&node(n)?.netns, &exe)
            .arg("--relay")
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting the relay")?;
        Ok(Owned(child))
    };
    // Each proxied server port has a relay port of its own, the same on both nodes.
    let ports = [(RELAY_PORT, ECHO), (RELAY_PORT + 1, IPERF)];
    let [at1, at2] = [at(1)?, at(2)?].map(|ip| move |port| SocketAddr::new(ip, port));
    let second = start(
        2,
        ports.map(|(relay, server)| (at2(relay), mesh.address("direct-server", server))),
    )?;
    let first = start(1, ports.map(|(relay, _)| (at1(relay), at2(relay))))?;
    // Until the chain answers (each relay binds all its ports before it accepts).
    let netns = mesh.pod("direct-client").netns.clone();
    let target = at1(RELAY_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while in_pod(&netns, move || open_echo(target)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the relays never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Relays {
        processes: [first, second],
        echo: target,
        iperf: at1(RELAY_PORT + 1),
    })
}

/// The floor: accept, dial, and relay both ways with the agents' own relay (`ambit_proto::relay`,
/// the same adaptive reads), on the same kind of runtime as the agents (one worker per core).
/// Nothing else: no TLS, no HTTP/2, no policy, no metrics, no capture.
fn relay(pairs: Vec<(SocketAddr, SocketAddr)>) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(async move {
        let mut listeners = Vec::new();
        for (listen, to) in pairs {
            listeners.push((tokio::net::TcpListener::bind(listen).await?, to));
        }
        let mut accepting = tokio::task::JoinSet::new();
        for (listener, to) in listeners {
            accepting.spawn(async move {
                loop {
                    let (inbound, _) = listener.accept().await?;
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(to).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = ambit_proto::relay::relay(inbound, outbound).await;
                    });
                }
            });
        }
        // A listener only stops on an error: report the first.
        let first: std::io::Result<()> = accepting.join_next().await.context("no listeners")??;
        Ok(first?)
    })
}
