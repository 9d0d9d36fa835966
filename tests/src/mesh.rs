//! A running mesh in network namespaces: topology, manifests, controller, node agents, apps.

use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ambit_cli::lab::netns::{PodInfo, Topology, command_in};

use crate::{binaries, eventually, probe, require_root};

/// Where the controller listens: node 1's address (the control plane runs on node 1).
pub const CONTROLLER: &str = "192.168.100.1:15012";
const AGENT_ADMIN: &str = "127.0.0.1:15000";
const CONTROLLER_ADMIN: &str = "127.0.0.1:15014";
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct Mesh {
    pub topology: Topology,
    dir: tempfile::TempDir,
    controller: Option<Child>,
    agents: BTreeMap<u8, Child>,
    apps: Vec<Child>,
}

impl Mesh {
    /// `nodes` nodes named `node1`.. with their Node objects in the manifests; nothing running.
    pub fn new(prefix: &str, nodes: u8) -> Mesh {
        require_root();
        let mut topology = Topology::create(prefix).expect("create topology");
        for i in 1..=nodes {
            topology.add_node(i).expect("add node");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        for sub in ["manifests", "data", "logs"] {
            std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
        }
        let mesh = Mesh {
            topology,
            dir,
            controller: None,
            agents: BTreeMap::new(),
            apps: Vec::new(),
        };
        let nodes_yaml: String = (1..=nodes)
            .map(|i| crate::manifests::node(&format!("node{i}")))
            .collect();
        mesh.write("nodes.yaml", &nodes_yaml);
        mesh
    }

    pub fn add_pod(&mut self, name: &str, node: u8) -> PodInfo {
        self.topology.add_pod(node, name).expect("add pod").clone()
    }

    pub fn pod(&self, name: &str) -> &PodInfo {
        self.topology.pod(name).expect("known pod")
    }

    /// Writes a manifest file atomically (the controller never sees half a file).
    pub fn write(&self, file: &str, yaml: &str) {
        let dir = self.dir.path().join("manifests");
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, dir.join(file)).expect("rename manifest");
    }

    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.dir.path().join("manifests").join(file))
            .expect("remove manifest");
    }

    fn log(&self, name: &str) -> (File, PathBuf) {
        let path = self.dir.path().join("logs").join(format!("{name}.log"));
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .expect("log file");
        (file, path)
    }

    /// Reads a process's log (agents: `agent-node1`; the controller: `controller`).
    pub fn read_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log(name).1).unwrap_or_default()
    }

    fn spawn(&self, netns: &str, program: PathBuf, args: &[String], log: &str) -> Child {
        let (out, _) = self.log(log);
        let err = out.try_clone().expect("dup log");
        command_in(netns, program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Starts the controller on node 1 and waits until it serves config.
    pub fn start_controller(&mut self, extra: &[&str]) {
        let mut args = vec![
            "--manifests".to_string(),
            self.dir.path().join("manifests").display().to_string(),
            "--data-dir".into(),
            self.data().display().to_string(),
            "--grpc-addr".into(),
            CONTROLLER.into(),
            "--admin-addr".into(),
            CONTROLLER_ADMIN.into(),
            "--reload-interval".into(),
            "100ms".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let node1 = self.topology.node(1).expect("node 1").netns.clone();
        let child = self.spawn(
            &node1,
            binaries::path("ambit-controller"),
            &args,
            "controller",
        );
        self.controller = Some(child);
        let addr: SocketAddr = CONTROLLER_ADMIN.parse().unwrap();
        eventually(
            "controller ready",
            READY_DEADLINE,
            || match probe::http_get(&node1, addr, "/ready")? {
                (200, _) => Ok(()),
                (s, body) => Err(format!("{s} {body}")),
            },
        );
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut c) = self.controller.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `n`'s agent and waits until it reports ready.
    pub fn start_agent(&mut self, n: u8) {
        let token = self
            .data()
            .join("tokens")
            .join(format!("node-node{n}.token"));
        eventually("token file written", READY_DEADLINE, || {
            token.is_file().then_some(()).ok_or("not yet".to_string())
        });
        let args = vec![
            "--node-name".to_string(),
            format!("node{n}"),
            "--controller-addr".into(),
            CONTROLLER.into(),
            "--root-cert".into(),
            self.data().join("ca/root-cert.pem").display().to_string(),
            "--token-file".into(),
            token.display().to_string(),
        ];
        let netns = self.topology.node(n).expect("node").netns.clone();
        let mut child = self.spawn(
            &netns,
            binaries::path("ambit-ztunnel"),
            &args,
            &format!("agent-node{n}"),
        );
        eventually(&format!("agent on node{n} ready"), READY_DEADLINE, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the agent on node{n} exited ({status}):\n{}",
                    self.read_log(&format!("agent-node{n}"))
                );
            }
            match self.agent_admin(n, "/ready")? {
                (200, _) => Ok(()),
                (s, body) => Err(format!("{s} {body}")),
            }
        });
        self.agents.insert(n, child);
    }

    pub fn wait_agent_ready(&self, n: u8) {
        eventually(
            &format!("agent on node{n} ready"),
            READY_DEADLINE,
            || match self.agent_admin(n, "/ready")? {
                (200, _) => Ok(()),
                (s, body) => Err(format!("{s} {body}")),
            },
        );
    }

    /// Stops node `n`'s agent: SIGTERM (clean: drains, removes its rules) or SIGKILL (a crash).
    pub fn stop_agent(&mut self, n: u8, graceful: bool) {
        let Some(mut child) = self.agents.remove(&n) else {
            return;
        };
        if graceful {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        } else {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// A GET on node `n`'s agent admin endpoint.
    pub fn agent_admin(&self, n: u8, path: &str) -> Result<(u16, String), String> {
        let netns = &self.topology.node(n).expect("node").netns;
        probe::http_get(netns, AGENT_ADMIN.parse().unwrap(), path)
    }

    /// The agent's config dump, parsed.
    pub fn config_dump(&self, n: u8) -> serde_json::Value {
        let (status, body) = self.agent_admin(n, "/config_dump").expect("config dump");
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("config dump is JSON")
    }

    /// Runs `ambit app echo` in `pod` on `port`, named after the pod.
    pub fn start_echo(&mut self, pod: &str, port: u16) {
        let netns = self.pod(pod).netns.clone();
        let args = vec![
            "app".to_string(),
            "echo".into(),
            "--listen".into(),
            format!("0.0.0.0:{port}"),
            "--name".into(),
            pod.into(),
        ];
        let child = self.spawn(
            &netns,
            binaries::path("ambit"),
            &args,
            &format!("app-{pod}"),
        );
        self.apps.push(child);
        let ip = self.pod(pod).ip;
        let node = self
            .topology
            .node(self.pod(pod).node)
            .expect("node")
            .netns
            .clone();
        // Reachable from its node (node traffic is never captured).
        eventually(&format!("echo in {pod}"), READY_DEADLINE, || {
            probe::hello(&node, SocketAddr::new(ip.into(), port)).map(drop)
        });
    }

    /// `iptables-save -t mangle` in node `n`.
    pub fn mangle_rules(&self, n: u8) -> String {
        let netns = &self.topology.node(n).expect("node").netns;
        let out = command_in(netns, "iptables-save")
            .args(["-t", "mangle"])
            .output()
            .expect("iptables-save");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn address(&self, pod: &str, port: u16) -> SocketAddr {
        SocketAddr::new(self.pod(pod).ip.into(), port)
    }

    /// Prints every log: called when a test fails, so CI output says what happened.
    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) else {
            return;
        };
        for e in entries.flatten() {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("===== {} (last 60 lines) =====", e.path().display());
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for child in self
            .apps
            .iter_mut()
            .chain(self.agents.values_mut())
            .chain(self.controller.iter_mut())
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Mesh {
    /// A scratch directory for the test's own files (captures), removed with the mesh.
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Mesh {
    /// The process id of node `n`'s agent (for CPU and memory measurements).
    pub fn agent_pid(&self, n: u8) -> Option<u32> {
        self.agents.get(&n).map(Child::id)
    }

    /// Starts `program args` inside `pod`'s namespace, killed with the mesh.
    pub fn run_in_pod(&mut self, pod: &str, program: &str, args: &[&str]) {
        let netns = self.pod(pod).netns.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = self.spawn(
            &netns,
            PathBuf::from(program),
            &args,
            &format!("{program}-{pod}"),
        );
        self.apps.push(child);
    }
}
