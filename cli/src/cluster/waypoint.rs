//! `ambit waypoint apply|list|delete`: the waypoint of a namespace is a Gateway API `Gateway` of
//! class `ambit-waypoint` with one HBONE listener, exactly as `istioctl waypoint apply` writes
//! it (with its own class), so tools that know Istio's waypoints recognise Ambit's. The
//! controller turns the Gateway into a waypoint Deployment and Service; this command only
//! declares it. `--enroll-namespace` labels the namespace `istio.io/use-waypoint=<name>`, which
//! sends the namespace's traffic through it. `--service-account <sa>` makes a per-account
//! waypoint as Istio 1.18-1.21 wrote them (annotation `istio.io/for-service-account: <sa>`): it
//! serves that account's workloads in the namespace with no label at all.

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
/// controller/src/translate/waypoint.rs FOR_SERVICE_ACCOUNT.
const FOR_SERVICE_ACCOUNT: &str = "istio.io/for-service-account";
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

/// The waypoint's name when `--name` is not given: `waypoint`, or `<sa>-waypoint` for an
/// account's (never the account's own name, which the controller refuses).
pub fn default_name(service_account: Option<&str>) -> String {
    match service_account {
        Some(sa) => format!("{sa}-waypoint"),
        None => "waypoint".into(),
    }
}

/// The Gateway `ambit waypoint apply` writes.
pub fn gateway(namespace: &str, name: &str, traffic: For, service_account: Option<&str>) -> Value {
    let mut gateway = json!({
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
    });
    if let Some(sa) = service_account {
        gateway["metadata"]["annotations"] = json!({ FOR_SERVICE_ACCOUNT: sa });
    }
    gateway
}

/// Refuses what the controller would not deploy, before anything is written: a waypoint named
/// like the account it serves would hold that account's identity (`ns/<ns>/sa/<name>`), and
/// enrolling the whole namespace in one account's waypoint sends every workload's traffic to it.
fn check(name: &str, service_account: Option<&str>, enroll: bool) -> Result<(), ClusterError> {
    match service_account {
        Some("") => Err(ClusterError::Usage(
            "--service-account needs an account's name".into(),
        )),
        Some(sa) if sa == name => Err(ClusterError::Usage(format!(
            "a waypoint for service account {sa} cannot be named {name}: it would run as that \
             account; name it otherwise (default {})",
            default_name(Some(sa))
        ))),
        Some(_) if enroll => Err(ClusterError::Usage(
            "--enroll-namespace sends the whole namespace through the waypoint; a waypoint for \
             one --service-account serves that account's workloads without it"
                .into(),
        )),
        _ => Ok(()),
    }
}

pub async fn apply(
    client: kube::Client,
    namespace: &str,
    name: &str,
    traffic: For,
    service_account: Option<&str>,
    enroll: bool,
) -> Result<String, ClusterError> {
    check(name, service_account, enroll)?;
    let object = gateway(namespace, name, traffic, service_account);
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
    if let Some(sa) = service_account {
        out += &format!("it serves the workloads of service account {namespace}/{sa}\n");
    }
    if enroll {
        label_namespace(&client, namespace, json!(name)).await?;
        out += &format!("namespace {namespace} labeled with \"{USE_WAYPOINT}={name}\"\n");
    }
    Ok(out)
}

/// The waypoints of one namespace, or of all of them (`namespace` None).
pub async fn list(client: kube::Client, namespace: Option<&str>) -> Result<String, ClusterError> {
    let target = Target::of(&gateway("default", "waypoint", For::Service, None))?;
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client, ns, &target.resource),
        None => Api::all_with(client, &target.resource),
    };
    let gateways = api
        .list(&ListParams::default())
        .await
        .map_err(|e| gateway_error(&target, e))?;
    let mut table = Table::new(&["namespace", "name", "for", "serves", "class", "programmed"]);
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
            serves(gateway),
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

/// Whom the waypoint serves: one account's workloads, or whatever names it in its
/// `istio.io/use-waypoint` label (a namespace, a service, a pod).
fn serves(gateway: &DynamicObject) -> String {
    let annotations = gateway.metadata.annotations.as_ref();
    match annotations.and_then(|a| a.get(FOR_SERVICE_ACCOUNT)) {
        Some(sa) if !sa.is_empty() => format!("account {sa}"),
        _ => "use-waypoint label".into(),
    }
}

/// Deletes the Gateway; if the namespace was enrolled in this waypoint, un-enrolls it (a label
/// naming a missing waypoint would leave the namespace's traffic with nowhere to go).
pub async fn delete(
    client: kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, ClusterError> {
    let target = Target::of(&gateway(namespace, name, For::Service, None))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_accounts_waypoint_is_annotated_and_not_named_like_the_account() {
        let gw = gateway("shop", "reviews-waypoint", For::Workload, Some("reviews"));
        assert_eq!(
            gw["metadata"]["annotations"],
            json!({"istio.io/for-service-account": "reviews"})
        );
        assert!(
            gateway("shop", "waypoint", For::Service, None)["metadata"]["annotations"].is_null()
        );
        assert_eq!(default_name(Some("reviews")), "reviews-waypoint");
        assert_eq!(default_name(None), "waypoint");

        assert!(check("reviews-waypoint", Some("reviews"), false).is_ok());
        let named_like = check("reviews", Some("reviews"), false).unwrap_err();
        assert!(
            named_like.to_string().contains("would run as that account"),
            "{named_like}"
        );
        let enrolled = check("reviews-waypoint", Some("reviews"), true).unwrap_err();
        assert!(
            enrolled.to_string().contains("--enroll-namespace"),
            "{enrolled}"
        );
        assert!(check("waypoint", None, true).is_ok());
    }
}
