//! The tour's steps, in order. Each acts through the same code paths as the CLI's commands
//! (`lab up`, `label`, `apply`, `explain`) and checks what it then observes from outside: bytes
//! on the wire, what the server saw, the agents' metrics.

use std::process::Stdio;

use anyhow::{Context as _, Result, bail};

use super::Tour;
use crate::cmd;
use crate::cmd::explain::Verdict;
use crate::lab::netns::command_in;
use crate::lab::state::LabState;
use crate::lab::wire::Sniffer;
use crate::lab::{admin, lifecycle};

const MANIFESTS: &str = include_str!("manifests.yaml");
const DENY: &str = include_str!("deny.yaml");
const WAYPOINT: &str = include_str!("waypoint.yaml");
const CANARY: &str = include_str!("canary.yaml");
/// Requests the canary step sends. At 200, a 10% share lands within [6, 40] but for about one
/// run in 60,000 (binomial tails), so the check does not flake.
const CANARY_REQUESTS: usize = 200;
/// The client's identity, as the server side's agent reports it.
const CLIENT_ID: &str = "spiffe://cluster.local/ns/demo/sa/client";

type Step = fn(&mut Tour) -> Result<()>;

pub fn steps() -> Vec<(&'static str, Step)> {
    vec![
        ("Start the lab", start as Step),
        ("Before enrolment: plaintext on the wire", plaintext),
        ("Enrol the namespace: mutual TLS between the nodes", enrol),
        ("A DENY AuthorizationPolicy refuses the client", deny),
        (
            "Waypoint: an L7 policy (403 on one path, 200 on another)",
            l7_policy,
        ),
        ("Waypoint: an HTTP canary split", canary),
        ("The agents' metrics", metrics),
    ]
}

fn start(t: &mut Tour) -> Result<()> {
    let file = t.scratch.path().join("demo.yaml");
    std::fs::write(&file, MANIFESTS)?;
    t.act("ambit lab up --nodes 2 -f demo.yaml   (client on node1, server on node2, Service echo)");
    lifecycle::up(&t.dir, 2, Some(&file))?;
    let status = cmd::status(&t.dir)?;
    for line in status.lines() {
        t.note(line);
    }
    t.observe(true, "controller and both node agents report ready");
    Ok(())
}

/// Runs `ambit app connect echo:80 <args>` in the client pod: its exit status and output.
fn client_connect(t: &Tour, args: &[&str]) -> Result<(i32, String)> {
    let state = t.dir.load()?;
    let client = state.find_pod("demo/client").map_err(anyhow::Error::msg)?;
    let out = command_in(&client.netns, &t.ambit)
        .args(["app", "connect", "echo:80", "--timeout", "5s"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ambit app connect in the client pod")?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.code().unwrap_or(-1), text.trim().to_owned()))
}

/// Sends `payload` (the echo server greets, then echoes it).
fn connect(t: &Tour, payload: &str) -> Result<(i32, String)> {
    client_connect(t, &["--send", payload])
}

fn client_ip(t: &Tour) -> Result<String> {
    let state = t.dir.load()?;
    let client = state.find_pod("demo/client").map_err(anyhow::Error::msg)?;
    Ok(client.ip.to_string())
}

fn node_netns(t: &Tour, n: u8) -> String {
    format!("{}-{}", t.dir.prefix, LabState::node_name(n))
}

/// What one watched exchange showed.
struct Watched {
    output: String,
    /// The payload appeared in the captured packets.
    readable: bool,
    /// Packets to the HBONE port and to the server's own port.
    to_hbone: usize,
    to_server: usize,
    /// Packets to the HBONE port whose payload starts a TLS record: a handshake (0x16, the
    /// ClientHello) and application data (0x17, the encrypted tunnel).
    tls_handshakes: usize,
    tls_records: usize,
}

/// A tcpdump filter: TCP to `port` whose payload starts with the byte `first`.
fn payload_starts(port: u16, first: u8) -> String {
    format!("tcp dst port {port} and tcp[((tcp[12:1]&0xf0)>>2):1]={first:#04x}")
}

/// Sends `payload` from the client to `echo:80` while watching node1's link, shows what came
/// back, and checks the server echoed it.
fn exchange_watched(t: &mut Tour, payload: &str) -> Result<Watched> {
    t.act(&format!(
        "ambit exec client -- ambit app connect echo:80 --send {payload}   (tcpdump on node1's eth0)"
    ));
    let sniffer = Sniffer::start(&node_netns(t, 1), t.scratch.path())?;
    let (code, output) = connect(t, payload)?;
    let capture = sniffer.stop()?;
    for line in output.lines() {
        t.note(&format!("| {line}"));
    }
    t.observe(
        code == 0 && output.contains(payload),
        "the server answered and echoed the payload",
    );
    Ok(Watched {
        readable: capture.contains(payload.as_bytes()),
        to_hbone: capture.count("tcp dst port 15008"),
        to_server: capture.count("tcp dst port 8080"),
        tls_handshakes: capture.count(&payload_starts(15008, 0x16)),
        tls_records: capture.count(&payload_starts(15008, 0x17)),
        output,
    })
}

fn plaintext(t: &mut Tour) -> Result<()> {
    let seen = exchange_watched(t, &format!("plaintext-{}", std::process::id()))?;
    t.observe(
        seen.readable && seen.to_server > 0 && seen.to_hbone == 0,
        &format!(
            "the payload crossed the wire readable, straight to port 8080 ({} packets, none to 15008)",
            seen.to_server
        ),
    );
    Ok(())
}

fn enrol(t: &mut Tour) -> Result<()> {
    t.act("ambit label namespace demo istio.io/dataplane-mode=ambient");
    let out = cmd::objects::label(
        &t.dir,
        "namespace",
        "demo",
        &["istio.io/dataplane-mode=ambient".into()],
    )?;
    t.note(out.trim());
    t.observe(
        true,
        "both agents picked up the change (config and capture rules)",
    );
    let seen = exchange_watched(t, &format!("secret-{}", std::process::id()))?;
    t.observe(
        !seen.readable && seen.to_hbone > 0 && seen.to_server == 0,
        &format!(
            "on the wire: only packets to port 15008 ({}), the payload never readable",
            seen.to_hbone
        ),
    );
    t.observe(
        seen.tls_handshakes > 0 && seen.tls_records > 0,
        &format!(
            "and they are TLS: {} open with a handshake record (the ClientHello), {} with encrypted application data",
            seen.tls_handshakes, seen.tls_records
        ),
    );
    let out = seen.output;
    let ip = client_ip(t)?;
    t.observe(
        out.contains(&format!("you are {ip}:")),
        &format!("the server saw the client's own address {ip}"),
    );
    let (_, metrics) = admin::get(&node_netns(t, 2), admin::AGENT_METRICS, "/metrics")?;
    let seen = opened(&metrics, "destination", CLIENT_ID);
    t.observe(
        seen > 0,
        &format!("node2's agent (server side) authenticated the client as {CLIENT_ID} ({seen} connection(s))"),
    );
    explain_agrees(t, "/", Verdict::Allowed)?;
    Ok(())
}

fn deny(t: &mut Tour) -> Result<()> {
    let file = t.scratch.path().join("deny.yaml");
    std::fs::write(&file, DENY)?;
    t.act("ambit apply -f deny.yaml   (DENY from principal cluster.local/ns/demo/sa/client)");
    let out = cmd::objects::apply(&t.dir, &file)?;
    t.note(out.trim());
    t.act("ambit exec client -- ambit app connect echo:80 --send hello");
    let (code, out) = connect(t, "hello")?;
    t.note(&format!("| {out} (exit status {code})"));
    t.observe(
        code != 0 && !out.contains("hello from"),
        "the connection was refused: the server never answered",
    );
    explain_agrees(t, "/", Verdict::Denied)?;
    Ok(())
}

/// Shows `ambit explain client echo` (for `GET <path>` at a waypoint) and checks its verdict is
/// what was just observed.
fn explain_agrees(t: &mut Tour, path: &str, expected: Verdict) -> Result<()> {
    match path {
        "/" => t.act("ambit explain client echo"),
        path => t.act(&format!("ambit explain client echo --path {path}")),
    }
    let (state, mesh) = cmd::load_lab(&t.dir)?;
    let request = cmd::explain::Request::new("GET", path, &[]).map_err(anyhow::Error::msg)?;
    let explanation = cmd::explain::explain(
        &cmd::explain::Placement::from_lab(&state),
        &mesh,
        "demo/client",
        "echo",
        &request,
    )
    .map_err(anyhow::Error::msg)?;
    for line in &explanation.lines {
        t.note(&format!("| {line}"));
    }
    t.observe(
        explanation.verdict == expected,
        &format!("explain agrees with what the connection did ({expected:?})"),
    );
    Ok(())
}

/// Why the lab cannot deploy a waypoint, if it cannot: it does only when `ambit-waypoint` is
/// built next to `ambit` (`ambit lab status` says so; the demo refuses to start without it).
pub fn waypoint_missing() -> Option<String> {
    crate::lab::binary("ambit-waypoint").is_err().then(|| {
        "the waypoint (ambit-waypoint) is not built yet, so the lab cannot deploy one".to_owned()
    })
}

fn l7_policy(t: &mut Tour) -> Result<()> {
    let deny = t.scratch.path().join("deny.yaml");
    t.act("ambit delete -f deny.yaml   (step 4's policy: from here on the server's agent sees the waypoint as the client)");
    t.note(cmd::objects::delete(&t.dir, &deny)?.trim());
    let file = t.scratch.path().join("waypoint.yaml");
    std::fs::write(&file, WAYPOINT)?;
    t.act("ambit apply -f waypoint.yaml   (Gateway demo/waypoint, class ambit-waypoint; DENY GET /admin at the waypoint)");
    t.note(cmd::objects::apply(&t.dir, &file)?.trim());
    t.act("ambit label namespace demo istio.io/use-waypoint=waypoint");
    let out = cmd::objects::label(
        &t.dir,
        "namespace",
        "demo",
        &["istio.io/use-waypoint=waypoint".into()],
    )?;
    t.note(out.trim());
    t.observe(
        true,
        "the lab started the waypoint pod and it reports ready",
    );
    let forwarded = Verdict::WaypointForwards(vec!["service demo/echo".into()]);
    for (path, want, explained) in [
        ("/hello", "200", forwarded),
        ("/admin", "403", Verdict::WaypointAnswers(403)),
    ] {
        t.act(&format!(
            "ambit exec client -- ambit app connect echo:80 --http {path}"
        ));
        let (_, out) = client_connect(t, &["--http", path])?;
        let first = out.lines().next().unwrap_or_default().to_owned();
        t.note(&format!("| {first}"));
        if let Some(reason) = out.lines().find(|l| l.starts_with("x-ambit-reason")) {
            t.note(&format!("| {reason}"));
        }
        t.observe(
            first.split_whitespace().nth(1) == Some(want),
            &format!("GET {path} answered {want}"),
        );
        explain_agrees(t, path, explained)?;
    }
    Ok(())
}

fn canary(t: &mut Tour) -> Result<()> {
    let file = t.scratch.path().join("canary.yaml");
    std::fs::write(&file, CANARY)?;
    t.act("ambit apply -f canary.yaml   (pod server-v2 on node1, Services echo-v1/echo-v2, HTTPRoute echo-canary: 90/10)");
    t.note(cmd::objects::apply(&t.dir, &file)?.trim());
    t.act(&format!(
        "ambit exec client -- ambit app connect echo:80 --http /   ({CANARY_REQUESTS} times)"
    ));
    let (mut v1, mut v2, mut other) = (0, 0, 0);
    for _ in 0..CANARY_REQUESTS {
        let (_, out) = client_connect(t, &["--http", "/"])?;
        match out.lines().find_map(|l| l.strip_prefix("server=")) {
            Some(s) if s.contains("server-v2") => v2 += 1,
            Some(s) if s.contains("server") => v1 += 1,
            _ => other += 1,
        }
    }
    t.note(&format!(
        "| answered by server (v1): {v1}, by server-v2: {v2}, failed: {other}"
    ));
    t.observe(other == 0, "every request was answered");
    t.observe(
        (6..=40).contains(&v2) && v1 > v2,
        &format!("about 10% went to v2 ({v2} of {CANARY_REQUESTS})"),
    );
    Ok(())
}

fn metrics(t: &mut Tour) -> Result<()> {
    for n in [1u8, 2] {
        t.act(&format!("curl node{n}:15020/metrics | grep -E 'istio_tcp_connections_opened|connections_refused'"));
        let (status, body) = admin::get(&node_netns(t, n), admin::AGENT_METRICS, "/metrics")?;
        if status != 200 {
            bail!("node{n}'s agent answered {status} for /metrics");
        }
        for line in body.lines().filter(|l| {
            l.starts_with("istio_tcp_connections_opened_total") && l.contains("demo")
                || l.starts_with("ambit_ztunnel_connections_refused_total")
        }) {
            t.note(&format!("| {}", shorten(line)));
        }
        if n == 1 {
            t.observe(
                opened(&body, "source", CLIENT_ID) > 0,
                "node1's agent reports the client's outbound connections (reporter=source)",
            );
        } else {
            t.observe(
                refused(&body, "policy") > 0,
                "node2's agent counted the connection the policy refused",
            );
        }
    }
    Ok(())
}

/// Sum of `istio_tcp_connections_opened_total` for a reporter and source principal.
fn opened(metrics: &str, reporter: &str, principal: &str) -> u64 {
    sum(
        metrics,
        "istio_tcp_connections_opened_total{",
        &[
            &format!("reporter=\"{reporter}\""),
            &format!("source_principal=\"{principal}\""),
        ],
    )
}

fn refused(metrics: &str, reason: &str) -> u64 {
    sum(
        metrics,
        "ambit_ztunnel_connections_refused_total{",
        &[&format!("reason=\"{reason}\"")],
    )
}

fn sum(metrics: &str, prefix: &str, labels: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A metric line without its empty and `unknown` labels, to fit a terminal.
fn shorten(line: &str) -> String {
    let Some((name, rest)) = line.split_once('{') else {
        return line.to_owned();
    };
    let Some((labels, value)) = rest.rsplit_once('}') else {
        return line.to_owned();
    };
    let kept: Vec<&str> = labels
        .split(',')
        .filter(|l| !l.ends_with("=\"\"") && !l.ends_with("=\"unknown\""))
        .filter(|l| {
            [
                "reporter",
                "source_principal",
                "destination_workload",
                "destination_service",
                "connection_security_policy",
                "response_flags",
                "reason",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect();
    format!("{name}{{{}}}{value}", kept.join(","))
}
