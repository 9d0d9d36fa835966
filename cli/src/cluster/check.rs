//! `ambit check --kubernetes`: can this cluster run Ambit, and is Ambit running on it. Each
//! check says how to fix what fails, like the lab's `ambit check`.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde_json::Value;

use super::{ClusterError, NAMESPACE, is_not_found, render};
use crate::cmd::check::Check;

/// The CRDs the controller watches, the version it reads, and where they come from.
const CRDS: &[(&str, &str, &str)] = &[
    (
        "gatewayclasses.gateway.networking.k8s.io",
        "v1",
        GATEWAY_API,
    ),
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
/// The oldest Kubernetes Gateway API v1.2 supports, and so Ambit.
const MIN_KUBERNETES: (u32, u32) = (1, 26);

/// Every check, in the order to fix them. Only a failure to reach the API server is an error.
pub async fn run(client: kube::Client) -> Result<Vec<Check>, ClusterError> {
    let version = client
        .apiserver_version()
        .await
        .map_err(|e| ClusterError::api("reading the API server's version", e))?;
    let mut checks = vec![api_server(&version)];
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
    checks.push(gateway_class(&client).await?);
    checks.push(agents(&client).await?);
    Ok(checks)
}

/// The GatewayClass `ambit install` ships, as `deploy/base/gatewayclass.yaml` has it.
fn shipped_class() -> (String, String) {
    let (_, text) = render::FILES
        .iter()
        .find(|(name, _)| *name == "gatewayclass.yaml")
        .expect("deploy/base has the GatewayClass");
    let class: Value = serde_yaml::from_str(text).expect("gatewayclass.yaml is YAML");
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&class["metadata"]["name"]),
        text(&class["spec"]["controllerName"]),
    )
}

/// The waypoints' GatewayClass exists, names Ambit's controller, and the controller accepted it.
async fn gateway_class(client: &kube::Client) -> Result<Check, ClusterError> {
    let (name, controller) = shipped_class();
    let classes: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "GatewayClass"),
            "gatewayclasses",
        ),
    );
    let found = match classes.get_opt(&name).await {
        Ok(found) => found,
        // No Gateway API at all: the CRD checks above say how to fix that.
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(ClusterError::api(format!("GatewayClass {name}"), e)),
    };
    let accepted = |class: &DynamicObject| {
        class.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Accepted" && c["status"] == "True")
            })
    };
    let (ok, state, fix) = match &found {
        None => (
            false,
            "not installed".to_string(),
            "install the Gateway API CRDs, then `ambit install`".to_string(),
        ),
        Some(c) if c.data["spec"]["controllerName"] != controller.as_str() => (
            false,
            format!("names controller {}", c.data["spec"]["controllerName"]),
            "the class is another controller's: delete it, then `ambit install`".to_string(),
        ),
        Some(c) if !accepted(c) => (
            false,
            "not accepted yet".to_string(),
            format!(
                "the controller accepts it once it leads: kubectl -n {NAMESPACE} logs deployment/ambit-controller"
            ),
        ),
        Some(_) => (true, "accepted".to_string(), String::new()),
    };
    Ok(Check {
        what: format!("GatewayClass {name} ({controller}): {state}"),
        ok,
        fix,
    })
}

/// The API server answered; its version must be one Gateway API v1.2 supports. A version that
/// cannot be read (a distribution's own format) is not held against the cluster.
fn api_server(version: &k8s_openapi::apimachinery::pkg::version::Info) -> Check {
    let (major, minor) = MIN_KUBERNETES;
    let too_old = kubernetes_version(version).is_some_and(|v| v < MIN_KUBERNETES);
    Check {
        what: format!("API server {} reachable", version.git_version),
        ok: !too_old,
        fix: format!(
            "Ambit needs Kubernetes {major}.{minor} or later (what Gateway API v1.2 supports): \
             upgrade the cluster"
        ),
    }
}

/// (major, minor) from the version's fields ("1", "26+" on some distributions), else from
/// `gitVersion` ("v1.26.3-gke.100").
fn kubernetes_version(
    version: &k8s_openapi::apimachinery::pkg::version::Info,
) -> Option<(u32, u32)> {
    fn leading_number(s: &str) -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
    let from_fields = leading_number(&version.major).zip(leading_number(&version.minor));
    from_fields.or_else(|| {
        let mut parts = version.git_version.strip_prefix('v')?.split('.');
        leading_number(parts.next()?).zip(leading_number(parts.next()?))
    })
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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::version::Info;

    use super::*;

    fn info(major: &str, minor: &str, git_version: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            git_version: git_version.into(),
            ..Info::default()
        }
    }

    #[test]
    fn an_api_server_older_than_gateway_api_supports_fails_with_the_fix() {
        let old = api_server(&info("1", "25", "v1.25.16"));
        assert!(!old.ok);
        assert_eq!(old.what, "API server v1.25.16 reachable");
        assert!(old.fix.contains("Kubernetes 1.26 or later"), "{}", old.fix);
        assert!(api_server(&info("1", "26", "v1.26.0")).ok);
        assert!(api_server(&info("1", "33", "v1.33.1")).ok);
    }

    #[test]
    fn distribution_versions_are_read_and_an_unreadable_one_is_not_held_against_the_cluster() {
        assert_eq!(
            kubernetes_version(&info("1", "27+", "v1.27.8-eks-8cb36c9")),
            Some((1, 27))
        );
        assert_eq!(
            kubernetes_version(&info("", "", "v1.24.17-gke.100")),
            Some((1, 24))
        );
        assert!(!api_server(&info("", "", "v1.24.17-gke.100")).ok);
        assert_eq!(kubernetes_version(&info("", "", "custom")), None);
        assert!(api_server(&info("", "", "custom")).ok);
    }
}
