//! The lab's processes: the controller, the agents and the pods' apps, each started inside a
//! network namespace, detached from the `ambit` command that started it (it outlives it), with
//! its output in a log file.
//!
//! A process is remembered by pid *and* start time, so a pid the kernel reused for something
//! else is never mistaken for a lab process, and never signalled.

use std::fs::File;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use serde::{Deserialize, Serialize};

use super::netns::command_in;

#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("opening log {}", path.display())]
    Log { path: PathBuf, source: io::Error },
    #[error("starting {program} in {netns}")]
    Spawn {
        program: String,
        netns: String,
        source: io::Error,
    },
}

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    /// Clock ticks after boot (`/proc/<pid>/stat` field 22): with the pid, a unique identity.
    pub start_time: u64,
    pub log: PathBuf,
}

impl Proc {
    /// Whether this very process is still running (not a zombie, not a reused pid).
    pub fn alive(&self) -> bool {
        match stat(self.pid) {
            Some((state, start)) => start == self.start_time && state != 'Z' && state != 'X',
            None => false,
        }
    }

    /// Sends `signal` if the process is still the one started; a gone process is fine.
    pub fn signal(&self, signal: Signal) {
        if self.alive()
            && let Some(pid) = i32::try_from(self.pid).ok().and_then(Pid::from_raw)
        {
            let _ = kill_process(pid, signal);
        }
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The last `lines` lines of a file (empty if unreadable).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts `program args` in network namespace `netns` (through `ip netns exec`, which also
/// bind-mounts `/etc/netns/<netns>/hosts` over `/etc/hosts` for it), with stdout and stderr
/// appended to `log`. The process gets its own process group, so a Ctrl-C meant for the `ambit`
/// command that started it does not stop the lab.
pub fn spawn(
    netns: &str,
    program: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<Proc, ProcError> {
    let open = || {
        File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|source| ProcError::Log {
                path: log.to_owned(),
                source,
            })
    };
    let (out, err) = (open()?, open()?);
    let child = command_in(netns, program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| ProcError::Spawn {
            program: program.display().to_string(),
            netns: netns.to_owned(),
            source,
        })?;
    let pid = child.id();
    // The child is not waited for: it outlives this command. Until it execs, its start time is
    // already its own (fork sets it), so reading it now is exact.
    let start_time = stat(pid).map_or(0, |(_, start)| start);
    Ok(Proc {
        pid,
        start_time,
        log: log.to_owned(),
    })
}

/// State letter and start time of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: parse after it.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    // Field 22 overall is the 20th after the name (fields 3.. start at index 0).
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start))
}

/// Stops `procs` together: SIGTERM to every one at once, one shared `grace` for all of them to
/// exit, then SIGKILL to whatever is left. Each still gets the whole grace to shut down cleanly
/// (an agent removes its node's rules on SIGTERM), but stopping a lab takes as long as its
/// slowest process rather than the sum of them all. Returns how many were running.
pub fn stop_all<'a>(procs: impl IntoIterator<Item = &'a Proc>, grace: Duration) -> usize {
    let running: Vec<&Proc> = procs.into_iter().filter(|p| p.alive()).collect();
    for proc in &running {
        proc.signal(Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while running.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    // `signal` skips the ones that exited, so only stragglers are killed.
    for proc in &running {
        proc.signal(Signal::KILL);
    }
    running.len()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Child, Command};

    use super::*;

    /// A shell running `on_term` when SIGTERM arrives (`""` ignores it), as a lab process.
    fn shell(on_term: &str) -> (Child, Proc) {
        let script = format!("trap '{on_term}' TERM; while :; do sleep 0.02; done");
        let child = Command::new("sh").args(["-c", &script]).spawn().unwrap();
        let pid = child.id();
        // The trap must be set before the signal comes, or SIGTERM's default kills the shell.
        std::thread::sleep(Duration::from_millis(200));
        let proc = Proc {
            pid,
            start_time: stat(pid).unwrap().1,
            log: PathBuf::new(),
        };
        (child, proc)
    }

    #[test]
    fn stop_all_waits_for_everyone_at_once_then_kills_stragglers() {
        // Three that take 300 ms to exit cleanly, as an agent removing its rules does, and two
        // that ignore SIGTERM. One by one this takes 3 x 300 ms + 2 x grace.
        let mut clean: Vec<_> = (0..3).map(|_| shell("sleep 0.3; exit 7")).collect();
        let mut stuck: Vec<_> = (0..2).map(|_| shell("")).collect();
        let grace = Duration::from_millis(800);
        let start = Instant::now();
        let all = clean.iter().chain(&stuck).map(|(_, p)| p);
        assert_eq!(stop_all(all, grace), 5);
        let took = start.elapsed();
        assert!(took < Duration::from_millis(1500), "took {took:?}");
        for (child, _) in &mut clean {
            assert_eq!(child.wait().unwrap().code(), Some(7), "exited on its own");
        }
        for (child, _) in &mut stuck {
            assert_eq!(child.wait().unwrap().signal(), Some(9), "killed");
        }
        // Gone processes are not counted (or signalled) again.
        let again = clean.iter().chain(&stuck).map(|(_, p)| p);
        assert_eq!(stop_all(again, grace), 0);
    }
}
