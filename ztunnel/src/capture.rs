//! The node's redirection rules: TPROXY in the mangle table plus policy routing (NETLAB.md,
//! "Node-level capture").
//!
//! Everything lives in one chain, `AMBIT-PREROUTING`, jumped to from `PREROUTING`. Each sync
//! rewrites the whole chain in one `iptables-restore --noflush` transaction, so the rules are
//! always either the old set or the new one, a restart never duplicates them, and no per-pod
//! bookkeeping can drift from what the kernel holds. Per captured pod `P`:
//! - TCP SYNs from `P` -> the outbound listener;
//! - TCP SYNs to `P:15008` -> the HBONE listener; other TCP SYNs to `P` -> the plaintext listener.
//!
//! Only SYNs are diverted; the rest of each flow follows its (transparent) socket through the
//! `socket --transparent` rule at the top. That rule also delivers the replies of connections the
//! agent opened from a pod's address. Packets of the agent's own sockets carry its SO_MARK and
//! are never diverted. Node-originated traffic (kubelet probes) never traverses PREROUTING, so it
//! is never captured.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::IpAddr;
use std::process::{Command, Stdio};

use tracing::{debug, info};

use crate::config::TPROXY_MARK;

const CHAIN: &str = "AMBIT-PREROUTING";

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("running {command}: {error}")]
    Spawn { command: String, error: String },
    #[error("{command} failed: {stderr}")]
    Failed { command: String, stderr: String },
}

#[derive(Debug, Clone)]
pub struct Ports {
    pub outbound: u16,
    pub inbound_plaintext: u16,
    pub hbone: u16,
}

#[derive(Debug, Clone)]
pub struct Capture {
    pub ports: Ports,
    pub socket_mark: u32,
    pub route_table: u32,
}

impl Capture {
    /// Policy routing and the chain with its jump; idempotent.
    pub fn install(&self) -> Result<(), CaptureError> {
        let mark = format!("{TPROXY_MARK:#x}/{TPROXY_MARK:#x}");
        let table = self.route_table.to_string();
        let rules = run("ip", &["-4", "rule", "show"])?;
        if !rules.contains(&format!("fwmark {mark} lookup {table}"))
            && !rules.contains(&format!(
                "fwmark {TPROXY_MARK:#x}/{TPROXY_MARK:#x} lookup {table}"
            ))
        {
            run(
                "ip",
                &["-4", "rule", "add", "fwmark", &mark, "lookup", &table],
            )?;
        }
        run(
            "ip",
            &[
                "-4",
                "route",
                "replace",
                "local",
                "0.0.0.0/0",
                "dev",
                "lo",
                "table",
                &table,
            ],
        )?;
        self.sync(&BTreeSet::new())?;
        if run(
            "iptables",
            &["-t", "mangle", "-C", "PREROUTING", "-j", CHAIN],
        )
        .is_err()
        {
            run(
                "iptables",
                &["-t", "mangle", "-I", "PREROUTING", "1", "-j", CHAIN],
            )?;
        }
        info!(table = %table, "capture installed");
        Ok(())
    }

    /// Makes the chain capture exactly `pods`.
    pub fn sync(&self, pods: &BTreeSet<IpAddr>) -> Result<(), CaptureError> {
        let script = self.ruleset(pods);
        debug!(pods = pods.len(), "syncing capture rules");
        restore(&script)
    }

    /// The `iptables-restore` input for `pods`.
    pub fn ruleset(&self, pods: &BTreeSet<IpAddr>) -> String {
        let mark = format!("{TPROXY_MARK:#x}/{TPROXY_MARK:#x}");
        let own = format!("{:#x}/{:#x}", self.socket_mark, self.socket_mark);
        let tproxy =
            |port: u16| format!("-j TPROXY --on-port {port} --on-ip 0.0.0.0 --tproxy-mark {mark}");
        let mut out = format!("*mangle\n:{CHAIN} - [0:0]\n");
        out += &format!("-A {CHAIN} -m mark --mark {own} -j RETURN\n");
        out += &format!("-A {CHAIN} -p tcp -m socket --transparent -j MARK --set-xmark {mark}\n");
        out += &format!("-A {CHAIN} -m mark --mark {mark} -j RETURN\n");
        let p = &self.ports;
        for ip in pods.iter().filter(|ip| ip.is_ipv4()) {
            out += &format!(
                "-A {CHAIN} -s {ip}/32 -p tcp --syn {}\n",
                tproxy(p.outbound)
            );
            out += &format!(
                "-A {CHAIN} -d {ip}/32 -p tcp --dport {} --syn {}\n",
                p.hbone,
                tproxy(p.hbone)
            );
            out += &format!(
                "-A {CHAIN} -d {ip}/32 -p tcp --syn {}\n",
                tproxy(p.inbound_plaintext)
            );
        }
        out += "COMMIT\n";
        out
    }

    /// Removes everything `install` added (clean shutdown). Missing pieces are not errors.
    pub fn remove(&self) -> Result<(), CaptureError> {
        let mark = format!("{TPROXY_MARK:#x}/{TPROXY_MARK:#x}");
        let table = self.route_table.to_string();
        while run(
            "iptables",
            &["-t", "mangle", "-D", "PREROUTING", "-j", CHAIN],
        )
        .is_ok()
        {}
        let _ = run("iptables", &["-t", "mangle", "-F", CHAIN]);
        let _ = run("iptables", &["-t", "mangle", "-X", CHAIN]);
        while run(
            "ip",
            &["-4", "rule", "del", "fwmark", &mark, "lookup", &table],
        )
        .is_ok()
        {}
        let _ = run("ip", &["-4", "route", "flush", "table", &table]);
        info!("capture removed");
        Ok(())
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, CaptureError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| CaptureError::Spawn {
            command: command.clone(),
            error: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `iptables-restore --noflush`: replaces only the chains the script declares, atomically.
fn restore(script: &str) -> Result<(), CaptureError> {
    let command = "iptables-restore --noflush".to_string();
    let mut child = Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| CaptureError::Spawn {
            command: command.clone(),
            error: e.to_string(),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| CaptureError::Spawn {
                command: command.clone(),
                error: e.to_string(),
            })?;
    }
    let out = child.wait_with_output().map_err(|e| CaptureError::Spawn {
        command: command.clone(),
        error: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(CaptureError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_marks_sockets_first_and_diverts_only_syns() {
        let capture = Capture {
            ports: Ports {
                outbound: 15001,
                inbound_plaintext: 15006,
                hbone: 15008,
            },
            socket_mark: 0x539,
            route_table: 100,
        };
        let pods = ["10.244.1.5".parse().unwrap()].into_iter().collect();
        let rules = capture.ruleset(&pods);
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines[1], ":AMBIT-PREROUTING - [0:0]");
        assert!(lines[2].contains("--mark 0x539/0x539 -j RETURN"));
        assert!(lines[3].contains("socket --transparent"));
        assert!(lines[5].starts_with("-A AMBIT-PREROUTING -s 10.244.1.5/32 -p tcp --syn"));
        assert!(lines[5].ends_with("--on-port 15001 --on-ip 0.0.0.0 --tproxy-mark 0x1/0x1"));
        assert!(lines[6].contains("--dport 15008 --syn -j TPROXY --on-port 15008"));
        assert!(lines[7].contains("-d 10.244.1.5/32 -p tcp --syn -j TPROXY --on-port 15006"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
    }
}
