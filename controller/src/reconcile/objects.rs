//! What a waypoint Gateway becomes on the cluster: a ServiceAccount (its identity), a ConfigMap
//! with the mesh root (to check the controller's certificate), a Deployment running
//! `ambit-waypoint`, and a Service in front of it. Pure functions of the Gateway and the settings,
//! so they are tested without a cluster and applying them twice changes nothing.
//!
//! Every object is owned by the Gateway (`controller: true`), so deleting the Gateway deletes
//! them through the garbage collector, and carries [`MANAGED_BY`] so the sweep can find the ones
//! whose Gateway is gone when the garbage collector is not running.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    PodSpec, PodTemplateSpec, Probe, ProjectedVolumeSource, SecurityContext, Service,
    ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::translate::waypoint::GATEWAY_NAME_LABEL;

/// On every object the reconciler makes, and the selector the sweep lists them with.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ambit-controller");
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const HBONE_PORT: i32 = ambit_proto::hbone::HBONE_PORT as i32;
/// The waypoint's `--metrics-addr` port: `/metrics` and `/healthz/ready`.
pub const METRICS_PORT: i32 = 15020;
const TOKEN_DIR: &str = "/var/run/secrets/ambit";
const ROOT_DIR: &str = "/etc/ambit/root";
const ROOT_KEY: &str = "root-cert.pem";
/// Projected tokens are rotated by the kubelet at 80% of this; the waypoint re-reads the file for
/// every certificate request and config stream, so it only ever needs the current one.
const TOKEN_SECONDS: i64 = 3600;

/// What every waypoint shares: how it is run and how it reaches the controller.
#[derive(Debug, Clone)]
pub struct WaypointSettings {
    pub image: String,
    pub trust_domain: String,
    pub cluster_domain: String,
    pub controller_namespace: String,
    /// The audience the waypoint's token is issued for (the CA's first `--token-audiences`);
    /// none: the API server's default.
    pub token_audience: Option<String>,
    /// The mesh root, PEM, that the waypoint checks the controller's certificate against.
    pub root_cert_pem: String,
}

/// The Gateway an object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl GatewayKey {
    pub fn service_hostname(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }

    /// Not the Gateway's own name: a user's ConfigMap of that name must not be overwritten.
    pub fn root_config_map(&self) -> String {
        format!("{}-ambit-root-cert", self.name)
    }

    fn selector(&self) -> BTreeMap<String, String> {
        [(GATEWAY_NAME_LABEL.to_string(), self.name.clone())].into()
    }

    fn metadata(&self, name: String) -> ObjectMeta {
        let mut labels = self.selector();
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![self.owner_reference()]),
            ..ObjectMeta::default()
        }
    }

    /// `blockOwnerDeletion` is left unset: setting it needs `update` on `gateways/finalizers`,
    /// and foreground deletion of a waypoint is not worth that permission.
    fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: GATEWAY_API_VERSION.into(),
            kind: "Gateway".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            ..OwnerReference::default()
        }
    }
}

/// Named after the Gateway: the CA gives a waypoint's token exactly the identity
/// `ns/<namespace>/sa/<gateway>`.
pub fn service_account(gw: &GatewayKey) -> ServiceAccount {
    ServiceAccount {
        metadata: gw.metadata(gw.name.clone()),
        // The waypoint uses its projected token only; the default mount would be a second,
        // broader credential in the pod.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

pub fn root_config_map(gw: &GatewayKey, settings: &WaypointSettings) -> ConfigMap {
    ConfigMap {
        metadata: gw.metadata(gw.root_config_map()),
        data: Some([(ROOT_KEY.to_string(), settings.root_cert_pem.clone())].into()),
        ..ConfigMap::default()
    }
}

/// `controller` is where the waypoint dials the controller: the waypoint takes a socket
/// address, not a name, so the reconciler resolves it.
pub fn deployment(
    gw: &GatewayKey,
    settings: &WaypointSettings,
    controller: SocketAddr,
) -> Deployment {
    let args = vec![
        format!("--waypoint={}/{}", gw.namespace, gw.name),
        format!("--controller-addr={controller}"),
        format!("--controller-namespace={}", settings.controller_namespace),
        format!("--trust-domain={}", settings.trust_domain),
        format!("--root-cert={ROOT_DIR}/{ROOT_KEY}"),
        format!("--token-file={TOKEN_DIR}/token"),
    ];
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let container = Container {
        name: "waypoint".into(),
        image: Some(settings.image.clone()),
        args: Some(args),
        ports: Some(vec![
            port("mesh", HBONE_PORT),
            port("metrics", METRICS_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz/ready".into()),
                port: IntOrString::Int(METRICS_PORT),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "ambit-token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "ambit-root".into(),
                mount_path: ROOT_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        // A proxy of other pods' traffic: nothing in it needs privileges.
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    let token = ProjectedVolumeSource {
        sources: Some(vec![VolumeProjection {
            service_account_token: Some(ServiceAccountTokenProjection {
                audience: settings.token_audience.clone(),
                expiration_seconds: Some(TOKEN_SECONDS),
                path: "token".into(),
                ..ServiceAccountTokenProjection::default()
            }),
            ..VolumeProjection::default()
        }]),
        ..ProjectedVolumeSource::default()
    };
    let mut pod_labels = gw.selector();
    pod_labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    Deployment {
        metadata: gw.metadata(gw.name.clone()),
        spec: DeploymentSpec {
            // `replicas` is not set: created with the default of one, then whoever scales the
            // Deployment (a user, an autoscaler) owns it and the reconciler does not fight them.
            selector: LabelSelector {
                match_labels: Some(gw.selector()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(gw.name.clone()),
                    automount_service_account_token: Some(false),
                    // The namespace's Services would otherwise become `<NAME>_PORT`-style
                    // variables, and a Service named like one of the waypoint's `AMBIT_*`
                    // settings (`ambit-upstream-hbone`) would set it.
                    enable_service_links: Some(false),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "ambit-token".into(),
                            projected: Some(token),
                            ..Volume::default()
                        },
                        Volume {
                            name: "ambit-root".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: gw.root_config_map(),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// `<gateway>.<namespace>.svc`: the address the translation gives agents for the waypoint
/// (`translate::waypoint::address`), HBONE on 15008.
pub fn service(gw: &GatewayKey) -> Service {
    let port = |name: &str, port: i32, app_protocol: Option<&str>| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        app_protocol: app_protocol.map(Into::into),
        ..ServicePort::default()
    };
    Service {
        metadata: gw.metadata(gw.name.clone()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(gw.selector()),
            // As Istio names its waypoints' ports, so dashboards and policies carry over.
            ports: Some(vec![
                port("mesh", HBONE_PORT, Some("all")),
                port("metrics", METRICS_PORT, Some("http")),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Whether the Deployment has a replica that can take traffic.
pub fn is_available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n >= 1)
}
