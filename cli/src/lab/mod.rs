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

#[cfg(test)]
mod tests {
    use std::error::Error;
    use std::io;

    use super::*;

    /// Every lab error with a cause names that cause once when printed with its chain (as
    /// `ambit` prints errors): a message that also printed its source would say it twice.
    #[test]
    fn an_errors_cause_is_printed_once() {
        let cause = || io::Error::other("the cause");
        let path = || PathBuf::from("/lab/x");
        let (netns, command) = (|| "lab-node1".to_owned(), || "ip link".to_owned());
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(LabError::from(objects::ObjectError::Read {
                path: path(),
                source: cause(),
            })),
            Box::new(LabError::from(state::StateError::Io {
                path: path(),
                source: cause(),
            })),
            Box::new(LabError::from(procs::ProcError::Log {
                path: path(),
                source: cause(),
            })),
            Box::new(LabError::from(procs::ProcError::Spawn {
                program: "ambit".into(),
                netns: netns(),
                source: cause(),
            })),
            Box::new(LabError::from(kubeproxy::KubeProxyError::Hosts {
                path: path(),
                source: cause(),
            })),
            Box::new(netns::NetnsError::Spawn {
                command: command(),
                source: cause(),
            }),
            Box::new(netns::NetnsError::Enter {
                netns: netns(),
                source: cause(),
            }),
            Box::new(netns::NetnsError::InNetns {
                netns: netns(),
                source: cause(),
            }),
            Box::new(netns::NetnsError::Sysctl {
                netns: netns(),
                key: "net.ipv4.ip_forward".into(),
                source: cause(),
            }),
            Box::new(netns::NetnsError::Io {
                path: path(),
                source: cause(),
            }),
            Box::new(wire::WireError::Read {
                path: path(),
                source: cause(),
            }),
        ];
        for err in &errors {
            let text = crate::error_chain(err.as_ref());
            assert_eq!(text.matches("the cause").count(), 1, "{text}");
        }
        let corrupt = state::StateError::Corrupt {
            path: path(),
            source: serde_json::from_str::<u8>("x").unwrap_err(),
        };
        let text = crate::error_chain(&corrupt);
        assert_eq!(text.matches("expected value").count(), 1, "{text}");
        assert!(text.contains("`ambit lab down` removes it"), "{text}");
    }
}
