//! A cluster's mesh as `ambit explain` sees it: the objects the controller reads, listed once
//! from the API server, decoded, defaulted and validated by the controller's own code (as its
//! Kubernetes source does), then translated with the settings the installed controller runs
//! with ([`crate::mesh::translate`]).

use std::collections::BTreeMap;

use ambit_controller::model::{ClusterState, Kind, Object};
use ambit_controller::source::yaml::object_from_value;
use ambit_controller::translate::{self, Settings};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use serde::de::DeserializeOwned;

use super::{ClusterError, NAMESPACE, is_not_found};
use crate::mesh::MeshView;

/// The custom kinds the controller watches: (kind, apiVersion, plural), the versions its
/// Kubernetes source reads (that table is private to it, so it is repeated here).
const CUSTOM: &[(Kind, &str, &str)] = &[
    (Kind::Gateway, "gateway.networking.k8s.io/v1", "gateways"),
    (
        Kind::HttpRoute,
        "gateway.networking.k8s.io/v1",
        "httproutes",
    ),
    (
        Kind::AuthorizationPolicy,
        "security.istio.io/v1",
        "authorizationpolicies",
    ),
    (
        Kind::PeerAuthentication,
        "security.istio.io/v1",
        "peerauthentications",
    ),
    (
        Kind::DestinationRule,
        "networking.istio.io/v1",
        "destinationrules",
    ),
    (Kind::HttpFault, "ambit.dev/v1alpha1", "httpfaults"),
];

/// Every object the controller would read, and the ones it would skip (with why).
pub async fn objects(client: &kube::Client) -> Result<(ClusterState, Vec<String>), ClusterError> {
    let mut state = ClusterState::new();
    let mut decoded: Vec<Result<Object, String>> = Vec::new();
    let boxed = |o| Object::Namespace(Box::new(o));
    decoded.extend(core::<Namespace>(client, "namespaces", boxed).await?);
    let boxed = |o| Object::Node(Box::new(o));
    decoded.extend(core::<Node>(client, "nodes", boxed).await?);
    let boxed = |o| Object::Pod(Box::new(o));
    decoded.extend(core::<Pod>(client, "pods", boxed).await?);
    let boxed = |o| Object::Service(Box::new(o));
    decoded.extend(core::<Service>(client, "services", boxed).await?);
    let plain = Object::ServiceAccount;
    decoded.extend(core::<ServiceAccount>(client, "serviceaccounts", plain).await?);
    for &(kind, api_version, plural) in CUSTOM {
        let (group, version) = api_version.split_once('/').expect("group/version");
        let gvk = GroupVersionKind::gvk(group, version, kind.as_str());
        let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
        let api = Api::<DynamicObject>::all_with(client.clone(), &resource);
        let items = match api.list(&ListParams::default()).await {
            Ok(list) => list.items,
            // Not installed: no objects of that kind (the controller treats it the same way).
            Err(e) if is_not_found(&e) => Vec::new(),
            Err(e) => return Err(ClusterError::api(format!("listing {plural}"), e)),
        };
        for item in items {
            let name = item.metadata.name.clone().unwrap_or_default();
            let namespace = item.metadata.namespace.clone().unwrap_or_default();
            decoded.push(
                serde_json::to_value(item)
                    .map_err(|e| e.to_string())
                    .and_then(|v| object_from_value(kind, v).map_err(|(f, r)| format!("{f}: {r}")))
                    .map_err(|e| format!("{kind} {namespace}/{name}: {e}")),
            );
        }
    }
    let mut rejected = Vec::new();
    for object in decoded {
        let checked = object.and_then(|o| {
            let o = o.with_defaults();
            translate::validate(&o).map_err(|e| format!("{} field {e}", o.object_ref()))?;
            Ok(o)
        });
        match checked {
            Ok(o) => {
                state.upsert(o);
            }
            Err(why) => rejected.push(why),
        }
    }
    Ok((state, rejected))
}

/// Every object of a core kind, cluster-wide.
async fn core<K>(
    client: &kube::Client,
    plural: &str,
    into: impl Fn(K) -> Object,
) -> Result<Vec<Result<Object, String>>, ClusterError>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| ClusterError::api(format!("listing {plural}"), e))?;
    Ok(list.items.into_iter().map(|o| Ok(into(o))).collect())
}

/// The settings the installed controller translates with: its Deployment's environment, else
/// the controller's defaults.
pub async fn settings(client: &kube::Client) -> Result<Settings, ClusterError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let found = deployments
        .get_opt("ambit-controller")
        .await
        .map_err(|e| ClusterError::api("deployment ambit-controller", e))?;
    let env: BTreeMap<String, String> = found
        .map(|d| d.spec)
        .and_then(|s| s.template.spec)
        .into_iter()
        .flat_map(|s| s.containers)
        .flat_map(|c| c.env.unwrap_or_default())
        .filter_map(|e| Some((e.name, e.value?)))
        .collect();
    let mut settings = Settings::default();
    for (name, field) in [
        ("AMBIT_TRUST_DOMAIN", &mut settings.trust_domain),
        ("AMBIT_ROOT_NAMESPACE", &mut settings.root_namespace),
        ("AMBIT_CLUSTER_ID", &mut settings.cluster_id),
        ("AMBIT_CLUSTER_DOMAIN", &mut settings.cluster_domain),
    ] {
        if let Some(value) = env.get(name) {
            *field = value.clone();
        }
    }
    Ok(settings)
}

/// The cluster's objects and their translated mesh.
pub async fn load(client: &kube::Client) -> Result<(ClusterState, MeshView), ClusterError> {
    let settings = settings(client).await?;
    let (objects, rejected) = objects(client).await?;
    let view = crate::mesh::translate(&objects, &settings, rejected)?;
    Ok((objects, view))
}
