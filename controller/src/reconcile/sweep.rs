//! The sweep: deletes what the reconciler made for Gateways that are gone or no longer
//! waypoints. The garbage collector does the same through the owner references; the sweep
//! covers clusters where it is off.

use std::collections::BTreeSet;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use super::objects::MANAGED_BY;
use super::{Reconciler, gateway_resource, kind_of, waypoint_class};
use crate::translate::waypoint;

/// Every sweep interval: deletes what the reconciler made for Gateways that are gone or no
/// longer waypoints. The Gateways are listed afresh each time rather than read from the
/// controller's cache, so a cache not filled yet can never look like "every Gateway is gone".
pub(super) async fn sweep_loop(ctx: Arc<Reconciler>) {
    let gateways = Api::<DynamicObject>::all_with(ctx.client.clone(), &gateway_resource());
    loop {
        match gateways.list(&ListParams::default()).await {
            Ok(list) => {
                let live: BTreeSet<(String, String)> = list
                    .items
                    .iter()
                    .filter(|gw| waypoint_class(gw) && gw.metadata.deletion_timestamp.is_none())
                    .map(|gw| (gw.namespace().unwrap_or_default(), gw.name_any()))
                    .collect();
                let swept = sweep::<Deployment>(&ctx, &live).await
                    + sweep::<Service>(&ctx, &live).await
                    + sweep::<ConfigMap>(&ctx, &live).await
                    + sweep::<ServiceAccount>(&ctx, &live).await;
                if swept > 0 {
                    info!(objects = swept, "deleted the objects of removed waypoints");
                }
            }
            // No Gateway API on this cluster: no waypoints, and nothing of theirs to sweep.
            Err(kube::Error::Api(status)) if status.code == 404 => {
                debug!("Gateways are not served; no sweep")
            }
            // Never sweep on a failed list: every waypoint would look orphaned.
            Err(e) => warn!("listing Gateways for the sweep: {e}"),
        }
        tokio::time::sleep(ctx.sweep_interval).await;
    }
}

/// Deletes the managed objects of kind `K` whose Gateway is not in `live`; how many.
async fn sweep<K>(ctx: &Reconciler, live: &BTreeSet<(String, String)>) -> usize
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(ctx.client.clone());
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let listed = match api
        .list_metadata(&ListParams::default().labels(&selector))
        .await
    {
        Ok(list) => list,
        Err(e) => {
            warn!(kind = kind_of::<K>(), "listing for the sweep: {e}");
            return 0;
        }
    };
    let mut deleted = 0;
    for object in listed {
        let namespace = object.namespace().unwrap_or_default();
        let Some(gateway) = object.labels().get(waypoint::GATEWAY_NAME_LABEL) else {
            continue;
        };
        if live.contains(&(namespace.clone(), gateway.clone())) {
            continue;
        }
        let name = object.name_any();
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
        match api.delete(&name, &DeleteParams::background()).await {
            Ok(_) => deleted += 1,
            // The garbage collector was faster.
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => warn!(kind = kind_of::<K>(), %namespace, %name, "sweep: deleting: {e}"),
        }
    }
    deleted
}
