//! `ambit check --kubernetes`: can this cluster run Ambit, and is Ambit running on it. Each
//! check says how to fix what fails, like the lab's `ambit check`.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};

use super::{ClusterError, NAMESPACE};
use crate::cmd::check::Check;

/// The CRDs the controller watches, the version it reads, and where they come from.
const CRDS: &[(&str, &str, &str)] = &[
    ("gateways.gateway.networking.k8s.io", "v1", GATEWAY_API),
    ("httproutes.gateway.networking.k8s.io", "v1", GATEWAY_API),
    ("authorizationpolicies.security.istio.io", "v1", INSTALL),
    ("peerauthentications.security.istio.io", "v1", INSTALL),
    ("destinationrules.networking.istio.io", "v1", INSTALL),
    ("httpfaults.ambit.dev", "v1alpha1", INSTALL),
];
const GATEWAY_API: &str = "install the Gateway API CRDs v1.2+ (standard channel; experimental for \
    HTTPRoute retries): \
    kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml";
const INSTALL: &str = "ambit install";

/// Every check, in the order to fix them. Only a failure to reach the API server is an error.
pub async fn run(client: kube::Client) -> Result<Vec<Check>, ClusterError> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| ClusterError::api("reading the API server's version", e))?;
    let mut checks = vec![Check {
        what: format!("API server {} reachable", version.git_version),
        ok: true,
        fix: String::new(),
    }];
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (name, version, fix) in CRDS {
        let found = crds
            .get_opt(name)
            .await
            .map_err(|e| ClusterError::api(format!("CRD {name}"), e))?;
        let serves = found.as_ref().is_some_and(|crd| {
            crd.spec
                .versions
                .iter()
                .any(|v| v.name == *version && v.served)
        });
        let bundle = found.as_ref().and_then(gateway_api_bundle);
        let too_old = bundle.as_ref().is_some_and(|(minor, _)| *minor < 2);
        let what = match &bundle {
            Some((minor, channel)) => {
                format!("CRD {name} serves {version} (Gateway API v1.{minor}, {channel} channel)")
            }
            None => format!("CRD {name} serves {version}"),
        };
        checks.push(Check {
            what,
            ok: serves && !too_old,
            fix: match found {
                None => fix.to_string(),
                Some(_) if too_old => format!("Gateway API before v1.2: {fix}"),
                Some(_) => format!("it exists but does not serve {version}: upgrade it ({fix})"),
            },
        });
    }
    checks.push(controller(&client).await?);
    checks.push(agents(&client).await?);
    Ok(checks)
}

/// A Gateway API CRD's bundle (minor version of v1.x, channel), from the annotations upstream's
/// manifests carry; None for other CRDs or if unannotated.
fn gateway_api_bundle(crd: &CustomResourceDefinition) -> Option<(u32, String)> {
    let annotations = crd.metadata.annotations.as_ref()?;
    let version = annotations.get("gateway.networking.k8s.io/bundle-version")?;
    let minor = version
        .strip_prefix("v1.")?
        .split('.')
        .next()?
        .parse()
        .ok()?;
    let channel = annotations
        .get("gateway.networking.k8s.io/channel")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    Some((minor, channel))
}

async fn controller(client: &kube::Client) -> Result<Check, ClusterError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let found = deployments
        .get_opt("ambit-controller")
        .await
        .map_err(|e| ClusterError::api("deployment ambit-controller", e))?;
    let (ok, state) = match found {
        None => (false, "not installed".to_string()),
        Some(d) => {
            let wanted = d.spec.replicas.unwrap_or(1);
            let ready = d.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            (ready >= 1, format!("{ready}/{wanted} ready"))
        }
    };
    Ok(Check {
        what: format!("controller ({NAMESPACE}/ambit-controller): {state}"),
        ok,
        fix: format!(
            "`ambit install`; if installed: kubectl -n {NAMESPACE} describe deployment ambit-controller"
        ),
    })
}

async fn agents(client: &kube::Client) -> Result<Check, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| ClusterError::api("listing nodes", e))?
        .items
        .len() as i32;
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let found = daemonsets
        .get_opt("ambit-ztunnel")
        .await
        .map_err(|e| ClusterError::api("daemonset ambit-ztunnel", e))?;
    let (ok, state) = match found.and_then(|d| d.status) {
        None => (false, "not installed".to_string()),
        Some(s) => (
            s.number_ready == nodes && s.desired_number_scheduled == nodes,
            format!("ready on {} of {nodes} node(s)", s.number_ready),
        ),
    };
    Ok(Check {
        what: format!("node agents ({NAMESPACE}/ambit-ztunnel): {state}"),
        ok,
        fix: format!(
            "`ambit install`; if installed: kubectl -n {NAMESPACE} get pods -l app=ambit-ztunnel -o wide"
        ),
    })
}
