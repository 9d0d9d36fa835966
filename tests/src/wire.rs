//! Looking at packets on a node's link with tcpdump, to prove what is (and is not) on the wire.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ambit_cli::lab::netns::command_in;

use crate::eventually;

/// A running `tcpdump -i eth0` in a node's namespace, writing a pcap file.
pub struct Sniffer {
    child: Child,
    file: PathBuf,
    netns: String,
}

impl Sniffer {
    pub fn start(netns: &str, dir: &std::path::Path) -> Sniffer {
        let file = dir.join(format!("{netns}.pcap"));
        let mut child = command_in(netns, "tcpdump")
            .args(["-i", "eth0", "--immediate-mode", "-U", "-s", "0", "-w"])
            .arg(&file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tcpdump (apt-get install tcpdump)");
        // tcpdump writes the pcap header once it is capturing.
        eventually("tcpdump capturing", Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("tcpdump exited: {status}");
            }
            match std::fs::metadata(&file) {
                Ok(m) if m.len() >= 24 => Ok(()),
                _ => Err("no pcap header yet".to_string()),
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        Sniffer {
            child,
            file,
            netns: netns.to_string(),
        }
    }

    /// Stops capturing (SIGINT flushes the file) and returns the raw capture.
    pub fn stop(mut self) -> Captured {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        Captured {
            bytes: std::fs::read(&self.file).expect("pcap file"),
            file: self.file.clone(),
            netns: self.netns.clone(),
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Captured {
    pub bytes: Vec<u8>,
    file: PathBuf,
    netns: String,
}

impl Captured {
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// Packets matching a tcpdump `filter` ("tcp dst port 15008").
    pub fn count(&self, filter: &str) -> usize {
        let out = command_in(&self.netns, "tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .args(filter.split_whitespace())
            .output()
            .expect("tcpdump -r");
        String::from_utf8_lossy(&out.stdout).lines().count()
    }
}
