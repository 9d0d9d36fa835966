//! `ambit install` and `ambit uninstall`.
//!
//! Install is server-side apply of every rendered object, in `deploy/base`'s order, with field
//! manager `ambit`, `force` (the installer owns the fields it sets, even ones an earlier `kubectl
//! apply` set) and strict field validation (a field the server does not know is an error, not
//! silently dropped). A CRD that already exists without Ambit's label is someone else's (Istio's,
//! usually): it is left exactly as it is, and the output says so.
//!
//! Uninstall deletes in reverse order, the agents first: their DaemonSet is deleted with
//! foreground propagation and waited for, so every agent gets its SIGTERM while the rest of the
//! mesh still runs and removes its capture rules from its node before anything else goes.

use std::time::Duration;

use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use serde_json::Value;

use super::resources::Target;
use super::{ClusterError, FIELD_MANAGER, PART_OF, is_not_found};

/// The CRD versions the controller reads; an existing CRD that does not serve one is reported.
const READ_VERSIONS: &[(&str, &str)] = &[
    ("authorizationpolicies.security.istio.io", "v1"),
    ("peerauthentications.security.istio.io", "v1"),
    ("destinationrules.networking.istio.io", "v1"),
    ("httpfaults.ambit.dev", "v1alpha1"),
];

/// Applies `objects` in order; returns one line per object.
pub async fn install(client: kube::Client, objects: &[Value]) -> Result<String, ClusterError> {
    let params = PatchParams::apply(FIELD_MANAGER)
        .force()
        .validation_strict();
    let mut out = String::new();
    for object in objects {
        let target = Target::of(object)?;
        let api = target.api(client.clone());
        if target.resource.kind == "CustomResourceDefinition" {
            let existing = api
                .get_opt(&target.name)
                .await
                .map_err(|e| ClusterError::api(target.display(), e))?;
            if let Some(existing) = existing.filter(|crd| !is_ours(&crd.metadata.labels)) {
                out += &format!(
                    "{} exists and is not Ambit's ({}): left as it is\n",
                    target.display(),
                    owner(&existing.metadata.labels)
                );
                if let Some(missing) = missing_version(&target.name, &existing.data) {
                    out += &format!(
                        "  warning: it does not serve {missing}, the version Ambit reads; \
                         upgrade it (Istio 1.22+ serves v1)\n"
                    );
                }
                continue;
            }
        }
        match api
            .patch(&target.name, &params, &Patch::Apply(object))
            .await
        {
            Ok(_) => out += &format!("{} serverside-applied\n", target.display()),
            // The Gateway API CRDs are upstream's: without them there is no GatewayClass kind.
            // Everything else works (and `ambit check` says what is missing), so go on.
            Err(e) if target.resource.kind == "GatewayClass" && is_not_found(&e) => {
                out += &format!(
                    "{} skipped: the Gateway API CRDs are not installed; install them \
                     (deploy/README.md) and run `ambit install` again\n",
                    target.display()
                );
            }
            Err(e) => {
                return Err(ClusterError::api(
                    format!("applying {}", target.display()),
                    e,
                ));
            }
        }
    }
    Ok(out)
}

/// What `ambit uninstall` removes and how long it waits for the agents.
#[derive(Debug, Clone)]
pub struct Uninstall {
    /// Delete Ambit's CRDs too (and with them every object of those kinds).
    pub crds: bool,
    /// How long the agents get to stop; past it, uninstall fails and says which object remains.
    pub wait: Duration,
    /// Between checks that the agents are gone.
    pub poll: Duration,
}

/// Deletes `objects` (the rendered install) in reverse order, the agents' DaemonSet first.
pub async fn uninstall(
    client: kube::Client,
    objects: &[Value],
    options: &Uninstall,
) -> Result<String, ClusterError> {
    let mut out = String::new();
    let targets = objects
        .iter()
        .map(Target::of)
        .collect::<Result<Vec<_>, _>>()?;
    let (agents, rest): (Vec<_>, Vec<_>) = targets
        .into_iter()
        .partition(|t| t.resource.kind == "DaemonSet");
    let foreground = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Foreground),
        ..DeleteParams::default()
    };
    for target in &agents {
        if delete(&client, target, &foreground, &mut out).await? {
            eprintln!(
                "waiting for the agents to stop and remove their capture rules from every node"
            );
            wait_gone(&client, target, options).await?;
            out += &format!("{} gone: every agent has stopped\n", target.display());
        }
    }
    for target in rest.iter().rev() {
        if target.resource.kind == "CustomResourceDefinition" {
            if !options.crds {
                continue;
            }
            // Never another installer's CRD: deleting it deletes everyone's objects of its kind.
            let existing = target
                .api(client.clone())
                .get_opt(&target.name)
                .await
                .map_err(|e| ClusterError::api(target.display(), e))?;
            match existing {
                Some(crd) if !is_ours(&crd.metadata.labels) => {
                    out += &format!("{} is not Ambit's: kept\n", target.display());
                    continue;
                }
                None => continue,
                Some(_) => {}
            }
        }
        delete(&client, target, &DeleteParams::default(), &mut out).await?;
    }
    if !options.crds {
        out += "CRDs kept (with the policies in them); `ambit uninstall --crds` removes them\n";
    }
    out += "waypoint Gateways in application namespaces are kept: `ambit waypoint delete` removes them\n";
    Ok(out)
}

/// Deletes one object; `false` when it was not there.
async fn delete(
    client: &kube::Client,
    target: &Target,
    params: &DeleteParams,
    out: &mut String,
) -> Result<bool, ClusterError> {
    match target
        .api(client.clone())
        .delete(&target.name, params)
        .await
    {
        Ok(_) => {
            *out += &format!("{} deleted\n", target.display());
            Ok(true)
        }
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(ClusterError::api(
            format!("deleting {}", target.display()),
            e,
        )),
    }
}

async fn wait_gone(
    client: &kube::Client,
    target: &Target,
    options: &Uninstall,
) -> Result<(), ClusterError> {
    let api = target.api(client.clone());
    let deadline = tokio::time::Instant::now() + options.wait;
    loop {
        let found = api
            .get_opt(&target.name)
            .await
            .map_err(|e| ClusterError::api(target.display(), e))?;
        if found.is_none() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Timeout {
                what: target.display(),
                seconds: options.wait.as_secs(),
            });
        }
        tokio::time::sleep(options.poll).await;
    }
}

fn is_ours(labels: &Option<std::collections::BTreeMap<String, String>>) -> bool {
    labels
        .as_ref()
        .and_then(|l| l.get(PART_OF.0))
        .is_some_and(|v| v == PART_OF.1)
}

/// Who installed a CRD, as far as its labels tell.
fn owner(labels: &Option<std::collections::BTreeMap<String, String>>) -> String {
    let labels = labels.clone().unwrap_or_default();
    for key in [
        "app.kubernetes.io/part-of",
        "app.kubernetes.io/managed-by",
        "app",
        "release",
    ] {
        if let Some(v) = labels.get(key) {
            return format!("{key}={v}");
        }
    }
    "no owner label".into()
}

/// The version Ambit reads, if the existing CRD does not serve it.
fn missing_version(name: &str, data: &Value) -> Option<&'static str> {
    let (_, version) = READ_VERSIONS.iter().find(|(n, _)| *n == name)?;
    let served = data["spec"]["versions"]
        .as_array()?
        .iter()
        .any(|v| v["name"] == *version && v["served"].as_bool().unwrap_or(false));
    (!served).then_some(*version)
}
