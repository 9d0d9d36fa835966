//! `ambit lab up | down | status`.
//!
//! `up` builds the nodes, places the pods of `-f`, then starts the controller (node 1) and one
//! agent per node, waiting for each to report ready. `down` works from any state (a running
//! lab, a half-built one, one whose `ambit` was killed): it removes everything named with the
//! lab's prefix, whether the state file remembers it or not.

use std::path::Path;
use std::time::{Duration, Instant};

use super::netns::Topology;
use super::objects::{self, Store};
use super::state::{LabDir, LabState, StateError};
use super::{LabError, admin, binary, has_tool, is_root, kubeproxy, launch, procs, reconcile};

/// Upper bound for a process to become ready on a loaded machine; normally a second or two.
const READY_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(100);
/// How long `down` lets the lab's processes exit on SIGTERM, all of them together, before
/// SIGKILL: an agent removing its node's rules needs well under a second.
const DOWN_GRACE: Duration = Duration::from_secs(3);

/// Prints progress on stderr, so stdout stays the command's result.
pub fn say(line: &str) {
    eprintln!("  {line}");
}

/// Refuses early, with the fix, when the machine cannot run a lab.
pub fn preflight() -> Result<(), LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("iptables", "iptables"),
        ("iptables-restore", "iptables"),
    ] {
        if !has_tool(tool) {
            return Err(LabError::MissingTool {
                tool: tool.into(),
                package: package.into(),
            });
        }
    }
    Ok(())
}

/// `ambit lab up`.
pub fn up(dir: &LabDir, nodes: u8, manifests: Option<&Path>) -> Result<LabState, LabError> {
    preflight()?;
    let controller_bin = binary("ambit-controller")?;
    let agent_bin = binary("ambit-ztunnel")?;
    let launch = launch(dir)?;
    if !(1..=20).contains(&nodes) {
        return Err(LabError::Placement(format!(
            "--nodes {nodes}: the lab runs 1 to 20 nodes"
        )));
    }
    // Read before building anything: a typo in a manifest costs nothing.
    let objects = match manifests {
        Some(path) => objects::read_paths(path)?,
        None => Vec::new(),
    };
    let _lock = dir.lock()?;
    match dir.load() {
        Ok(state) => {
            return Err(LabError::AlreadyUp {
                pods: state.pods.len(),
            });
        }
        Err(StateError::NotRunning { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    // Leftovers of a lab whose state is gone (a crash, a deleted directory) would clash.
    Topology::cleanup(&dir.prefix)?;
    kubeproxy::remove_hosts(&dir.prefix)?;
    dir.create()?;

    say(&format!("creating {nodes} node(s) and the lan bridge"));
    let mut topology = Topology::create(&dir.prefix)?;
    for index in 1..=nodes {
        topology.add_node(index)?;
    }
    topology.release();
    let mut state = LabState {
        prefix: dir.prefix.clone(),
        nodes,
        ..LabState::default()
    };
    dir.save(&state)?;

    let store = Store::new(dir.objects());
    for object in &objects {
        store.put(object)?;
    }
    say(&format!("placing pods from {} object(s)", objects.len()));
    let changes = reconcile::reconcile(dir, &mut state, &launch)?;
    for rejected in &changes.rejected {
        say(&format!("warning: the controller skips {rejected}"));
    }

    say("starting the controller on node1");
    let node1 = LabState::node_name(1);
    let netns = format!("{}-{node1}", dir.prefix);
    let args: Vec<String> = [
        "--manifests",
        &dir.manifests().display().to_string(),
        "--data-dir",
        &dir.data().display().to_string(),
        "--grpc-addr",
        admin::CONTROLLER_GRPC,
        "--admin-addr",
        admin::CONTROLLER_ADMIN,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = [("RUST_LOG".to_owned(), "info".to_owned())];
    let controller = procs::spawn(&netns, &controller_bin, &args, &env, &dir.log("controller"))?;
    state.controller = Some(controller.clone());
    dir.save(&state)?;
    wait_ready(
        "the controller",
        &controller,
        &netns,
        admin::CONTROLLER_ADMIN,
    )?;

    for index in 1..=nodes {
        let node = LabState::node_name(index);
        say(&format!("starting the node agent on {node}"));
        let token = dir.token(&node);
        wait_for(
            &format!("the controller to write {}", token.display()),
            &controller,
            || {
                token
                    .is_file()
                    .then_some(())
                    .ok_or_else(|| "not written yet".to_owned())
            },
        )?;
        let args: Vec<String> = vec![
            "--node-name".into(),
            node.clone(),
            "--controller-addr".into(),
            admin::CONTROLLER_GRPC.into(),
            "--root-cert".into(),
            dir.root_cert().display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ];
        let netns = format!("{}-{node}", dir.prefix);
        let log = dir.log(&format!("agent-{node}"));
        let agent = procs::spawn(&netns, &agent_bin, &args, &env, &log)?;
        state.agents.insert(index, agent);
        dir.save(&state)?;
    }
    for (index, agent) in &state.agents {
        let netns = format!("{}-{}", dir.prefix, LabState::node_name(*index));
        let what = format!("the agent on node{index}");
        wait_ready(&what, agent, &netns, admin::AGENT_ADMIN)?;
    }
    // Waypoints start once the controller has written their tokens.
    let changes = reconcile::settle(dir, &mut state, &launch)?;
    if !changes.waypoints_started.is_empty() {
        say(&format!(
            "starting waypoints: {}",
            changes.waypoints_started.join(", ")
        ));
    }
    let mesh = super::view::load(&dir.manifests())?;
    super::converge::wait(&state, &mesh.state)?;
    Ok(state)
}

fn wait_ready(what: &str, proc: &procs::Proc, netns: &str, addr: &str) -> Result<(), LabError> {
    wait_for(what, proc, || match admin::get(netns, addr, "/ready") {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(format!("{status} {}", body.trim())),
        Err(err) => Err(err.to_string()),
    })
}

/// Polls `check` until it succeeds; fails at once, with its log, if `proc` exits.
fn wait_for(
    what: &str,
    proc: &procs::Proc,
    mut check: impl FnMut() -> Result<(), String>,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        if !proc.alive() {
            return Err(LabError::Exited {
                what: what.to_owned(),
                status: "exited".into(),
                log: proc.log.clone(),
                tail: proc.log_tail(15),
            });
        }
        match check() {
            Ok(()) => return Ok(()),
            Err(last) if start.elapsed() > READY_DEADLINE => {
                return Err(LabError::NotReady {
                    what: what.to_owned(),
                    seconds: READY_DEADLINE.as_secs(),
                    last,
                    log: proc.log.clone(),
                });
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// What `down` removed.
#[derive(Debug, Default)]
pub struct Removed {
    pub namespaces: usize,
    pub processes: usize,
}

/// `ambit lab down`: from any state, see the module docs.
pub fn down(dir: &LabDir) -> Result<Removed, LabError> {
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let mut removed = Removed::default();
    // Processes the state remembers first (pid and start time both match, so nothing else is
    // ever signalled), all at once: agents get SIGTERM and remove their own rules meanwhile.
    if let Ok(state) = dir.load() {
        let all = state
            .agents
            .values()
            .chain(state.controller.iter())
            .chain(state.pods.values().flat_map(|p| p.processes.iter()));
        removed.processes = procs::stop_all(all, DOWN_GRACE);
    }
    // Then everything named with the prefix, remembered or not: namespaces (with whatever still
    // runs inside them, and every link, route and rule they hold) and hosts files.
    removed.namespaces = Topology::list(&dir.prefix)?.len();
    Topology::cleanup(&dir.prefix)?;
    kubeproxy::remove_hosts(&dir.prefix)?;
    match std::fs::remove_dir_all(&dir.root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(StateError::Io {
                path: dir.root.clone(),
                source,
            }
            .into());
        }
    }
    Ok(removed)
}
