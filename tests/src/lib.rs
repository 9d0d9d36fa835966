//! End-to-end tests of Ambit in network namespaces, and their harness.
//!
//! [`mesh::Mesh`] builds a small cluster out of network namespaces (two nodes, a few pods),
//! writes Kubernetes manifests for it, and runs the real binaries in it: the controller in
//! standalone mode on node 1, one `ambit-ztunnel` per node, `ambit app echo` in pods. Tests then
//! act as pods ([`probe`]) and as an operator (rewriting manifests, reading admin endpoints).
//!
//! The binaries come from this workspace's target directory; `cargo test --workspace` builds them
//! (each binary's crate has integration tests, which makes cargo build it first).

pub mod binaries;
pub mod fixtures;
pub mod manifests;
pub mod mesh;
pub mod probe;

use std::time::{Duration, Instant};

/// Retries `check` until it returns `Ok` or `deadline` passes; then panics with the last error.
/// Deadlines are generous upper bounds for a loaded CI machine, not performance assertions.
pub fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(e) if start.elapsed() > deadline => {
                panic!("{what}: still failing after {deadline:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Fails unless running as root: namespace tests must never pass by being skipped.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .unwrap_or_default();
    assert_eq!(
        uid, "0",
        "the end-to-end tests need root (network namespaces, iptables); run them as root, as CI does"
    );
}
