//! The local lab: a multi-node mesh on one machine, nodes and pods being network namespaces.
//!
//! - [`netns`]: the namespaces, links and routes (the topology);
//! - [`state`]: where the lab lives on disk and what it remembers between commands;
//! - [`objects`], [`render`]: the user's objects and what they become (pods to run, the
//!   controller's manifests with placement filled in);
//! - [`reconcile`]: making the namespaces, processes, names and VIP rules match the objects;
//! - [`view`]: the mesh as the controller translates it (captured pods, policies);
//! - [`kubeproxy`]: VIP DNAT and service names for pods;
//! - [`waypoints`]: a pod and a Service for each waypoint Gateway;
//! - [`procs`], [`admin`]: the lab's processes and their admin endpoints;
//! - [`wire`]: tcpdump on a node's link, to see what crosses it;
//! - [`lifecycle`]: `ambit lab up | down | status`.

pub mod admin;
pub mod converge;
pub mod kubeproxy;
pub mod lifecycle;
pub mod netns;
pub mod objects;
pub mod procs;
pub mod reconcile;
pub mod render;
pub mod state;
pub mod view;
pub mod waypoints;
pub mod wire;

use std::path::PathBuf;

/// Everything a lab command can fail with, each saying what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root: it creates network namespaces and iptables rules (run as root)")]
    NotRoot,
    #[error(
        "`{tool}` is missing: install it with `apt-get install -y {package}` (`ambit check` lists every prerequisite)"
    )]
    MissingTool { tool: String, package: String },
    #[error("{} is missing: build the workspace's binaries (`cargo build --workspace --bins`); the lab runs them from the directory of `ambit`", path.display())]
    MissingBinary { path: PathBuf },
    #[error("a lab is already up ({pods} pods); `ambit lab down` removes it")]
    AlreadyUp { pods: usize },
    #[error("{what} exited during start-up ({status}); its log ({}) ends with:\n{tail}", log.display())]
    Exited {
        what: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {seconds}s: {last}; see {}", log.display())]
    NotReady {
        what: String,
        seconds: u64,
        last: String,
        log: PathBuf,
    },
    #[error("{0}")]
    Placement(String),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Objects(#[from] objects::ObjectError),
    #[error(transparent)]
    Proc(#[from] procs::ProcError),
    #[error(transparent)]
    KubeProxy(#[from] kubeproxy::KubeProxyError),
    #[error(transparent)]
    View(#[from] view::ViewError),
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The directory of the running `ambit`, where the lab finds the other binaries.
pub fn binary(name: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|_| LabError::MissingBinary { path: name.into() })?;
    let dir = exe.parent().unwrap_or(&exe);
    // Tests run `ambit` from target/<profile>/, binaries sit there too; `deps/` is one below.
    for candidate in [dir.join(name), dir.parent().unwrap_or(dir).join(name)] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    Err(LabError::MissingBinary {
        path: dir.join(name),
    })
}

/// Whether `tool` is on PATH.
pub fn has_tool(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The programs the lab starts in pods: this binary and, when built, the waypoint.
pub fn launch(dir: &state::LabDir) -> Result<render::Launch, LabError> {
    let ambit = std::env::current_exe().map_err(|_| LabError::MissingBinary {
        path: PathBuf::from("ambit"),
    })?;
    Ok(render::Launch {
        ambit,
        waypoint: waypoints::WaypointLaunch {
            program: binary("ambit-waypoint").ok(),
            data: dir.data(),
        },
    })
}
