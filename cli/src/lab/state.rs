//! Where a lab lives on disk and what it remembers between `ambit` invocations.
//!
//! A lab is a directory (default `/run/ambit-lab`, on tmpfs like the network namespaces, so a
//! reboot forgets both together) plus the network namespaces named `<prefix>-*`:
//!
//! ```text
//! state.json   nodes, pods (node, IP, processes), service VIPs, the controller and agents
//! objects/     the user's objects as applied, one file each (the source of truth)
//! manifests/   what the controller watches: objects rendered with placement filled in
//! data/        the controller's CA and node tokens
//! logs/        one log per process
//! lock         held by every command that changes the lab
//! ```
//!
//! Commands are separate processes, so the lock file serialises them; `state.json` is replaced
//! atomically so a crash mid-write never leaves half a state.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::procs::Proc;

/// The lab directory when `AMBIT_LAB_DIR` is not set.
pub const DEFAULT_DIR: &str = "/run/ambit-lab";
/// The namespace prefix when `AMBIT_LAB_PREFIX` is not set.
pub const DEFAULT_PREFIX: &str = "ambit";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not a lab state file (`ambit lab down` removes it)", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("no lab is running (no {}); start one with `ambit lab up`", path.display())]
    NotRunning { path: PathBuf },
}

/// The lab's location: its directory and namespace prefix.
#[derive(Debug, Clone)]
pub struct LabDir {
    pub root: PathBuf,
    pub prefix: String,
}

impl LabDir {
    /// From `AMBIT_LAB_DIR` / `AMBIT_LAB_PREFIX` (tests run several labs side by side), else
    /// the defaults.
    pub fn from_env() -> LabDir {
        let root = std::env::var_os("AMBIT_LAB_DIR").map_or_else(|| DEFAULT_DIR.into(), Into::into);
        let prefix = std::env::var("AMBIT_LAB_PREFIX").unwrap_or_else(|_| DEFAULT_PREFIX.into());
        LabDir { root, prefix }
    }

    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn objects(&self) -> PathBuf {
        self.root.join("objects")
    }
    pub fn manifests(&self) -> PathBuf {
        self.root.join("manifests")
    }
    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(format!("{name}.log"))
    }
    pub fn root_cert(&self) -> PathBuf {
        self.data().join("ca/root-cert.pem")
    }
    pub fn token(&self, node: &str) -> PathBuf {
        self.data()
            .join("tokens")
            .join(format!("node-{node}.token"))
    }

    /// Creates the directory tree (idempotent).
    pub fn create(&self) -> Result<(), StateError> {
        for dir in [
            self.root.clone(),
            self.objects(),
            self.manifests(),
            self.data(),
            self.logs(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|source| StateError::Io { path: dir, source })?;
        }
        Ok(())
    }

    /// Takes the lab's lock, waiting for another `ambit` command to finish with it. Released
    /// when the returned file is dropped (or the process dies).
    pub fn lock(&self) -> Result<File, StateError> {
        self.create()?;
        let path = self.root.join("lock");
        let io_err = |source| StateError::Io {
            path: path.clone(),
            source,
        };
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err)?;
        file.lock().map_err(io_err)?;
        Ok(file)
    }

    /// The saved state; [`StateError::NotRunning`] when there is none.
    pub fn load(&self) -> Result<LabState, StateError> {
        let path = self.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NotRunning { path });
            }
            Err(source) => return Err(StateError::Io { path, source }),
        };
        serde_json::from_str(&text).map_err(|source| StateError::Corrupt { path, source })
    }

    pub fn save(&self, state: &LabState) -> Result<(), StateError> {
        let text = serde_json::to_string_pretty(state).expect("the state serialises");
        write_atomically(&self.state_file(), text.as_bytes())
    }
}

/// Writes `path` through a hidden temporary file and a rename, so readers (the controller
/// polling its directory, a concurrent `ambit get`) see the old content or the new, never half.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io_err = |path: &Path, source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// What the lab has built and started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LabState {
    pub prefix: String,
    /// Nodes `node1..=nodeN`.
    pub nodes: u8,
    pub controller: Option<Proc>,
    /// Node index -> its agent.
    pub agents: BTreeMap<u8, Proc>,
    /// `<namespace>/<name>` -> the pod.
    pub pods: BTreeMap<String, PodRecord>,
    /// `<namespace>/<name>` of a Service -> the VIP the lab gave it (when it named none).
    pub vips: BTreeMap<String, Ipv4Addr>,
}

/// A pod the lab placed: its namespace, address and processes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub node: u8,
    pub ip: Ipv4Addr,
    /// The pod's network namespace, `<prefix>-<namespace>-<name>`.
    pub netns: String,
    /// The node side of its veth pair.
    pub node_veth: String,
    /// What was started for it; compared with the pod's spec to restart after a change.
    pub run: Vec<RunSpec>,
    pub processes: Vec<Proc>,
}

/// One process a pod runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RunSpec {
    /// Names its log: `<namespace>-<pod>-<name>`.
    pub name: String,
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Files that must exist before it can start (a waypoint's CA root and token).
    #[serde(default)]
    pub needs: Vec<PathBuf>,
}

impl PodRecord {
    /// A pod just placed: nothing started yet.
    pub fn placed(namespace: &str, name: &str, info: &super::netns::PodInfo) -> PodRecord {
        PodRecord {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: info.node,
            ip: info.ip,
            netns: info.netns.clone(),
            node_veth: info.node_veth.clone(),
            run: Vec::new(),
            processes: Vec::new(),
        }
    }
}

impl LabState {
    pub fn node_name(index: u8) -> String {
        format!("node{index}")
    }

    /// Node index of `node<N>`.
    pub fn node_index(&self, name: &str) -> Option<u8> {
        let index: u8 = name.strip_prefix("node")?.parse().ok()?;
        (1..=self.nodes).contains(&index).then_some(index)
    }

    /// A pod by `<namespace>/<name>`, or by bare name when exactly one namespace has it.
    pub fn find_pod(&self, name: &str) -> Result<&PodRecord, String> {
        if let Some(pod) = self.pods.get(name) {
            return Ok(pod);
        }
        let matches: Vec<&PodRecord> = self.pods.values().filter(|p| p.name == name).collect();
        match matches.as_slice() {
            [pod] => Ok(pod),
            [] => Err(format!(
                "no pod {name:?} in the lab (`ambit get pods` lists them)"
            )),
            _ => Err(format!(
                "several namespaces have a pod {name:?}: name it as <namespace>/{name}"
            )),
        }
    }
}
