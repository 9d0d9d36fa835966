//! What a benchmark reads about a running process from `/proc`: CPU seconds and memory; and the
//! processes a benchmark starts itself (`Owned`).

use std::io;

/// USER_HZ: the unit of `utime` and `stime`; 100 on every Linux the lab runs on.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds a process has used so far, split as the kernel accounts them: in its own code
/// (user) and in the kernel on its behalf (system: syscalls, the network stack, wake-ups).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, earlier: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
        }
    }
}

impl std::ops::AddAssign for CpuTimes {
    fn add_assign(&mut self, other: CpuTimes) {
        self.user += other.user;
        self.system += other.system;
    }
}

/// User and system CPU seconds `pid` has used so far.
pub fn cpu_times(pid: u32) -> io::Result<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields = stat_fields(&stat)?;
    let ticks = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .ok_or_else(|| io::Error::other(format!("/proc/{pid}/stat field {i}")))
    };
    // utime and stime are fields 14 and 15; the slice starts at field 3.
    Ok(CpuTimes {
        user: ticks(11)? / TICKS_PER_SECOND,
        system: ticks(12)? / TICKS_PER_SECOND,
    })
}

/// User + system CPU seconds `pid` has used so far.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    Ok(cpu_times(pid)?.total())
}

/// The fields after the command name, which may itself contain spaces and parentheses.
fn stat_fields(stat: &str) -> io::Result<Vec<&str>> {
    let rest = stat
        .rsplit_once(") ")
        .ok_or_else(|| io::Error::other("unexpected /proc/<pid>/stat format"))?
        .1;
    Ok(rest.split_whitespace().collect())
}

/// CPU seconds of `pid` and every process whose parent it is (nginx's master and workers).
pub fn cpu_seconds_with_children(pid: u32) -> io::Result<f64> {
    let mut total = cpu_seconds(pid)?;
    for child in children(pid)? {
        // A worker that exits between the listing and the read is simply not counted.
        total += cpu_seconds(child).unwrap_or(0.0);
    }
    Ok(total)
}

/// Direct children of `pid`, found by scanning `/proc` (no CONFIG_PROC_CHILDREN needed).
pub fn children(pid: u32) -> io::Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(other) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{other}/stat")) else {
            continue;
        };
        // The parent pid is field 4, the second after the command name.
        let parent = stat_fields(&stat)
            .ok()
            .and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()));
        if parent == Some(pid) {
            found.push(other);
        }
    }
    Ok(found)
}

/// A `/proc/<pid>/status` size field (`VmRSS:`, `VmHWM:`) in MiB.
pub fn status_mib(pid: u32, field: &str) -> io::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .ok_or_else(|| io::Error::other(format!("{field} in /proc/{pid}/status")))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other(format!("{field} value")))?;
    Ok(kib / 1024.0)
}

/// A process the benchmark started itself, killed when the benchmark ends (or fails).
pub struct Owned(pub std::process::Child);

impl Owned {
    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_readable() {
        let me = std::process::id();
        // Burn a little CPU so the counter is not zero by luck of the tick.
        let mut x = 0u64;
        for i in 0..50_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        let times = cpu_times(me).unwrap();
        assert!(times.user > 0.0, "{times:?}");
        assert!(cpu_seconds(me).unwrap() >= times.total());
        assert!(status_mib(me, "VmRSS:").unwrap() > 0.0);
        assert!(stat_fields("1 (a) b) c) S 7 8").unwrap()[1] == "7");
    }
}
