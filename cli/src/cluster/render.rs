//! The install manifests: `deploy/base`, embedded in the binary so `ambit install` needs no
//! checkout, with the values of `--set key=value` applied to the parsed objects (never by text
//! substitution, so a value can never change a manifest's structure).
//!
//! The same files are a kustomize base (`kubectl apply --server-side -k deploy/base`); the
//! `FILES` list must name them in `deploy/base/kustomization.yaml`'s order, which a test checks.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// `deploy/base`, in apply order.
pub const FILES: &[(&str, &str)] = &[
    (
        "crds/security.istio.io.yaml",
        include_str!("../../../deploy/base/crds/security.istio.io.yaml"),
    ),
    (
        "crds/networking.istio.io.yaml",
        include_str!("../../../deploy/base/crds/networking.istio.io.yaml"),
    ),
    (
        "crds/ambit.dev.yaml",
        include_str!("../../../deploy/base/crds/ambit.dev.yaml"),
    ),
    (
        "gatewayclass.yaml",
        include_str!("../../../deploy/base/gatewayclass.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../../../deploy/base/namespace.yaml"),
    ),
    (
        "controller-rbac.yaml",
        include_str!("../../../deploy/base/controller-rbac.yaml"),
    ),
    (
        "controller.yaml",
        include_str!("../../../deploy/base/controller.yaml"),
    ),
    (
        "ztunnel.yaml",
        include_str!("../../../deploy/base/ztunnel.yaml"),
    ),
];

/// Where a plug-in CA Secret is mounted in the controller (`--ca-dir`).
const PLUGIN_CA_DIR: &str = "/etc/ambit/ca";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("deploy/base/{file}: {error}")]
    Parse { file: String, error: String },
    #[error("bad --set values:\n  {}", .0.join("\n  "))]
    Values(Vec<String>),
    #[error("deploy/base has no {0}: the embedded manifests and the renderer disagree")]
    Missing(String),
}

/// What `--set` can change. Everything else is fixed by `deploy/base` (edit an overlay for more).
#[derive(Debug, Clone, PartialEq)]
pub struct Values {
    /// `trustDomain`: the SPIFFE trust domain of every identity.
    pub trust_domain: String,
    /// `rootNamespace`: where mesh-wide policies live.
    pub root_namespace: String,
    /// `hub` and `tag`: images are `<hub>/ambit-controller:<tag>`, `<hub>/ambit-ztunnel:<tag>`
    /// and, for the waypoints the controller deploys, `<hub>/ambit-waypoint:<tag>`.
    pub hub: String,
    pub tag: String,
    /// `logLevel`: RUST_LOG of the controller and agents (`info`, `debug`, `ambit_ztunnel=debug`).
    pub log_level: String,
    /// `caSecret`: a plug-in CA (Istio's `cacerts` layout) in this Secret of ambit-system,
    /// instead of the root the controller generates.
    pub ca_secret: Option<String>,
    /// `controller.replicas`.
    pub controller_replicas: u32,
    /// `controller.resources.requests.cpu`, `ztunnel.resources.limits.memory`, ...:
    /// (component, "requests"|"limits", "cpu"|"memory") -> quantity.
    pub resources: BTreeMap<(String, String, String), String>,
}

impl Default for Values {
    fn default() -> Self {
        Values {
            trust_domain: "cluster.local".into(),
            root_namespace: "istio-system".into(),
            hub: "ghcr.io/ambit-mesh".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            log_level: "info".into(),
            ca_secret: None,
            controller_replicas: 2,
            resources: BTreeMap::new(),
        }
    }
}

/// The keys `--set` takes, for the error that lists them.
pub const KEYS: &str = "trustDomain, rootNamespace, hub, tag, logLevel, caSecret, \
    controller.replicas, {controller,ztunnel}.resources.{requests,limits}.{cpu,memory}";

impl Values {
    /// Applies `key=value` pairs over the defaults; reports every bad one at once.
    pub fn from_sets(sets: &[String]) -> Result<Values, RenderError> {
        let mut values = Values::default();
        let mut errors = Vec::new();
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                errors.push(format!("{set:?}: not key=value"));
                continue;
            };
            if let Err(e) = values.set(key.trim(), value.trim()) {
                errors.push(format!("{key}: {e}"));
            }
        }
        if let Err(e) =
            ambit_proto::Identity::new(&values.trust_domain, super::NAMESPACE, "ambit-controller")
        {
            errors.push(format!("trustDomain: {e}"));
        }
        if errors.is_empty() {
            Ok(values)
        } else {
            Err(RenderError::Values(errors))
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let nonempty = |v: &str| {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                Err("must be a non-empty word".to_string())
            } else {
                Ok(v.to_string())
            }
        };
        match key.split('.').collect::<Vec<_>>().as_slice() {
            ["trustDomain"] => self.trust_domain = nonempty(value)?,
            ["rootNamespace"] => self.root_namespace = nonempty(value)?,
            ["hub"] => self.hub = nonempty(value)?.trim_end_matches('/').to_string(),
            ["tag"] => self.tag = nonempty(value)?,
            ["logLevel"] => self.log_level = nonempty(value)?,
            ["caSecret"] => self.ca_secret = Some(nonempty(value)?),
            ["controller", "replicas"] => {
                self.controller_replicas = value
                    .parse()
                    .map_err(|_| format!("{value:?} is not a number"))?
            }
            [
                component @ ("controller" | "ztunnel"),
                "resources",
                bound @ ("requests" | "limits"),
                resource @ ("cpu" | "memory"),
            ] => {
                if !is_quantity(value) {
                    return Err(format!("{value:?} is not a quantity (100m, 1, 256Mi, 1Gi)"));
                }
                self.resources.insert(
                    (
                        component.to_string(),
                        bound.to_string(),
                        resource.to_string(),
                    ),
                    value.to_string(),
                );
            }
            _ => return Err(format!("unknown key; the keys are {KEYS}")),
        }
        Ok(())
    }
}

/// A Kubernetes quantity as people write them for cpu and memory.
fn is_quantity(value: &str) -> bool {
    let number = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[number.len()..];
    let digits = number.split_once('.').map_or(number, |(a, _)| a);
    !number.is_empty()
        && !digits.is_empty()
        && number.chars().all(|c| c.is_ascii_digit() || c == '.')
        && ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix)
}

/// Every object of `deploy/base`, parsed, in apply order.
pub fn base() -> Result<Vec<Value>, RenderError> {
    let mut objects = Vec::new();
    for (file, text) in FILES {
        objects.extend(parse_documents(text).map_err(|error| RenderError::Parse {
            file: file.to_string(),
            error,
        })?);
    }
    Ok(objects)
}

/// The documents of a multi-document YAML file (anchors resolved), skipping empty ones.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// `deploy/base` with `values` applied.
pub fn render(values: &Values) -> Result<Vec<Value>, RenderError> {
    let mut objects = base()?;
    let controller = find(&mut objects, "Deployment", "ambit-controller")?;
    controller["spec"]["replicas"] = json!(values.controller_replicas);
    let container = container_of(controller, "controller")?;
    container["image"] = json!(format!("{}/ambit-controller:{}", values.hub, values.tag));
    set_env(container, "AMBIT_TRUST_DOMAIN", &values.trust_domain);
    set_env(container, "AMBIT_ROOT_NAMESPACE", &values.root_namespace);
    let waypoint_image = format!("{}/ambit-waypoint:{}", values.hub, values.tag);
    set_env(container, "AMBIT_WAYPOINT_IMAGE", &waypoint_image);
    set_env(container, "RUST_LOG", &values.log_level);
    set_resources(container, values, "controller");
    if let Some(secret) = &values.ca_secret {
        set_env(container, "AMBIT_CA_DIR", PLUGIN_CA_DIR);
        push(
            &mut container["volumeMounts"],
            json!({"name": "plugin-ca", "mountPath": PLUGIN_CA_DIR, "readOnly": true}),
        );
        push(
            &mut controller["spec"]["template"]["spec"]["volumes"],
            json!({"name": "plugin-ca", "secret": {"secretName": secret}}),
        );
    }

    if values.controller_replicas < 2 {
        // With one replica, "keep one available" would block every node drain forever.
        objects.retain(|o| o["kind"] != "PodDisruptionBudget");
    }

    let agents = find(&mut objects, "DaemonSet", "ambit-ztunnel")?;
    let container = container_of(agents, "ztunnel")?;
    container["image"] = json!(format!("{}/ambit-ztunnel:{}", values.hub, values.tag));
    set_env(container, "AMBIT_TRUST_DOMAIN", &values.trust_domain);
    set_env(container, "RUST_LOG", &values.log_level);
    set_resources(container, values, "ztunnel");
    if let Some(secret) = &values.ca_secret {
        // The agents trust the plug-in CA's root (same key name in Istio's layout).
        let volumes = agents["spec"]["template"]["spec"]["volumes"]
            .as_array_mut()
            .ok_or_else(|| RenderError::Missing("ambit-ztunnel volumes".into()))?;
        let root = volumes
            .iter_mut()
            .find(|v| v["name"] == "root")
            .ok_or_else(|| RenderError::Missing("ambit-ztunnel volume root".into()))?;
        root["secret"]["secretName"] = json!(secret);
    }
    Ok(objects)
}

/// Objects as one multi-document YAML stream (`ambit install --dry-run`).
pub fn to_yaml(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| serde_yaml::to_string(o).expect("JSON values always serialize"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn find<'a>(
    objects: &'a mut [Value],
    kind: &str,
    name: &str,
) -> Result<&'a mut Value, RenderError> {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .ok_or_else(|| RenderError::Missing(format!("{kind} {name}")))
}

fn container_of<'a>(workload: &'a mut Value, name: &str) -> Result<&'a mut Value, RenderError> {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == name))
        .ok_or_else(|| RenderError::Missing(format!("container {name}")))
}

/// Sets an env entry's value, replacing the one of that name or appending.
fn set_env(container: &mut Value, name: &str, value: &str) {
    let entry = json!({"name": name, "value": value});
    match container["env"]
        .as_array_mut()
        .and_then(|env| env.iter_mut().find(|e| e["name"] == name))
    {
        Some(existing) => *existing = entry,
        None => push(&mut container["env"], entry),
    }
}

fn push(list: &mut Value, item: Value) {
    match list.as_array_mut() {
        Some(items) => items.push(item),
        None => *list = json!([item]),
    }
}

fn set_resources(container: &mut Value, values: &Values, component: &str) {
    for ((c, bound, resource), quantity) in &values.resources {
        if c == component {
            container["resources"][bound][resource] = json!(quantity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for good in ["100m", "1", "0.5", "256Mi", "1Gi", "2G"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "1 Gi", "1GB", "lots", ".5x"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn a_single_controller_has_no_disruption_budget() {
        let pdbs = |sets: &[&str]| {
            let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
            render(&Values::from_sets(&sets).unwrap())
                .unwrap()
                .iter()
                .filter(|o| o["kind"] == "PodDisruptionBudget")
                .count()
        };
        assert_eq!(pdbs(&[]), 1);
        assert_eq!(pdbs(&["controller.replicas=1"]), 0);
    }

    fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name}"))
    }

    /// What deploy/README.md promises each workload may do, as rendered.
    #[test]
    fn the_agent_gets_the_node_network_and_only_the_capabilities_capture_needs() {
        let objects = render(&Values::default()).unwrap();
        let agent = &object(&objects, "DaemonSet", "ambit-ztunnel")["spec"]["template"]["spec"];
        assert_eq!(agent["hostNetwork"], true);
        assert_eq!(agent["dnsPolicy"], "ClusterFirstWithHostNet");
        assert_eq!(
            agent["tolerations"],
            json!([{"operator": "Exists"}]),
            "every node, tainted or not"
        );
        assert_eq!(agent["automountServiceAccountToken"], false);
        assert!(agent["hostPID"].is_null() || agent["hostPID"] == false);
        let container = &agent["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["privileged"], false);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            security["capabilities"]["add"],
            json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"],
            "/healthz/ready"
        );
        // The one credential: a token for the controller's audience, and the root without its key.
        let volumes = agent["volumes"].as_array().unwrap();
        let token = volumes
            .iter()
            .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"].as_object())
            .expect("a projected token");
        assert_eq!(token["audience"], "ambit-controller");
        let root = volumes
            .iter()
            .find(|v| v["secret"].is_object())
            .expect("the root");
        assert_eq!(
            root["secret"]["items"],
            json!([{"key": "root-cert.pem", "path": "root-cert.pem"}])
        );
        let account = object(&objects, "ServiceAccount", "ambit-ztunnel");
        let bound = objects.iter().any(|o| {
            o["kind"].as_str().is_some_and(|k| k.ends_with("Binding"))
                && o["subjects"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == account["metadata"]["name"]))
        });
        assert!(!bound, "the agent's ServiceAccount has no permissions");
    }

    #[test]
    fn the_controller_runs_unprivileged_replicated_and_probed() {
        let objects = render(&Values::default()).unwrap();
        let deployment = object(&objects, "Deployment", "ambit-controller");
        assert_eq!(deployment["spec"]["replicas"], 2);
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert!(security["capabilities"]["add"].is_null());
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert!(container["livenessProbe"].is_object());
        let service = object(&objects, "Service", "ambit-controller");
        let ports: Vec<&Value> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| &p["port"])
            .collect();
        assert_eq!(ports, [&json!(15012)], "config and CA gRPC");
        let budget = object(&objects, "PodDisruptionBudget", "ambit-controller");
        assert_eq!(budget["spec"]["minAvailable"], 1);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let sets = [
            "trustDomain=Bad Domain",
            "nope=1",
            "controller.replicas=two",
            "hub",
        ]
        .map(String::from);
        let RenderError::Values(errors) = Values::from_sets(&sets).unwrap_err() else {
            panic!("not a values error");
        };
        assert_eq!(errors.len(), 4, "{errors:#?}");
        assert!(errors.iter().any(|e| e.contains("unknown key")));
    }
}
