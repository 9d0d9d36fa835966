//! Watching a node's link with tcpdump, so the demo shows what actually crossed the wire.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

use super::netns::command_in;

const START_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("starting tcpdump in {netns}: {reason} (apt-get install -y tcpdump)")]
    Start { netns: String, reason: String },
    #[error("reading the capture {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A running `tcpdump -i eth0 tcp` in a node's namespace, writing a pcap file.
pub struct Sniffer {
    child: Child,
    file: PathBuf,
    netns: String,
}

impl Sniffer {
    pub fn start(netns: &str, dir: &Path) -> Result<Sniffer, WireError> {
        let file = dir.join(format!("{netns}.pcap"));
        let fail = |reason: String| WireError::Start {
            netns: netns.to_owned(),
            reason,
        };
        let _ = std::fs::remove_file(&file);
        let child = command_in(netns, "tcpdump")
            .args(["-i", "eth0", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| fail(e.to_string()))?;
        let mut sniffer = Sniffer {
            child,
            file,
            netns: netns.to_owned(),
        };
        // tcpdump writes the pcap header once it is capturing.
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = sniffer.child.try_wait() {
                return Err(fail(format!("it exited ({status})")));
            }
            if std::fs::metadata(&sniffer.file).is_ok_and(|m| m.len() >= 24) {
                return Ok(sniffer);
            }
            if start.elapsed() > START_DEADLINE {
                return Err(fail("no capture file after 10s".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops capturing (SIGINT makes tcpdump flush) and returns what it saw.
    pub fn stop(mut self) -> Result<Capture, WireError> {
        if let Some(pid) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::INT);
        }
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).map_err(|source| WireError::Read {
            path: self.file.clone(),
            source,
        })?;
        Ok(Capture {
            bytes,
            file: self.file.clone(),
            netns: self.netns.clone(),
        })
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Capture {
    bytes: Vec<u8>,
    file: PathBuf,
    netns: String,
}

impl Capture {
    /// Whether `needle` appears anywhere in the captured packets.
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Packets matching a tcpdump filter ("tcp dst port 15008").
    pub fn count(&self, filter: &str) -> usize {
        let out = command_in(&self.netns, "tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .args(filter.split_whitespace())
            .stderr(Stdio::null())
            .output();
        out.map_or(0, |o| String::from_utf8_lossy(&o.stdout).lines().count())
    }
}
