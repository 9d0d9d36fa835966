//! From the user's objects to what the lab runs and what the controller reads. Pure functions of
//! the objects and the lab's placement, so they are tested without a kernel.
//!
//! - Every Pod, and every replica of a Deployment (`<deployment>-<i>`), is a pod to place.
//! - The controller's manifests are the objects with what a cluster would fill in: a Pod's
//!   `spec.nodeName` and `status` (IP, Running, Ready), a Service's `clusterIP`, a Namespace for
//!   every namespace in use, a Node per lab node. Deployments stay out (the controller reads
//!   their pods).
//! - What a pod runs: a container's `command` (`ambit` means this very binary), or for a sample
//!   image `ambit/<app>` (or the annotation `lab.ambit.dev/app: <app>`) that sample app on each
//!   container port, the container's `args` added to its flags as a container's args follow
//!   its image's entrypoint ([`SAMPLE_APPS`]). Any other image runs nothing: the pod is idle,
//!   for `ambit exec`. Pods the lab makes for waypoint Gateways run the waypoint ([`waypoints`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde_yaml::{Mapping, Value};

use super::objects::{Key, Object, mapping_at, scalar, string_map};
use super::state::{LabState, RunSpec};
use super::waypoints::{self, WaypointLaunch};

/// The annotation choosing a pod's sample app: one of [`SAMPLE_APPS`], or `none` for an idle pod.
pub const APP_ANNOTATION: &str = "lab.ambit.dev/app";
/// Where the lab's service VIPs come from when a Service names none.
const VIP_BASE: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 0);

/// A sample app a pod can run: `ambit app <name> --listen 0.0.0.0:<port>` per container port.
#[derive(Debug)]
pub struct SampleApp {
    /// The image is `ambit/<name>`, the subcommand `ambit app <name>`.
    pub name: &'static str,
    /// The port it serves when the container declares none.
    pub port: u16,
    /// Whether it takes `--name` (then the pod's name), to say who answered.
    pub named: bool,
}

/// The sample apps (`cli/src/apps`): the HTTP/TCP echo server, the gRPC echo server, and the
/// OTLP collector that prints the spans a waypoint sends it.
pub const SAMPLE_APPS: &[SampleApp] = &[
    SampleApp {
        name: "echo",
        port: 8080,
        named: true,
    },
    SampleApp {
        name: "grpc-echo",
        port: 9090,
        named: true,
    },
    SampleApp {
        // OTLP/HTTP's registered port.
        name: "otlp-collector",
        port: 4318,
        named: false,
    },
];

/// A pod the objects ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredPod {
    pub namespace: String,
    pub name: String,
    /// The Pod object (for a replica: built from the Deployment's template), without status.
    pub value: Value,
}

impl DesiredPod {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `spec.nodeName` as the user wrote it.
    pub fn node_name(&self) -> Option<&str> {
        self.value.get("spec")?.get("nodeName")?.as_str()
    }
}

/// Every pod the objects ask for, by `<namespace>/<name>`.
pub fn desired_pods(
    objects: &BTreeMap<Key, Object>,
) -> Result<BTreeMap<String, DesiredPod>, String> {
    let mut pods = BTreeMap::new();
    let mut add = |pod: DesiredPod, from: &Key| {
        if let Some(other) = pods.insert(pod.key(), pod.clone()) {
            return Err(format!(
                "{from} makes pod {}, which another object ({}) makes too",
                pod.key(),
                other.name
            ));
        }
        Ok(())
    };
    for (key, object) in objects {
        match key.kind.as_str() {
            "Pod" => add(
                DesiredPod {
                    namespace: key.namespace.clone(),
                    name: key.name.clone(),
                    value: object.value.clone(),
                },
                key,
            )?,
            "Deployment" => {
                for pod in replicas(key, object)? {
                    add(pod, key)?;
                }
            }
            _ => {}
        }
    }
    Ok(pods)
}

fn replicas(key: &Key, deployment: &Object) -> Result<Vec<DesiredPod>, String> {
    let spec = deployment.spec();
    let count = match spec.get("replicas") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| *n <= 50)
            .ok_or_else(|| format!("{key}: spec.replicas must be a number from 0 to 50"))?,
    };
    let template = spec
        .get("template")
        .ok_or_else(|| format!("{key}: no spec.template"))?;
    (0..count)
        .map(|i| {
            let name = format!("{}-{i}", key.name);
            let mut value = Value::Mapping(Mapping::new());
            let map = value.as_mapping_mut().expect("a mapping");
            map.insert("apiVersion".into(), "v1".into());
            map.insert("kind".into(), "Pod".into());
            let mut metadata = match template.get("metadata") {
                Some(Value::Mapping(m)) => m.clone(),
                _ => Mapping::new(),
            };
            let m = &mut metadata;
            m.insert("name".into(), name.as_str().into());
            m.insert("namespace".into(), key.namespace.as_str().into());
            map.insert("metadata".into(), Value::Mapping(metadata));
            let pod_spec = template.get("spec").cloned().unwrap_or_default();
            map.insert("spec".into(), pod_spec);
            Ok(DesiredPod {
                namespace: key.namespace.clone(),
                name,
                value,
            })
        })
        .collect()
}

/// The next VIP not in `taken`: 10.96.0.10 upwards (the first few are left for the user).
pub fn next_vip(taken: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    (10..u32::from(u16::MAX))
        .map(|n| Ipv4Addr::from(u32::from(VIP_BASE) + n))
        .find(|ip| !taken.contains(ip))
}

/// A Service's own `spec.clusterIP`, if it names an address.
pub fn own_cluster_ip(service: &Object) -> Option<Ipv4Addr> {
    service.spec().get("clusterIP")?.as_str()?.parse().ok()
}

/// The controller's manifests: file name -> YAML. `state` must already place every desired pod
/// and give a VIP to every Service that names none.
pub fn manifests(
    objects: &BTreeMap<Key, Object>,
    pods: &BTreeMap<String, DesiredPod>,
    state: &LabState,
) -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut put = |file: String, value: &Value| {
        let text = serde_yaml::to_string(value).expect("a YAML value serialises");
        files.insert(file, text);
    };
    for index in 1..=state.nodes {
        let node = LabState::node_name(index);
        let value: Value = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Node\nmetadata: {{name: {node}}}\n"
        ))
        .expect("valid YAML");
        put(format!("node__{node}.yaml"), &value);
    }
    let mut namespaces: BTreeSet<&str> = BTreeSet::new();
    for (key, object) in objects {
        if !key.namespace.is_empty() {
            namespaces.insert(&key.namespace);
        }
        let file = format!(
            "{}_{}_{}.yaml",
            key.kind.to_ascii_lowercase(),
            key.namespace,
            key.name
        );
        match key.kind.as_str() {
            "Pod" | "Deployment" => {}
            "Service" => {
                let mut value = object.value.clone();
                let vip = state.vips.get(&format!("{}/{}", key.namespace, key.name));
                if let Some(vip) = vip {
                    let spec = mapping_at(&mut value, "spec");
                    spec.insert("clusterIP".into(), vip.to_string().into());
                }
                put(file, &value);
            }
            _ => put(file, &object.value),
        }
    }
    for ns in namespaces {
        let declared = objects.contains_key(&Key {
            kind: "Namespace".into(),
            namespace: String::new(),
            name: ns.to_owned(),
        });
        if !declared {
            let value: Value = serde_yaml::from_str(&format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n"
            ))
            .expect("valid YAML");
            put(format!("namespace__{ns}.yaml"), &value);
        }
    }
    for (key, pod) in pods {
        let Some(record) = state.pods.get(key) else {
            continue;
        };
        let value = placed_pod(pod, &LabState::node_name(record.node), record.ip);
        put(format!("pod_{}_{}.yaml", pod.namespace, pod.name), &value);
    }
    files
}

/// The pod as a scheduler and kubelet would leave it: on `node`, running, ready, at `ip`.
pub fn placed_pod(pod: &DesiredPod, node: &str, ip: Ipv4Addr) -> Value {
    let mut value = pod.value.clone();
    let spec = mapping_at(&mut value, "spec");
    spec.insert("nodeName".into(), node.into());
    let status: Value = serde_yaml::from_str(&format!(
        "{{phase: Running, podIP: \"{ip}\", podIPs: [{{ip: \"{ip}\"}}], \
         conditions: [{{type: Ready, status: \"True\"}}]}}"
    ))
    .expect("valid YAML");
    value
        .as_mapping_mut()
        .expect("mapping_at made it a mapping")
        .insert("status".into(), status);
    value
}

/// The programs pods run: this binary, and the waypoint.
#[derive(Debug, Clone)]
pub struct Launch {
    pub ambit: PathBuf,
    pub waypoint: WaypointLaunch,
}

/// What `pod` runs (see the module docs).
pub fn run_specs(pod: &DesiredPod, node: &str, ip: Ipv4Addr, launch: &Launch) -> Vec<RunSpec> {
    let ambit = launch.ambit.as_path();
    let annotations = string_map(pod.value.get("metadata").and_then(|m| m.get("annotations")));
    let app = annotations.get(APP_ANNOTATION).map(String::as_str);
    let containers = pod
        .value
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let mut specs = Vec::new();
    for (i, container) in containers.iter().enumerate() {
        let cname = container
            .get("name")
            .and_then(Value::as_str)
            .map_or_else(|| format!("c{i}"), str::to_owned);
        let mut env = vec![
            ("POD_NAME".to_owned(), pod.name.clone()),
            ("POD_NAMESPACE".to_owned(), pod.namespace.clone()),
            ("POD_IP".to_owned(), ip.to_string()),
            ("NODE_NAME".to_owned(), node.to_owned()),
        ];
        for var in container
            .get("env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let (Some(name), Some(value)) = (
                var.get("name").and_then(Value::as_str),
                var.get("value").and_then(scalar),
            ) {
                env.push((name.to_owned(), value));
            }
        }
        let strings = |field: &str| -> Vec<String> {
            container
                .get(field)
                .and_then(Value::as_sequence)
                .into_iter()
                .flatten()
                .filter_map(scalar)
                .collect()
        };
        if app == Some(waypoints::APP) {
            specs.extend(waypoints::run_spec(pod, &launch.waypoint, env));
            continue;
        }
        let command = strings("command");
        let log = |suffix: &str| format!("{}-{}-{cname}{suffix}", pod.namespace, pod.name);
        if let Some((program, rest)) = command.split_first() {
            let program = if program == "ambit" {
                ambit.display().to_string()
            } else {
                program.clone()
            };
            let mut args = rest.to_vec();
            args.extend(strings("args"));
            specs.push(RunSpec {
                name: log(""),
                program,
                args,
                env,
                needs: Vec::new(),
            });
            continue;
        }
        let image = container.get("image").and_then(Value::as_str).unwrap_or("");
        let Some(sample) = app
            .or_else(|| sample_image(image))
            .and_then(|name| SAMPLE_APPS.iter().find(|s| s.name == name))
        else {
            continue;
        };
        let mut ports: Vec<u16> = container
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("protocol")
                    .and_then(Value::as_str)
                    .is_none_or(|p| p == "TCP")
            })
            .filter_map(|p| p.get("containerPort")?.as_u64())
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        if ports.is_empty() {
            ports.push(sample.port);
        }
        for port in ports {
            let mut args = vec![
                "app".into(),
                sample.name.into(),
                "--listen".into(),
                format!("0.0.0.0:{port}"),
            ];
            if sample.named {
                args.extend(["--name".into(), pod.name.clone()]);
            }
            args.extend(strings("args"));
            specs.push(RunSpec {
                name: log(&format!("-{port}")),
                program: ambit.display().to_string(),
                args,
                env: env.clone(),
                needs: Vec::new(),
            });
        }
    }
    specs
}

/// `echo` for `ambit/echo`, `ambit/echo:1`, `docker.io/ambit/echo@sha256:..` (a sample app
/// if it is one of [`SAMPLE_APPS`]).
fn sample_image(image: &str) -> Option<&str> {
    let image = image.split('@').next()?;
    let (repo, name) = image.rsplit_once('/')?;
    let name = name.split(':').next()?;
    (repo == "ambit" || repo.ends_with("/ambit")).then_some(name)
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;
