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

use crate::trace::{Endpoint, TraceSettings};

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
    /// Send OpenTelemetry traces to this OTLP/HTTP collector, `http://host:port` (spans are
    /// POSTed to `<endpoint>/v1/traces`). Unset: no spans, and `traceparent` passes untouched.
    #[arg(long, env = "AMBIT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The share of new traces recorded, 0.0 to 1.0. A request whose `traceparent` carries a
    /// sampling decision keeps it, so one trace is never recorded in pieces.
    #[arg(long, env = "AMBIT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,
    /// Spans are sent at least this often (OTel's batch processor default).
    #[arg(long, env = "AMBIT_OTLP_FLUSH_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub otlp_flush_interval: Duration,
    /// Finished spans waiting to be sent; beyond it new spans are dropped and counted, so a slow
    /// collector never holds up requests (OTel's default queue size).
    #[arg(long, env = "AMBIT_OTLP_QUEUE_SIZE", default_value_t = 2048)]
    pub otlp_queue_size: usize,
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
            ("--otlp-queue-size", self.otlp_queue_size),
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
            ("--otlp-flush-interval", self.otlp_flush_interval),
        ] {
            if d.is_zero() {
                errors.push(format!("{flag} must be more than 0"));
            }
        }
        if let Some(e) = &self.otlp_endpoint
            && let Err(e) = Endpoint::parse(e)
        {
            errors.push(e.to_string());
        }
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            errors.push(format!(
                "--trace-sampling {}: must be between 0.0 and 1.0",
                self.trace_sampling
            ));
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

    /// Tracing, if `--otlp-endpoint` asks for it (call after `validate`).
    pub fn trace_settings(&self) -> Option<TraceSettings> {
        let endpoint = Endpoint::parse(self.otlp_endpoint.as_deref()?).ok()?;
        let (namespace, name) = self.gateway().ok()?;
        Some(TraceSettings {
            endpoint,
            sampling: self.trace_sampling,
            flush_interval: self.otlp_flush_interval,
            queue: self.otlp_queue_size,
            service_name: format!("{name}.{namespace}"),
            namespace,
        })
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

    fn parse(extra: &[&str]) -> Config {
        let mut args = vec![
            "ambit-waypoint",
            "--waypoint",
            "shop/waypoint",
            "--root-cert",
            "r",
            "--token-file",
            "t",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap()
    }

    #[test]
    fn tracing_is_off_by_default() {
        let config = parse(&[]);
        assert!(config.trace_settings().is_none());
    }

    #[test]
    fn tracing_settings_are_checked() {
        let config = parse(&[
            "--otlp-endpoint",
            "https://collector:4318",
            "--trace-sampling",
            "1.5",
            "--otlp-queue-size",
            "0",
            "--otlp-flush-interval",
            "0s",
        ]);
        let errors = config.validate().unwrap_err();
        for flag in [
            "--otlp-endpoint",
            "--trace-sampling",
            "--otlp-queue-size",
            "--otlp-flush-interval",
        ] {
            assert!(
                errors.iter().any(|e| e.contains(flag)),
                "{flag}: {errors:#?}"
            );
        }
        let config = parse(&[
            "--otlp-endpoint",
            "http://collector:4318",
            "--trace-sampling",
            "0.25",
        ]);
        let settings = config.trace_settings().unwrap();
        assert_eq!(settings.endpoint.uri, "http://collector:4318/v1/traces");
        assert_eq!(settings.sampling, 0.25);
        assert_eq!(settings.service_name, "waypoint.shop");
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
