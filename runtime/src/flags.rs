//! The flags every proxy needs to reach the control plane and to be observed.

use std::net::SocketAddr;
use std::path::PathBuf;

use ambit_proto::Identity;
use ambit_proto::identity::IdentityError;
use ambit_proto::tls::TrustRoots;
use anyhow::Context;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct ControlPlaneFlags {
    /// The controller's config and CA gRPC address.
    #[arg(long, env = "AMBIT_CONTROLLER_ADDR", default_value = "127.0.0.1:15012")]
    pub controller_addr: SocketAddr,
    /// PEM roots that the controller's certificate must chain to (the mesh root).
    #[arg(long, env = "AMBIT_ROOT_CERT")]
    pub root_cert: PathBuf,
    /// The bearer token for the controller (config stream and CA), re-read on every reconnect
    /// and certificate request. Standalone, the controller writes one per node
    /// (`<data>/tokens/node-<node>.token`) and per waypoint
    /// (`<data>/tokens/waypoint-<namespace>.<name>.token`).
    #[arg(long, env = "AMBIT_TOKEN_FILE")]
    pub token_file: PathBuf,
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The controller runs as ns/<this>/sa/ambit-controller; its certificate must say so.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_NAMESPACE",
        default_value = "ambit-system"
    )]
    pub controller_namespace: String,
    /// Config dump, log level, readiness, metrics. Local only: it can change the log level.
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15000")]
    pub admin_addr: SocketAddr,
    /// Prometheus metrics (/metrics) and readiness (/healthz/ready) for scrapers and probes.
    #[arg(long, env = "AMBIT_METRICS_ADDR", default_value = "0.0.0.0:15020")]
    pub metrics_addr: SocketAddr,
}

impl ControlPlaneFlags {
    /// Appends every problem to `errors`.
    pub fn validate(&self, errors: &mut Vec<String>) {
        if let Err(e) = self.controller_identity() {
            errors.push(format!("--trust-domain / --controller-namespace: {e}"));
        }
        for (flag, path) in [
            ("--root-cert", &self.root_cert),
            ("--token-file", &self.token_file),
        ] {
            if !path.is_file() {
                errors.push(format!("{flag} {}: no such file", path.display()));
            }
        }
    }

    /// The listeners these flags name, for the caller's check that no two collide.
    pub fn listeners(&self) -> [(&'static str, SocketAddr); 2] {
        [
            ("--admin-addr", self.admin_addr),
            ("--metrics-addr", self.metrics_addr),
        ]
    }

    pub fn controller_identity(&self) -> Result<Identity, IdentityError> {
        Identity::new(
            &self.trust_domain,
            &self.controller_namespace,
            "ambit-controller",
        )
    }

    pub fn roots(&self) -> anyhow::Result<TrustRoots> {
        let pem = std::fs::read_to_string(&self.root_cert)
            .with_context(|| format!("reading --root-cert {}", self.root_cert.display()))?;
        TrustRoots::from_pem(&pem).context("parsing --root-cert")
    }
}

/// Reports every pair of `listeners` bound to the same address.
pub fn check_listeners(listeners: &[(&str, SocketAddr)], errors: &mut Vec<String>) {
    for (i, (a, addr)) in listeners.iter().enumerate() {
        for (b, other) in &listeners[i + 1..] {
            if addr == other {
                errors.push(format!("{a} and {b} are both {addr}"));
            }
        }
    }
}
