//! Every setting of the controller: its flag, its environment variable, its default, and the
//! checks across them. Bad settings are all reported at once and the process exits with status 64
//! (EX_USAGE), before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ambit_proto::Identity;
use ambit_runtime::process::Validate;
use clap::Parser;

use crate::auth::token_review::ServiceAccountName;
use crate::leader::{LEASE_NAME, LeaderConfig};
use crate::reconcile::ControllerAddress;
use crate::reconcile::objects::WaypointSettings;
use crate::translate::Settings;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "ambit-controller",
    version,
    about = "Ambit's control plane and mesh CA"
)]
pub struct Config {
    /// Standalone mode: serve the Kubernetes YAML in this directory, watched live.
    #[arg(long, env = "AMBIT_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Kubernetes mode: watch the API server (in-cluster config or KUBECONFIG).
    #[arg(long, env = "AMBIT_KUBERNETES", default_value_t = false)]
    pub kubernetes: bool,
    /// Where the CA and the per-node tokens live (standalone). On Kubernetes only a plug-in CA
    /// mounted in <data-dir>/ca (or --ca-dir) is read from disk; a generated root is kept in the
    /// Secret `ambit-ca` of --controller-namespace.
    #[arg(
        long,
        env = "AMBIT_DATA_DIR",
        default_value = "/var/lib/ambit/controller"
    )]
    pub data_dir: PathBuf,
    /// The CA directory (Istio plug-in layout); defaults to <data-dir>/ca.
    #[arg(long, env = "AMBIT_CA_DIR")]
    pub ca_dir: Option<PathBuf>,
    #[arg(long, env = "AMBIT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Policies here without a selector apply mesh-wide.
    #[arg(long, env = "AMBIT_ROOT_NAMESPACE", default_value = "istio-system")]
    pub root_namespace: String,
    /// The namespace the controller runs in: its identity is ns/<this>/sa/ambit-controller.
    #[arg(
        long,
        env = "AMBIT_CONTROLLER_NAMESPACE",
        default_value = "ambit-system"
    )]
    pub controller_namespace: String,
    /// Kubernetes: the node agents' ServiceAccount, `<namespace>/<name>`; only its tokens obtain
    /// certificates for the workloads of their node. Default: <controller-namespace>/ambit-ztunnel.
    #[arg(long, env = "AMBIT_NODE_AGENT_SERVICE_ACCOUNT")]
    pub node_agent_service_account: Option<String>,
    /// Kubernetes: audiences a caller's token must be issued for, comma-separated (e.g. the
    /// audience of the agents' projected tokens). Empty: the API server's default audience.
    #[arg(long, env = "AMBIT_TOKEN_AUDIENCES", value_delimiter = ',')]
    pub token_audiences: Vec<String>,
    #[arg(long, env = "AMBIT_CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    #[arg(long, env = "AMBIT_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Config (xDS) and CA gRPC, over TLS. 15012 is istiod's port for the same.
    #[arg(long, env = "AMBIT_GRPC_ADDR", default_value = "0.0.0.0:15012")]
    pub grpc_addr: SocketAddr,
    /// Readiness, metrics and debug endpoints (plain HTTP; keep it on a private address).
    #[arg(long, env = "AMBIT_ADMIN_ADDR", default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// Lifetime of workload certificates.
    #[arg(long, env = "AMBIT_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    pub cert_ttl: Duration,
    /// Lifetime of a generated root CA.
    #[arg(long, env = "AMBIT_ROOT_TTL", default_value = "87600h", value_parser = parse_duration)]
    pub root_ttl: Duration,
    /// How often the manifest directory is checked for changes.
    #[arg(long, env = "AMBIT_RELOAD_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Kubernetes: the image of the waypoints deployed for waypoint Gateways.
    #[arg(long, env = "AMBIT_WAYPOINT_IMAGE", default_value = DEFAULT_WAYPOINT_IMAGE)]
    pub waypoint_image: String,
    /// Kubernetes: where waypoints dial the controller (they take an address, not a name).
    /// Default: the cluster IP of the Service `ambit-controller` in --controller-namespace, on
    /// the port of --grpc-addr.
    #[arg(long, env = "AMBIT_WAYPOINT_CONTROLLER_ADDR")]
    pub waypoint_controller_addr: Option<SocketAddr>,
    /// Kubernetes: this replica's name in the leader Lease. Default: the host name, which is the
    /// pod's name.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Kubernetes: how long the leader's claim lasts without renewal (client-go's default).
    #[arg(long, env = "AMBIT_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// Kubernetes: a leader that has not renewed for this long stops reconciling; shorter than
    /// --lease-duration, so it stops before another replica may take over.
    #[arg(long, env = "AMBIT_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// Kubernetes: the pause between attempts to acquire or renew the leader Lease.
    #[arg(long, env = "AMBIT_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
}

pub const DEFAULT_WAYPOINT_IMAGE: &str = concat!(
    "ghcr.io/ambit-mesh/ambit-waypoint:",
    env!("CARGO_PKG_VERSION")
);

pub use ambit_proto::settings::parse_duration;

impl Validate for Config {
    /// Cross-field checks. Returns every problem, not just the first.
    fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        match (&self.manifests, self.kubernetes) {
            (None, false) => {
                errors.push("choose a source: --manifests DIR (standalone) or --kubernetes".into())
            }
            (Some(_), true) => {
                errors.push("--manifests and --kubernetes are mutually exclusive".into())
            }
            (Some(dir), false) if !dir.is_dir() => {
                errors.push(format!("--manifests {}: not a directory", dir.display()))
            }
            _ => {}
        }
        if let Err(e) = self.node_agent_account() {
            errors.push(format!("--node-agent-service-account: {e}"));
        }
        if let Err(e) = self.controller_identity() {
            errors.push(format!("--trust-domain / --controller-namespace: {e}"));
        }
        if self.cert_ttl < Duration::from_secs(60)
            || self.cert_ttl > Duration::from_secs(90 * 24 * 3600)
        {
            errors.push(format!(
                "--cert-ttl {:?}: must be between 1m and 2160h (90 days)",
                self.cert_ttl
            ));
        }
        if self.root_ttl <= self.cert_ttl {
            errors.push("--root-ttl must be longer than --cert-ttl".into());
        }
        if self.reload_interval < Duration::from_millis(10) {
            errors.push("--reload-interval must be at least 10ms".into());
        }
        if self.grpc_addr == self.admin_addr {
            errors.push("--grpc-addr and --admin-addr must differ".into());
        }
        if self.kubernetes {
            self.validate_kubernetes(&mut errors);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

impl Config {
    /// The waypoint and leader-election settings, which only Kubernetes mode uses.
    fn validate_kubernetes(&self, errors: &mut Vec<String>) {
        if self.waypoint_image.trim().is_empty() {
            errors.push("--waypoint-image must not be empty".into());
        }
        if let Err(e) = self.leader_identity() {
            errors.push(e);
        }
        // client-go's rules: whole seconds on the Lease, the leader gives up before the lease
        // runs out for the others, and a renewal has time for a retry (its jitter is 1.2x).
        if self.lease_duration < Duration::from_secs(1) {
            errors.push("--lease-duration must be at least 1s".into());
        }
        if self.renew_deadline >= self.lease_duration {
            errors.push("--renew-deadline must be shorter than --lease-duration".into());
        }
        if self.retry_period.is_zero() || self.retry_period.mul_f64(1.2) >= self.renew_deadline {
            errors
                .push("--retry-period must be more than 0 and under --renew-deadline / 1.2".into());
        }
    }

    /// This replica's name in the leader Lease: --pod-name (POD_NAME), else the host name.
    pub fn leader_identity(&self) -> Result<String, String> {
        let hostname = || {
            std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        };
        self.pod_name
            .clone()
            .or_else(hostname)
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "--pod-name: not set, and no host name to use instead".into())
    }

    /// Leader election over the Lease [`LEASE_NAME`] in the controller's namespace.
    pub fn leader(&self) -> Result<LeaderConfig, String> {
        Ok(LeaderConfig {
            namespace: self.controller_namespace.clone(),
            lease_name: LEASE_NAME.into(),
            identity: self.leader_identity()?,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
        })
    }

    /// How waypoints are deployed; `root_cert_pem` is the mesh root they check the controller's
    /// certificate against.
    pub fn waypoints(&self, root_cert_pem: String) -> (WaypointSettings, ControllerAddress) {
        let settings = WaypointSettings {
            image: self.waypoint_image.clone(),
            trust_domain: self.trust_domain.clone(),
            cluster_domain: self.cluster_domain.clone(),
            controller_namespace: self.controller_namespace.clone(),
            token_audience: self.token_audiences.iter().find(|a| !a.is_empty()).cloned(),
            root_cert_pem,
        };
        let address = match self.waypoint_controller_addr {
            Some(addr) => ControllerAddress::Fixed(addr),
            None => ControllerAddress::ServiceIp(self.grpc_addr.port()),
        };
        (settings, address)
    }

    pub fn controller_identity(&self) -> Result<Identity, ambit_proto::identity::IdentityError> {
        Identity::new(
            &self.trust_domain,
            &self.controller_namespace,
            "ambit-controller",
        )
    }

    /// The node agents' ServiceAccount (Kubernetes mode).
    pub fn node_agent_account(&self) -> Result<ServiceAccountName, String> {
        let Some(value) = &self.node_agent_service_account else {
            return Ok(ServiceAccountName {
                namespace: self.controller_namespace.clone(),
                name: "ambit-ztunnel".into(),
            });
        };
        match value.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(ServiceAccountName {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{value:?} is not <namespace>/<name>")),
        }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.ca_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("ca"))
    }

    pub fn translation(&self) -> Settings {
        Settings {
            trust_domain: self.trust_domain.clone(),
            root_namespace: self.root_namespace.clone(),
            cluster_id: self.cluster_id.clone(),
            cluster_domain: self.cluster_domain.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("ambit-controller").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = parse(&[
            "--kubernetes",
            "--manifests",
            "/nonexistent",
            "--trust-domain",
            "Bad Domain",
            "--cert-ttl",
            "10s",
            "--grpc-addr",
            "127.0.0.1:1",
            "--admin-addr",
            "127.0.0.1:1",
            "--node-agent-service-account",
            "ambit-ztunnel",
        ]);
        let errors = config.validate().unwrap_err();
        assert_eq!(errors.len(), 5, "{errors:#?}");
        let dir = tempfile::tempdir().unwrap();
        let good = parse(&["--manifests", dir.path().to_str().unwrap()]);
        assert_eq!(good.validate(), Ok(()));
        let agents = good.node_agent_account().unwrap();
        assert_eq!(
            agents.username(),
            "system:serviceaccount:ambit-system:ambit-ztunnel"
        );
    }

    #[test]
    fn leader_election_timings_follow_client_go_rules() {
        let good = parse(&["--kubernetes", "--pod-name", "ambit-controller-0"]);
        assert_eq!(good.validate(), Ok(()));
        let leader = good.leader().unwrap();
        assert_eq!(leader.identity, "ambit-controller-0");
        assert_eq!(
            (
                leader.lease_duration,
                leader.renew_deadline,
                leader.retry_period
            ),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let bad = parse(&[
            "--kubernetes",
            "--pod-name",
            "ambit-controller-0",
            "--lease-duration",
            "500ms",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "1s",
            "--waypoint-image",
            " ",
        ]);
        let errors = bad.validate().unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:#?}");
        // Standalone mode does not elect a leader: its timings are not checked.
        let dir = tempfile::tempdir().unwrap();
        let standalone = parse(&[
            "--manifests",
            dir.path().to_str().unwrap(),
            "--renew-deadline",
            "1h",
        ]);
        assert_eq!(standalone.validate(), Ok(()));
    }

    #[test]
    fn waypoints_dial_a_fixed_address_or_the_controller_service() {
        let config = parse(&["--kubernetes", "--token-audiences", ",ambit"]);
        let (settings, address) = config.waypoints("PEM".into());
        assert_eq!(settings.token_audience.as_deref(), Some("ambit"));
        assert!(settings.image.ends_with(env!("CARGO_PKG_VERSION")));
        assert!(matches!(address, ControllerAddress::ServiceIp(15012)));
        let fixed = parse(&[
            "--kubernetes",
            "--waypoint-controller-addr",
            "10.0.0.9:15012",
        ]);
        assert!(matches!(
            fixed.waypoints(String::new()).1,
            ControllerAddress::Fixed(a) if a.to_string() == "10.0.0.9:15012"
        ));
    }
}
