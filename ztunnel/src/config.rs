//! Every setting of the node agent: its flag, its environment variable, its default, and the
//! checks across them. Bad settings are all reported at once and the process exits with status 64
//! (EX_USAGE) before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_proto::settings::{parse_duration, parse_u32};
use ambit_runtime::flags::{ControlPlaneFlags, check_listeners};
use ambit_runtime::process::Validate;
use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CaptureMode {
    /// The agent installs TPROXY rules (iptables, mangle table) and policy routing itself.
    Iptables,
    /// Something else redirects traffic (or nothing does: tests, debugging).
    None,
}

#[derive(Debug, Clone, Parser)]
#[command(name = "ambit-ztunnel", version, about = "Ambit's per-node agent")]
pub struct Config {
    /// The Kubernetes node this agent serves.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    #[command(flatten)]
    pub control: ControlPlaneFlags,
    /// Captured outbound TCP arrives here.
    #[arg(long, env = "AMBIT_OUTBOUND_ADDR", default_value = "0.0.0.0:15001")]
    pub outbound_addr: SocketAddr,
    /// Captured plaintext inbound TCP arrives here.
    #[arg(
        long,
        env = "AMBIT_INBOUND_PLAINTEXT_ADDR",
        default_value = "0.0.0.0:15006"
    )]
    pub inbound_plaintext_addr: SocketAddr,
    /// HBONE (mTLS HTTP/2 CONNECT) for local pods arrives here.
    #[arg(long, env = "AMBIT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    #[arg(long, env = "AMBIT_CAPTURE", value_enum, default_value = "iptables")]
    pub capture: CaptureMode,
    /// SO_MARK on every socket the agent opens, so no capture rule ever matches its own traffic.
    #[arg(long, env = "AMBIT_SOCKET_MARK", default_value = "0x540", value_parser = parse_u32)]
    pub socket_mark: u32,
    /// The policy-routing table that delivers TPROXY-marked packets locally.
    #[arg(long, env = "AMBIT_ROUTE_TABLE", default_value_t = 100)]
    pub route_table: u32,
    /// Connections proxied at once; at the limit, accepting pauses (backpressure).
    #[arg(long, env = "AMBIT_MAX_CONNECTIONS", default_value_t = 16 * 1024)]
    pub max_connections: usize,
    /// A proxied connection with no bytes either way for this long is closed.
    #[arg(long, env = "AMBIT_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// After one side has finished sending, the other has this long to finish too.
    #[arg(long, env = "AMBIT_HALF_CLOSE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub half_close_timeout: Duration,
    /// Dialling an upstream (a pod, a peer agent, a waypoint) gives up after this long.
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// On SIGTERM: stop accepting, then give open connections this long to finish.
    #[arg(long, env = "AMBIT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if self.node_name.trim().is_empty() {
            errors.push("--node-name must not be empty".to_string());
        }
        self.control.validate(&mut errors);
        let mut listeners = vec![
            ("--outbound-addr", self.outbound_addr),
            ("--inbound-plaintext-addr", self.inbound_plaintext_addr),
            ("--hbone-addr", self.hbone_addr),
        ];
        listeners.extend(self.control.listeners());
        check_listeners(&listeners, &mut errors);
        if self.socket_mark & TPROXY_MARK != 0 {
            errors.push(format!(
                "--socket-mark {:#x} overlaps the TPROXY mark {TPROXY_MARK:#x}",
                self.socket_mark
            ));
        }
        if self.max_connections == 0 {
            errors.push("--max-connections must be at least 1".into());
        }
        for (flag, d) in [
            ("--idle-timeout", self.idle_timeout),
            ("--half-close-timeout", self.half_close_timeout),
            ("--connect-timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                errors.push(format!("{flag} must be more than 0"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// The mark TPROXY puts on diverted packets, and the socket-match rule on packets of the agent's
/// transparent sockets; `ip rule fwmark` sends both to the local table.
pub const TPROXY_MARK: u32 = 0x1;

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_runtime::process::Validate;

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = Config::try_parse_from([
            "ambit-ztunnel",
            "--node-name",
            " ",
            "--root-cert",
            "/nonexistent/root.pem",
            "--token-file",
            "/nonexistent/token",
            "--hbone-addr",
            "0.0.0.0:15001",
            "--socket-mark",
            "0x3",
        ])
        .unwrap();
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("--outbound-addr and --hbone-addr"))
        );
    }
}
