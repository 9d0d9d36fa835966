//! Locating the workspace's binaries from a test executable.

use std::path::PathBuf;

/// `target/<profile>/<name>`, next to the directory the running test lives in (`.../deps`).
pub fn path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace's binaries first (`cargo test --workspace` or \
         `cargo build --workspace --bins`)",
        path.display()
    );
    path
}
