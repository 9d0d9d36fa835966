//! The operator commands, each a function from its arguments to what it prints. Errors are
//! `anyhow` here: this is the edge where the lab's typed errors become messages.
//!
//! - [`objects`]: `apply`, `delete`, `label`;
//! - [`get`]: `get pods|services|policies`, `lab status`;
//! - [`explain`], [`ztunnel_config`], [`check`]: looking into the mesh;
//! - [`exec`]: running a command in a pod.

pub mod check;
pub mod exec;
pub mod explain;
pub mod get;
pub mod objects;
pub mod table;
#[cfg(test)]
pub(crate) mod testing;
pub mod ztunnel_config;

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};

use crate::lab::lifecycle;
use crate::lab::netns::Topology;
use crate::lab::state::{LabDir, LabState};
use crate::lab::{LabError, view};
use crate::mesh::MeshView;

/// The running lab's state and its translated mesh.
pub fn load_lab(dir: &LabDir) -> Result<(LabState, MeshView)> {
    let state = dir.load()?;
    let mesh = view::load(&dir.manifests()).context("translating the lab's manifests")?;
    Ok((state, mesh))
}

/// `ambit explain`'s text, lab or cluster alike, with the objects the controller skips.
pub fn explain(
    pods: &explain::Placement,
    mesh: &MeshView,
    source: &str,
    destination: &str,
    request: &explain::Request,
) -> Result<String> {
    let explanation =
        explain::explain(pods, mesh, source, destination, request).map_err(anyhow::Error::msg)?;
    let mut out = explanation.lines.join("\n") + "\n";
    out += &skipped(mesh);
    Ok(out)
}

/// A warning line for each object the controller skips, which the view leaves out too.
fn skipped(mesh: &MeshView) -> String {
    mesh.errors
        .iter()
        .map(|rejected| format!("warning: the controller skips {rejected}\n"))
        .collect()
}

/// `ambit get <what>`.
pub fn get(dir: &LabDir, what: &str) -> Result<String> {
    let (state, mesh) = load_lab(dir)?;
    let mut out = match what {
        "pods" | "pod" | "po" => get::pods(&state, &mesh.state),
        "services" | "service" | "svc" => get::services(&mesh.state),
        "policies" | "policy" | "authorizationpolicies" => get::policies(&mesh.state),
        other => anyhow::bail!("cannot get {other:?}: use pods, services or policies"),
    };
    out += &skipped(&mesh);
    Ok(out)
}

/// `ambit lab up`: progress on stderr, then the lab's status. A kernel that lacks what the
/// agents' rules need, and manifests the controller would skip, are refused before anything is
/// built.
pub fn lab_up(dir: &LabDir, nodes: u8, manifests: Option<&Path>) -> ExitCode {
    eprintln!(
        "Starting the lab ({} in {})",
        dir.prefix,
        dir.root.display()
    );
    // Missing tools first: without iptables the kernel probe below could only fail, and its
    // message would blame the kernel rather than name the package to install.
    if let Err(err) = lifecycle::preflight() {
        eprintln!("ambit: {}", crate::error_chain(&err));
        return ExitCode::FAILURE;
    }
    if let Some(problem) = check::kernel_problem(dir) {
        eprintln!("ambit: this kernel cannot run the lab: {problem}");
        return ExitCode::FAILURE;
    }
    // The objects are read again by `up`; reading them here first refuses, before anything is
    // built, one the controller would skip, as `ambit apply` does.
    if let Some(path) = manifests {
        let valid = crate::lab::objects::read_paths(path)
            .map_err(anyhow::Error::from)
            .and_then(|objects| objects::validate(&objects));
        if let Err(err) = valid {
            eprintln!("ambit: {err:#}");
            return ExitCode::FAILURE;
        }
    }
    if let Err(err) = lifecycle::up(dir, nodes, manifests) {
        eprintln!("ambit: {}", crate::error_chain(&err));
        if built_something(dir, &err) {
            eprintln!("(what was built stays for inspection; `ambit lab down` removes it)");
        }
        return ExitCode::FAILURE;
    }
    match status(dir) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ambit: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether a failed `lab up` left anything to inspect: not when it refused before building
/// (not root, a tool or binary missing, a bad manifest), nor when the lab was someone's already.
fn built_something(dir: &LabDir, err: &LabError) -> bool {
    let refused = matches!(
        err,
        LabError::NotRoot
            | LabError::MissingTool { .. }
            | LabError::MissingBinary { .. }
            | LabError::AlreadyUp { .. }
    );
    !refused
        && (dir.state_file().is_file()
            || Topology::list(&dir.prefix).is_ok_and(|namespaces| !namespaces.is_empty()))
}

/// `ambit lab status`.
pub fn status(dir: &LabDir) -> Result<String> {
    let (state, mesh) = load_lab(dir)?;
    let controller = match &state.controller {
        Some(p) if p.alive() => format!(
            "running (pid {}), config and CA at {}",
            p.pid,
            crate::lab::admin::CONTROLLER_GRPC
        ),
        Some(_) => "NOT RUNNING (see its log in the lab directory)".into(),
        None => "not started".into(),
    };
    let agent = |n: u8| match state.agents.get(&n) {
        Some(p) if p.alive() => {
            let netns = format!("{}-{}", state.prefix, LabState::node_name(n));
            match crate::lab::admin::get(&netns, crate::lab::admin::AGENT_ADMIN, "/ready") {
                Ok((200, _)) => format!("ready (pid {})", p.pid),
                Ok((_, body)) => format!("running, {}", body.trim()),
                Err(_) => "running, admin not answering".into(),
            }
        }
        Some(_) => "NOT RUNNING".into(),
        None => "not started".into(),
    };
    let mut out = format!(
        "Lab {} in {}\n\nController: {controller}\n\n",
        state.prefix,
        dir.root.display()
    );
    out += &get::nodes(&state, agent);
    out += "\n";
    out += &get::pods(&state, &mesh.state);
    let exited = get::exited(&state);
    if !exited.is_empty() {
        out += "\n";
        out += &exited;
    }
    let waypoints: Vec<String> = mesh
        .state
        .workloads
        .values()
        .filter(|w| !w.spec.waypoint_for.is_empty())
        .map(|w| w.display_name())
        .collect();
    let gateways = crate::lab::objects::Store::new(dir.objects())
        .load()?
        .into_keys()
        .filter(|k| k.kind == "Gateway")
        .map(|k| format!("{}/{}", k.namespace, k.name))
        .collect::<Vec<_>>();
    out += "\nWaypoints: ";
    out += &match (gateways.is_empty(), waypoints.is_empty()) {
        (true, _) => "none".to_owned(),
        (false, true) => format!(
            "{} declared, none deployed: {}",
            gateways.join(", "),
            crate::demo::waypoint_missing().unwrap_or_else(|| "not ready yet".into())
        ),
        (false, false) => waypoints.join(", "),
    };
    out += "\n";
    Ok(out)
}
