//! The lab's only contact with the kernel's network configuration: `ip` commands aimed at a named
//! namespace (`ip -n`), sysctl writes from a thread inside it, and the list of namespaces and of
//! the processes in them. Nothing here addresses the root namespace's interfaces: every `ip`
//! call either names a namespace or adds/deletes one.

use std::collections::BTreeMap;
use std::io;
use std::process::Command;
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::NetnsError;
use super::enter::{NETNS_DIR, in_netns};

/// How long SIGKILLed processes get to leave a namespace before cleanup reports them. They die
/// at once unless stuck in the kernel, so this only bounds the wait for a broken machine.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
const KILL_POLL: Duration = Duration::from_millis(10);

/// Runs `ip args...` and returns its stdout; a failure carries the command line and its stderr.
pub(crate) fn ip(args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("ip {}", args.join(" "));
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|source| NetnsError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(NetnsError::Command {
            command,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Creates (names) a network namespace. The first `ip netns add` on a machine also makes
/// /run/netns a shared mount point, and two doing that at once can stack two mounts, hiding the
/// namespaces made under the lower one; within this process (test threads create topologies in
/// parallel) they therefore take turns.
pub(crate) fn add_netns(name: &str) -> Result<(), NetnsError> {
    static ADDING: Mutex<()> = Mutex::new(());
    let _turn = ADDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    ip(&["netns", "add", name]).map(drop)
}

/// Runs `ip -n <netns> args...`.
pub(crate) fn ip_in(netns: &str, args: &[&str]) -> Result<String, NetnsError> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    ip(&full)
}

/// Writes sysctls (dotted keys, `net.ipv4.ip_forward`) inside `netns`. The `net.*` tree under
/// /proc/sys shows the namespace of the thread that opens it, so a thread that entered the
/// namespace writes there directly, without `ip netns exec` and without needing `sysctl(8)`.
pub(crate) fn sysctl(netns: &str, settings: &[(&str, &str)]) -> Result<(), NetnsError> {
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    let failed = in_netns(netns, move || {
        for (key, value) in &settings {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if let Err(source) = std::fs::write(&path, value) {
                return Ok(Some((key.clone(), source)));
            }
        }
        Ok(None)
    })?;
    match failed {
        None => Ok(()),
        Some((key, source)) => Err(NetnsError::Sysctl {
            netns: netns.to_owned(),
            key,
            source,
        }),
    }
}

/// Every named network namespace (the entries of /run/netns).
pub(crate) fn list_netns() -> Result<Vec<String>, NetnsError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        // No namespace was ever named on this machine.
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Io {
                path: NETNS_DIR.into(),
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetnsError::Io {
            path: NETNS_DIR.into(),
            source,
        })?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The processes whose network namespace is `netns`, never counting this process.
fn pids_in(netns: &str) -> Result<Vec<i32>, NetnsError> {
    let own = std::process::id();
    let out = ip(&["netns", "pids", netns])?;
    Ok(out
        .lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter_map(|pid| i32::try_from(pid).ok())
        .collect())
}

/// Kills every process in the given namespaces, then deletes the namespaces. Killing first
/// matters: a process left inside would keep the namespace (and its veths) alive after
/// `ip netns del` only unnamed it.
pub(crate) fn remove_netns(names: &[String]) -> Result<(), NetnsError> {
    kill_processes(names)?;
    for name in names {
        match ip(&["netns", "del", name]) {
            Ok(_) => {}
            // Someone else (a concurrent cleanup) removed it in the meantime.
            Err(_) if !list_netns()?.contains(name) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// SIGKILLs every process in the given namespaces and waits until none is left.
pub(crate) fn kill_processes(names: &[String]) -> Result<(), NetnsError> {
    let deadline = Instant::now() + KILL_DEADLINE;
    let mut remaining: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    loop {
        remaining.clear();
        for name in names {
            let pids = pids_in(name)?;
            if !pids.is_empty() {
                remaining.insert(name, pids);
            }
        }
        if remaining.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let (netns, pids) = remaining.pop_first().expect("not empty");
            return Err(NetnsError::ProcessesRemain {
                netns: netns.to_owned(),
                pids,
            });
        }
        for pid in remaining.values().flatten() {
            if let Some(pid) = Pid::from_raw(*pid) {
                // ESRCH: it exited since it was listed, which is what we want.
                let _ = kill_process(pid, Signal::KILL);
            }
        }
        thread::sleep(KILL_POLL);
    }
}

/// Deletes interface `link` in `netns`; one that is already gone is fine.
pub(crate) fn delete_link(netns: &str, link: &str) -> Result<(), NetnsError> {
    match ip_in(netns, &["link", "del", link]) {
        Ok(_) => Ok(()),
        // Gone with its peer, e.g. when the namespace holding the peer was freed.
        Err(_) if ip_in(netns, &["link", "show", "dev", link]).is_err() => Ok(()),
        Err(err) => Err(err),
    }
}
