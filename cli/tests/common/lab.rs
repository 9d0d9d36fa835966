//! A lab of its own per test, driven through the `ambit` binary as a user drives it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use super::AMBIT;

/// Generous bound for a lab to come up on a loaded CI machine (normally about a second).
pub const UP_DEADLINE: Duration = Duration::from_secs(90);

/// `lab up` runs one at a time within this binary: the first `ip netns add` on a fresh
/// machine sets up /run/netns, and two processes racing there can hide each other's namespaces.
pub static LAB_UP: Mutex<()> = Mutex::new(());

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the lab tests need root (network namespaces, iptables): run them as root, as CI does"
    );
}

/// A lab of its own for one test: its directory and namespace prefix.
pub struct TestLab {
    pub dir: tempfile::TempDir,
    pub prefix: String,
}

impl TestLab {
    pub fn new(name: &str) -> TestLab {
        require_root();
        let missing: Vec<&str> = ["ambit-controller", "ambit-ztunnel"]
            .into_iter()
            .filter(|b| !Path::new(AMBIT).with_file_name(b).is_file())
            .collect();
        assert!(
            missing.is_empty(),
            "{missing:?} not built next to {AMBIT}: run `cargo test --workspace` (or \
             `cargo build --workspace --bins` first)"
        );
        TestLab {
            dir: tempfile::tempdir().expect("tempdir"),
            prefix: format!("{name}{}", std::process::id()),
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("lab")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(AMBIT);
        command
            .args(args)
            .env("AMBIT_LAB_DIR", self.root())
            .env("AMBIT_LAB_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ambit")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ambit {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ambit app connect <dst>` in pod `src`, which must succeed; its output.
    pub fn connect(&self, src: &str, dst: &str) -> String {
        self.ok(&["exec", src, "--", "ambit", "app", "connect", dst])
    }

    pub fn up(&self, manifests: &str) {
        let file = self.dir.path().join("manifests.yaml");
        std::fs::write(&file, manifests).expect("write manifests");
        let _turn = LAB_UP.lock().unwrap_or_else(|p| p.into_inner());
        self.ok(&["lab", "up", "--nodes", "2", "-f", file.to_str().unwrap()]);
    }

    /// The IP of pod `name` (any namespace), from `ambit get pods`.
    pub fn pod_ip(&self, name: &str) -> String {
        let pods = self.ok(&["get", "pods"]);
        pods.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|cols| cols.get(1) == Some(&name))
            .map(|cols| cols[3].to_owned())
            .unwrap_or_else(|| panic!("no pod {name} in\n{pods}"))
    }

    /// Namespaces of this lab that exist.
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_owned)
            .collect()
    }

    pub fn dump_logs(&self) {
        let Ok(entries) = std::fs::read_dir(self.root().join("logs")) else {
            return;
        };
        for entry in entries.flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("===== {} =====", entry.path().display());
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let _ = self.run(&["lab", "down"]);
    }
}
