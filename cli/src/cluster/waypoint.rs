//! `ambit waypoint apply|list|delete`: the waypoint of a namespace is a Gateway API `Gateway` of
//! class `ambit-waypoint` with one HBONE listener, exactly as `istioctl waypoint apply` writes
//! it (with its own class), so tools that know Istio's waypoints recognise Ambit's. The
//! controller turns the Gateway into a waypoint Deployment and Service; this command only
//! declares it. `--enroll-namespace` labels the namespace `istio.io/use-waypoint=<name>`, which
//! sends the namespace's traffic through it.

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::resources::Target;
use super::{ClusterError, FIELD_MANAGER, is_not_found};
use crate::cmd::table::Table;

pub const CLASS: &str = "ambit-waypoint";
/// Classes the controller treats as waypoints (controller/src/translate/waypoint.rs).
const CLASSES: &[&str] = &["ambit-waypoint", "istio-waypoint"];
const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
const USE_WAYPOINT: &str = "istio.io/use-waypoint";
const NO_GATEWAY_API: &str = "the Gateway API CRDs are not installed: install v1.2 or later \
    (standard channel; experimental for HTTPRoute retries), \
    https://gateway-api.sigs.k8s.io/guides/#installing-gateway-api";

/// Which traffic the waypoint takes (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum For {
    Service,
    Workload,
    All,
}

impl For {
    fn label(self) -> &'static str {
        match self {
            For::Service => "service",
            For::Workload => "workload",
            For::All => "all",
        }
    }
}

/// The Gateway `ambit waypoint apply` writes.
pub fn gateway(namespace: &str, name: &str, traffic: For) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { WAYPOINT_FOR: traffic.label() },
        },
        "spec": {
            "gatewayClassName": CLASS,
            "listeners": [{ "name": "mesh", "port": 15008, "protocol": "HBONE" }],
        },
    })
}

pub async fn apply(
    client: kube::Client,
    namespace: &str,
    name: &str,
    traffic: For,
    enroll: bool,
) -> Result<String, ClusterError> {
    let object = gateway(namespace, name, traffic);
    let target = Target::of(&object)?;
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    target
        .api(client.clone())
        .patch(name, &params, &Patch::Apply(&object))
        .await
        .map_err(|e| gateway_error(&target, e))?;
    let mut out = format!(
        "waypoint {namespace}/{name} applied (for {})\n",
        traffic.label()
    );
    if enroll {
        label_namespace(&client, namespace, json!(name)).await?;
        out += &format!("namespace {namespace} labeled with \"{USE_WAYPOINT}={name}\"\n");
    }
    Ok(out)
}

/// The waypoints of one namespace, or of all of them (`namespace` None).
pub async fn list(client: kube::Client, namespace: Option<&str>) -> Result<String, ClusterError> {
    let target = Target::of(&gateway("default", "waypoint", For::Service))?;
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &target.resource),
        None => Api::all_with(client, &target.resource),
    };
    let gateways = api
        .list(&ListParams::default())
        .await
        .map_err(|e| gateway_error(&target, e))?;
    let mut table = Table::new(&["namespace", "name", "for", "class", "programmed"]);
    for gateway in &gateways.items {
        let class = gateway.data["spec"]["gatewayClassName"]
            .as_str()
            .unwrap_or_default();
        if !CLASSES.contains(&class) {
            continue;
        }
        let labels = gateway.metadata.labels.clone().unwrap_or_default();
        table.row(vec![
            gateway.metadata.namespace.clone().unwrap_or_default(),
            gateway.metadata.name.clone().unwrap_or_default(),
            labels
                .get(WAYPOINT_FOR)
                .cloned()
                .unwrap_or_else(|| "service".into()),
            class.to_string(),
            programmed(&gateway.data),
        ]);
    }
    Ok(if table.is_empty() {
        "No waypoints found.\n".into()
    } else {
        table.render()
    })
}

/// Deletes the Gateway; if the namespace was enrolled in this waypoint, un-enrolls it (a label
/// naming a missing waypoint would leave the namespace's traffic with nowhere to go).
pub async fn delete(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, ClusterError> {
    let target = Target::of(&gateway(namespace, name, For::Service))?;
    let mut out = match target
        .api(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => format!("waypoint {namespace}/{name} deleted\n"),
        Err(e) if is_not_found(&e) => format!("waypoint {namespace}/{name} not found\n"),
        Err(e) => return Err(gateway_error(&target, e)),
    };
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let enrolled = namespaces
        .get_opt(namespace)
        .await
        .map_err(|e| ClusterError::api(format!("namespace {namespace}"), e))?
        .and_then(|ns| ns.metadata.labels)
        .and_then(|labels| labels.get(USE_WAYPOINT).cloned());
    if enrolled.as_deref() == Some(name) {
        label_namespace(&client, namespace, Value::Null).await?;
        out += &format!("namespace {namespace}: label {USE_WAYPOINT} removed\n");
    }
    Ok(out)
}

/// Sets (or, with null, removes) the namespace's `istio.io/use-waypoint` label with a merge
/// patch, as `kubectl label` does: the namespace is the user's, so no field manager takes it.
async fn label_namespace(
    client: &kube::Client,
    namespace: &str,
    value: Value,
) -> Result<(), ClusterError> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let patch = json!({ "metadata": { "labels": { USE_WAYPOINT: value } } });
    namespaces
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| ClusterError::api(format!("labeling namespace {namespace}"), e))?;
    Ok(())
}

/// The Programmed condition the controller sets on a waypoint's Gateway.
fn programmed(gateway: &Value) -> String {
    gateway["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
        .and_then(|c| c["status"].as_str())
        .unwrap_or("Unknown")
        .to_string()
}

fn gateway_error(target: &Target, e: kube::Error) -> ClusterError {
    // 404 on the collection itself: the API server does not know the kind at all.
    // (an object's 404 names the object in its details).
    if matches!(&e, kube::Error::Api(s) if s.code == 404
        && s.details.as_ref().is_none_or(|d| d.name.is_empty()))
    {
        return ClusterError::Usage(NO_GATEWAY_API.into());
    }
    ClusterError::api(target.display(), e)
}
