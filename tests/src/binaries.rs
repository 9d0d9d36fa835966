//! Locating the workspace's binaries from a test or benchmark executable.

use std::path::PathBuf;

/// `target/<profile>/<name>`: next to the running executable (a benchmark in
/// `target/release`) or one level up (a test in `target/<profile>/deps`).
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().expect("executable directory");
    let candidates = [dir.join(name), dir.parent().unwrap_or(dir).join(name)];
    for path in &candidates {
        if path.is_file() {
            return path.clone();
        }
    }
    panic!(
        "{} is missing: build the workspace's binaries first (`cargo test --workspace`, or \
         `cargo build --release --workspace --bins` for benchmarks)",
        candidates[1].display()
    )
}
