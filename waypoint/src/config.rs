//! Every setting of the waypoint: its flag, its environment variable, its default, and the checks
//! across them. Bad settings are all reported at once and the process exits with status 64
//! (EX_USAGE) before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use ambit_proto::Identity;
use ambit_proto::settings::parse_duration;
use ambit_runtime::flags::{ControlPlaneFlags, check_listeners};
use ambit_runtime::process::Validate;
use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(name = "ambit-waypoint", version, about = "Ambit's shared L7 proxy")]
pub struct Config {
    /// The waypoint Gateway this proxy serves, `<namespace>/<name>`. Its identity is
    /// `ns/<namespace>/sa/<name>`, the only one the CA lets a waypoint obtain.
    #[arg(long, env = "AMBIT_WAYPOINT")]
    pub waypoint: String,
    #[command(flatten)]
    pub control: ControlPlaneFlags,
    /// HBONE from node agents arrives here.
    #[arg(long, env = "AMBIT_HBONE_ADDR", default_value = "0.0.0.0:15008")]
    pub hbone_addr: SocketAddr,
    /// The HBONE port of the destination node agents (always 15008 in a mesh; labs may differ).
    #[arg(long, env = "AMBIT_UPSTREAM_HBONE_PORT", default_value_t = ambit_proto::hbone::HBONE_PORT)]
    pub upstream_hbone_port: u16,
    /// Subscribe to HTTP routes and backend policies. Off until the controller translates
    /// HTTPRoute: a controller that does not serve the types refuses the whole config stream.
    /// Without routes every request goes to the service it was addressed to.
    #[arg(long, env = "AMBIT_ROUTES_FROM_CONTROLLER", default_value_t = false)]
    pub routes_from_controller: bool,
    /// HBONE connections from agents at once; at the limit, accepting pauses (backpressure).
    #[arg(long, env = "AMBIT_MAX_CONNECTIONS", default_value_t = 16 * 1024)]
    pub max_connections: usize,
    /// Requests being proxied at once across all connections; beyond it new requests get 503
    /// at once rather than queueing without bound.
    #[arg(long, env = "AMBIT_MAX_REQUESTS", default_value_t = 64 * 1024)]
    pub max_requests: usize,
    /// How long a tunnel may stay silent before its protocol is decided: a client that waits
    /// for the server to speak first (MySQL, SMTP) is treated as opaque TCP after this long.
    #[arg(long, env = "AMBIT_PROTOCOL_DETECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub protocol_detect_timeout: Duration,
    /// Request bodies up to this size are kept while they are sent, so a failed attempt can be
    /// retried or mirrored; a longer body is streamed and not retried once sent.
    #[arg(long, env = "AMBIT_RETRY_BUFFER_BYTES", default_value_t = 64 * 1024)]
    pub retry_buffer_bytes: usize,
    /// Opaque TCP: no bytes either way for this long closes the connection.
    #[arg(long, env = "AMBIT_IDLE_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Opaque TCP: after one side finished sending, the other has this long to finish too.
    #[arg(long, env = "AMBIT_HALF_CLOSE_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub half_close_timeout: Duration,
    /// Dialling a destination agent gives up after this long (a connect failure: 503).
    #[arg(long, env = "AMBIT_CONNECT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// On SIGTERM: stop accepting, then give open requests this long to finish.
    #[arg(long, env = "AMBIT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        match self.identity() {
            Ok(_) => {}
            Err(e) => errors.push(format!("--waypoint {:?}: {e}", self.waypoint)),
        }
        self.control.validate(&mut errors);
        let mut listeners = vec![("--hbone-addr", self.hbone_addr)];
        listeners.extend(self.control.listeners());
        check_listeners(&listeners, &mut errors);
        for (flag, n) in [
            ("--max-connections", self.max_connections),
            ("--max-requests", self.max_requests),
            (
                "--upstream-hbone-port",
                usize::from(self.upstream_hbone_port),
            ),
        ] {
            if n == 0 {
                errors.push(format!("{flag} must be at least 1"));
            }
        }
        for (flag, d) in [
            ("--protocol-detect-timeout", self.protocol_detect_timeout),
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

impl Config {
    /// `(namespace, name)` of the waypoint Gateway.
    pub fn gateway(&self) -> Result<(String, String), String> {
        match self.waypoint.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok((ns.to_string(), name.to_string()))
            }
            _ => Err("must be <namespace>/<name>".into()),
        }
    }

    /// The waypoint's own identity: its Gateway's name as the service account.
    pub fn identity(&self) -> Result<Identity, String> {
        let (ns, name) = self.gateway()?;
        Identity::new(&self.control.trust_domain, &ns, &name).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = Config::try_parse_from([
            "ambit-waypoint",
            "--waypoint",
            "no-slash",
            "--root-cert",
            "/nonexistent/root.pem",
            "--token-file",
            "/nonexistent/token",
            "--admin-addr",
            "0.0.0.0:15008",
            "--protocol-detect-timeout",
            "0s",
        ])
        .unwrap();
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("--hbone-addr and --admin-addr"))
        );
    }

    #[test]
    fn the_identity_is_the_gateway_name() {
        let config = Config::try_parse_from([
            "ambit-waypoint",
            "--waypoint",
            "shop/waypoint",
            "--root-cert",
            "r",
            "--token-file",
            "t",
        ])
        .unwrap();
        assert_eq!(
            config.identity().unwrap().to_string(),
            "spiffe://cluster.local/ns/shop/sa/waypoint"
        );
    }
}
