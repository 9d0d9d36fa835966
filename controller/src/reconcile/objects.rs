//! What a waypoint Gateway becomes on the cluster: a ServiceAccount (its identity), a ConfigMap
//! with the mesh root (to check the controller's certificate), a Deployment running
//! `ambit-waypoint`, and a Service in front of it. They are `deploy/base/waypoint-template.yaml`,
//! embedded here and filled in, so the shipped template and what the controller applies are one
//! file. Pure functions of the Gateway and the settings, so they are tested without a cluster
//! and applying them twice changes nothing.
//!
//! Every object is owned by the Gateway (`controller: true`), so deleting the Gateway deletes
//! them through the garbage collector, and carries [`MANAGED_BY`] so the sweep can find the ones
//! whose Gateway is gone when the garbage collector is not running.
//!
//! Placeholders are filled in the parsed objects, never in the text, so no value (a Gateway's
//! annotation, the root PEM) can change a manifest's structure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// On every object the reconciler makes, and the selector the sweep lists them with.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "ambit-controller");
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const HBONE_PORT: i32 = ambit_proto::hbone::HBONE_PORT as i32;
/// The waypoint's `--metrics-addr` port: `/metrics` and `/healthz/ready`.
pub const METRICS_PORT: i32 = 15020;
/// On a waypoint Gateway: send its waypoint's traces to this OTLP/HTTP collector,
/// `http://host:port` (the waypoint's `--otlp-endpoint`). The lab reads
/// `lab.ambit.dev/otlp-endpoint` for the same.
pub const OTLP_ENDPOINT: &str = "ambit.dev/otlp-endpoint";
pub const TEMPLATE: &str = include_str!("../../../deploy/base/waypoint-template.yaml");

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

/// The Gateway the objects are made for: which one (namespace, name, uid) and what of it shapes
/// its waypoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct GatewayKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// [`OTLP_ENDPOINT`], checked by [`otlp_endpoint`].
    pub otlp_endpoint: Option<String>,
}

impl GatewayKey {
    pub fn service_hostname(&self, cluster_domain: &str) -> String {
        format!("{}.{}.svc.{cluster_domain}", self.name, self.namespace)
    }

    /// Not the Gateway's own name: a user's ConfigMap of that name must not be overwritten.
    pub fn root_config_map(&self) -> String {
        format!("{}-ambit-root-cert", self.name)
    }
}

/// The annotation [`OTLP_ENDPOINT`] of a Gateway, checked as the waypoint checks its
/// `--otlp-endpoint` (a bad one would make every waypoint pod exit at start); `Err` is why.
pub fn otlp_endpoint(annotations: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let Some(endpoint) = annotations.get(OTLP_ENDPOINT) else {
        return Ok(None);
    };
    let bad = |why: &str| {
        Err(format!(
            "metadata.annotations[{OTLP_ENDPOINT}]: {endpoint:?}: {why}"
        ))
    };
    let Some(rest) = endpoint.strip_prefix("http://") else {
        return bad("must be http://host:port (https is not supported)");
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || authority.starts_with(':') || authority.contains('@') {
        return bad("must be http://host:port");
    }
    if endpoint.contains('?') || endpoint.chars().any(char::is_whitespace) {
        return bad("no query or white space allowed");
    }
    Ok(Some(endpoint.clone()))
}

/// The template's documents, parsed once.
fn template() -> &'static [Value] {
    static PARSED: OnceLock<Vec<Value>> = OnceLock::new();
    PARSED.get_or_init(|| {
        serde_yaml::Deserializer::from_str(TEMPLATE)
            .map(|d| serde::Deserialize::deserialize(d).expect("waypoint-template.yaml is YAML"))
            .collect()
    })
}

/// The template's object of `kind`, with every `${KEY}` in its strings replaced (in one pass,
/// so a value is never expanded again) and decoded as `K`.
fn fill<K: DeserializeOwned>(kind: &str, values: &BTreeMap<&str, String>) -> K {
    let mut object = template()
        .iter()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("waypoint-template.yaml has no {kind}"))
        .clone();
    substitute(&mut object, values);
    serde_json::from_value(object)
        .unwrap_or_else(|e| panic!("waypoint-template.yaml's {kind} does not decode: {e}"))
}

fn substitute(value: &mut Value, values: &BTreeMap<&str, String>) {
    match value {
        Value::String(s) => *s = expand(s, values),
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, values)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute(v, values)),
        _ => {}
    }
}

/// `${KEY}`s of `values` replaced; any other text, an unknown key included, as it is.
pub fn expand(text: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after
            .find('}')
            .and_then(|end| Some((values.get(&after[..end])?, end)))
        {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The values every object of `gw` takes.
fn values(gw: &GatewayKey) -> BTreeMap<&'static str, String> {
    [
        ("GATEWAY", gw.name.clone()),
        ("NAMESPACE", gw.namespace.clone()),
        ("GATEWAY_UID", gw.uid.clone()),
    ]
    .into()
}

pub fn service_account(gw: &GatewayKey) -> ServiceAccount {
    fill("ServiceAccount", &values(gw))
}

pub fn root_config_map(gw: &GatewayKey, settings: &WaypointSettings) -> ConfigMap {
    let mut values = values(gw);
    values.insert("ROOT_CERT", settings.root_cert_pem.clone());
    fill("ConfigMap", &values)
}

/// `controller` is where the waypoint dials the controller: the waypoint takes a socket
/// address, not a name, so the reconciler resolves it.
pub fn deployment(
    gw: &GatewayKey,
    settings: &WaypointSettings,
    controller: SocketAddr,
) -> Deployment {
    let mut values = values(gw);
    values.insert("IMAGE", settings.image.clone());
    values.insert("CONTROLLER_ADDR", controller.to_string());
    values.insert(
        "CONTROLLER_NAMESPACE",
        settings.controller_namespace.clone(),
    );
    values.insert("TRUST_DOMAIN", settings.trust_domain.clone());
    values.insert(
        "TOKEN_AUDIENCE",
        settings.token_audience.clone().unwrap_or_default(),
    );
    let mut deployment: Deployment = fill("Deployment", &values);
    let pod = deployment
        .spec
        .template
        .spec
        .as_mut()
        .expect("the template's Deployment has a pod spec");
    if settings.token_audience.is_none() {
        // No audience: the API server's default, which an empty string is not.
        for volume in pod.volumes.iter_mut().flatten() {
            let sources = volume.projected.as_mut().and_then(|p| p.sources.as_mut());
            for source in sources.into_iter().flatten() {
                if let Some(token) = source.service_account_token.as_mut() {
                    token.audience = None;
                }
            }
        }
    }
    if let Some(endpoint) = &gw.otlp_endpoint {
        let args = pod.containers[0].args.get_or_insert_with(Vec::new);
        args.push(format!("--otlp-endpoint={endpoint}"));
    }
    deployment
}

pub fn service(gw: &GatewayKey) -> Service {
    fill("Service", &values(gw))
}

/// Whether the Deployment has a replica that can take traffic.
pub fn is_available(deployment: &Deployment) -> bool {
    deployment
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .is_some_and(|n| n >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(otlp: Option<&str>) -> GatewayKey {
        GatewayKey {
            namespace: "shop".into(),
            name: "wp".into(),
            uid: "uid-1".into(),
            otlp_endpoint: otlp.map(String::from),
        }
    }

    fn settings(audience: Option<&str>) -> WaypointSettings {
        WaypointSettings {
            image: "example.com/waypoint:1".into(),
            trust_domain: "mesh.example".into(),
            cluster_domain: "cluster.local".into(),
            controller_namespace: "ambit-system".into(),
            token_audience: audience.map(String::from),
            root_cert_pem: "-----BEGIN CERTIFICATE-----\n${GATEWAY}\n".into(),
        }
    }

    /// Every object, filled in: no placeholder is left, and a value is never expanded again.
    #[test]
    fn every_placeholder_of_the_template_is_filled_and_values_are_not_expanded() {
        let controller: SocketAddr = "10.96.0.12:15012".parse().unwrap();
        let s = settings(Some("ambit"));
        let objects = [
            serde_json::to_value(service_account(&key(None))).unwrap(),
            serde_json::to_value(root_config_map(&key(None), &s)).unwrap(),
            serde_json::to_value(deployment(&key(None), &s, controller)).unwrap(),
            serde_json::to_value(service(&key(None))).unwrap(),
        ];
        assert_eq!(
            objects.len(),
            template().len(),
            "one function per template object"
        );
        let root = &objects[1]["data"]["root-cert.pem"];
        assert_eq!(root, "-----BEGIN CERTIFICATE-----\n${GATEWAY}\n");
        for object in &objects[..] {
            let mut text = object.to_string();
            text = text.replace("${GATEWAY}\\n", "");
            assert!(!text.contains("${"), "{text}");
            assert_eq!(object["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(object["metadata"]["labels"][MANAGED_BY.0], MANAGED_BY.1);
        }
        let args = &objects[2]["spec"]["template"]["spec"]["containers"][0]["args"];
        assert_eq!(args[0], "--waypoint=shop/wp");
        assert_eq!(args[1], "--controller-addr=10.96.0.12:15012");
    }

    #[test]
    fn the_templates_ports_are_the_ones_the_code_and_the_translation_use() {
        let d = deployment(
            &key(None),
            &settings(None),
            "10.0.0.1:15012".parse().unwrap(),
        );
        let pod = d.spec.template.spec.unwrap();
        let ports: Vec<i32> = pod.containers[0]
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [HBONE_PORT, METRICS_PORT]);
        let svc = service(&key(None)).spec.unwrap();
        let ports: Vec<i32> = svc.ports.iter().flatten().map(|p| p.port).collect();
        assert_eq!(ports, [HBONE_PORT, METRICS_PORT]);
        // No audience: the field is left out (the API server's default), not empty.
        let token = pod.volumes.unwrap()[0]
            .projected
            .clone()
            .unwrap()
            .sources
            .unwrap()[0]
            .service_account_token
            .clone()
            .unwrap();
        assert_eq!(token.audience, None);
    }

    #[test]
    fn the_otlp_annotation_becomes_the_waypoints_flag_and_a_bad_one_is_refused() {
        let annotations = |v: &str| BTreeMap::from([(OTLP_ENDPOINT.to_string(), v.to_string())]);
        let good = otlp_endpoint(&annotations("http://collector.observability:4318")).unwrap();
        assert_eq!(good.as_deref(), Some("http://collector.observability:4318"));
        let d = deployment(
            &key(good.as_deref()),
            &settings(None),
            "10.0.0.1:1".parse().unwrap(),
        );
        let args = d.spec.template.spec.unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert_eq!(
            args.last().unwrap(),
            "--otlp-endpoint=http://collector.observability:4318"
        );
        assert_eq!(otlp_endpoint(&BTreeMap::new()), Ok(None));
        for bad in [
            "https://c:4318",
            "collector:4318",
            "http://",
            "http://u@c:1",
            "http://c?x=1",
        ] {
            let e = otlp_endpoint(&annotations(bad)).unwrap_err();
            assert!(e.contains(OTLP_ENDPOINT), "{e}");
        }
    }
}
