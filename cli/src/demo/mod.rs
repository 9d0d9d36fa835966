//! `ambit demo`: the guided tour. It builds a two-node lab, then walks through what the mesh
//! does, each step printing what it did and what it observed, with a check mark or a cross. The
//! exit status is non-zero if any observation is not what it should be. Every step runs: what
//! one needs (root, tools, the kernel's TPROXY, the binaries, the waypoint's included) is
//! checked before the lab starts, and a machine without it fails the demo rather than skipping
//! the step.
//!
//! Steps are a list ([`steps`]), run in order; the first that fails ends the tour.

mod steps;

pub use steps::waypoint_missing;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use crate::error_chain;
use crate::lab::state::LabDir;
use crate::lab::{binary, has_tool, is_root, lifecycle};

/// The tour's context and its record of what was seen.
pub struct Tour {
    pub dir: LabDir,
    pub ambit: PathBuf,
    /// Files the demo writes (manifests, captures), removed at the end.
    pub scratch: tempfile_dir::ScratchDir,
    failures: Vec<String>,
}

impl Tour {
    /// Prints an observation and records it if it is wrong.
    pub fn observe(&mut self, ok: bool, text: &str) {
        if ok {
            println!("    \u{2713} {text}");
        } else {
            println!("    \u{2717} {text}");
            self.failures.push(text.to_owned());
        }
    }

    /// Prints what the step does.
    pub fn act(&self, text: &str) {
        println!("  $ {text}");
    }

    /// Prints what a command answered, every line indented under the step.
    pub fn note(&self, text: &str) {
        for line in text.lines() {
            println!("    {line}");
        }
    }
}

/// Runs the tour; see the module docs.
pub fn run(dir: &LabDir, keep: bool) -> ExitCode {
    println!("Ambit demo: a two-node ambient mesh in network namespaces on this machine.\n");
    if let Err(err) = install_missing(dir) {
        eprintln!("ambit demo: {err}");
        return ExitCode::FAILURE;
    }
    // A lab the user already runs is theirs: the demo neither reuses nor removes it.
    if dir.load().is_ok() {
        eprintln!(
            "ambit demo: a lab is already up in {}; `ambit lab down` removes it, then run the demo again",
            dir.root.display()
        );
        return ExitCode::FAILURE;
    }
    let ambit = match std::env::current_exe() {
        Ok(path) => path,
        Err(err) => {
            eprintln!("ambit demo: cannot locate the ambit binary: {err}");
            return ExitCode::FAILURE;
        }
    };
    let scratch = match tempfile_dir::ScratchDir::new() {
        Ok(s) => s,
        Err(err) => {
            eprintln!("ambit demo: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut tour = Tour {
        dir: dir.clone(),
        ambit,
        scratch,
        failures: Vec::new(),
    };
    for (number, (title, step)) in steps::steps().into_iter().enumerate() {
        println!("\n{}. {title}", number + 1);
        match step(&mut tour) {
            Ok(()) => {}
            Err(err) => {
                println!("    \u{2717} {err:#}");
                tour.failures.push(format!("{title}: {err:#}"));
                break;
            }
        }
    }
    println!("\n{}. Tear down", steps::steps().len() + 1);
    if keep && dir.load().is_ok() {
        tour.note("--keep: the lab stays up. Try `ambit get pods`, `ambit explain client echo`, then `ambit lab down`.");
    } else {
        tour.act("ambit lab down");
        match lifecycle::down(dir) {
            Ok(removed) => {
                let left = crate::lab::netns::Topology::list(&dir.prefix).map(|l| l.len());
                tour.observe(
                    left.as_ref().is_ok_and(|n| *n == 0),
                    &format!(
                        "removed {} namespace(s) and stopped {} process(es); none left",
                        removed.namespaces, removed.processes
                    ),
                );
            }
            Err(err) => tour.observe(false, &format!("lab down failed: {}", error_chain(&err))),
        }
    }
    println!();
    if tour.failures.is_empty() {
        println!("Every observation was as expected.");
        ExitCode::SUCCESS
    } else {
        println!("{} observation(s) were wrong:", tour.failures.len());
        for failure in &tour.failures {
            println!("  - {failure}");
        }
        ExitCode::FAILURE
    }
}

/// Installs with apt-get what the lab and the tour need and the machine lacks, then checks what
/// no package fixes: the binaries the lab runs and the kernel's features.
fn install_missing(dir: &LabDir) -> Result<(), String> {
    if !is_root() {
        return Err("the demo needs root (it builds network namespaces and iptables rules)".into());
    }
    install_packages()?;
    for name in ["ambit-controller", "ambit-ztunnel", "ambit-waypoint"] {
        binary(name).map_err(|e| e.to_string())?;
    }
    match crate::cmd::check::kernel_problem(dir) {
        Some(problem) => Err(format!("this kernel cannot run the lab: {problem}")),
        None => Ok(()),
    }
}

/// The tools the lab and the tour run, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-restore", "iptables"),
    ("tcpdump", "tcpdump"),
];

/// The packages to install for the tools `has` lacks, each named once (two tools may come in
/// one package).
fn missing_packages(has: impl Fn(&str) -> bool) -> Vec<&'static str> {
    let mut missing: Vec<&str> = Vec::new();
    for (_, package) in TOOLS.iter().filter(|(tool, _)| !has(tool)) {
        if !missing.contains(package) {
            missing.push(package);
        }
    }
    missing
}

/// How long apt-get waits for another apt or dpkg run (on a fresh machine, often the first
/// boot's own updates) to release its lock, rather than failing at once.
const APT_LOCK_WAIT: &str = "DPkg::Lock::Timeout=300";

fn install_packages() -> Result<(), String> {
    let missing = missing_packages(has_tool);
    if missing.is_empty() {
        return Ok(());
    }
    println!("Installing {} (apt-get)", missing.join(", "));
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    let apt = |args: &[&str]| {
        let mut command = Command::new("apt-get");
        command
            .args(["-o", APT_LOCK_WAIT])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    if !ok(&mut apt(&["update", "-qq"])) || !ok(apt(&["install", "-y", "-qq"]).args(&missing)) {
        return Err(format!(
            "could not install {}: install them (`apt-get install -y {}`) and run the demo again",
            missing.join(", "),
            missing.join(" ")
        ));
    }
    Ok(())
}

/// A scratch directory removed on drop (the demo's only temporary files).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct ScratchDir(PathBuf);

    impl ScratchDir {
        pub fn new() -> Result<ScratchDir, String> {
            let path = std::env::temp_dir().join(format!("ambit-demo-{}", std::process::id()));
            std::fs::create_dir_all(&path)
                .map_err(|e| format!("creating {}: {e}", path.display()))?;
            Ok(ScratchDir(path))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_installed_once_for_all_its_missing_tools() {
        assert_eq!(
            missing_packages(|_| false),
            ["iproute2", "iptables", "tcpdump"]
        );
        assert_eq!(
            missing_packages(|tool| tool != "iptables-restore"),
            ["iptables"]
        );
        assert!(missing_packages(|_| true).is_empty());
    }
}
