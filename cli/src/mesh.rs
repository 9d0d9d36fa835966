//! The mesh as the data plane sees it, built by the controller's own code from the objects it
//! reads: `ambit_controller`'s translation produces the resources the controller pushes, and the
//! proxies' [`Store`] indexes them into the [`MeshState`] an agent routes and authorizes with
//! and a waypoint routes requests with. `ambit explain`, `ambit get` and the lab's kube-proxy
//! read this, so they agree with the data plane by construction rather than by a second
//! implementation of the rules (which pods are captured, which policies and routes apply).
//!
//! Where the objects come from is the caller's business: the lab's manifest directory
//! (`lab::view`) or a cluster's API server (`cluster::mesh`).

use std::sync::Arc;

use ambit_controller::model::ClusterState;
use ambit_controller::translate::{self, Settings};
use ambit_proto::api::{self, resource::Kind, type_url};
use ambit_ztunnel::state::{MeshState, Store};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("reading the objects: {0}")]
    Load(String),
    #[error("the controller's translation was rejected by the proxies' state: {0}")]
    State(String),
}

/// The translated mesh, and the objects the controller rejects (it skips them too).
pub struct MeshView {
    pub state: Arc<MeshState>,
    /// The store `state` came from, for a waypoint's view of it (`ambit explain`).
    pub store: Arc<Store>,
    pub errors: Vec<String>,
    pub trust_domain: String,
}

/// Translates `objects` with `settings` and indexes the result as every proxy does. `errors`:
/// the objects the source already rejected, to report with the view.
pub fn translate(
    objects: &ClusterState,
    settings: &Settings,
    errors: Vec<String>,
) -> Result<MeshView, ViewError> {
    let snapshot = translate::translate(objects, settings);
    let store = Store::new(&settings.trust_domain);
    fn resources<T: Clone>(
        items: &std::collections::BTreeMap<String, Arc<T>>,
        kind: impl Fn(T) -> Kind,
    ) -> Vec<api::Resource> {
        items
            .iter()
            .map(|(name, item)| api::Resource {
                name: name.clone(),
                version: String::new(),
                kind: Some(kind((**item).clone())),
            })
            .collect()
    }
    // Agents get the first three; waypoints also get routes and backend policies. One store
    // with all of them answers both (each proxy only looks at its own kinds).
    for (type_url, items) in [
        (
            type_url::WORKLOAD,
            resources(&snapshot.workloads, Kind::Workload),
        ),
        (
            type_url::SERVICE,
            resources(&snapshot.services, Kind::Service),
        ),
        (
            type_url::AUTHORIZATION,
            resources(&snapshot.authorizations, Kind::Authorization),
        ),
        (type_url::ROUTE, resources(&snapshot.routes, Kind::Route)),
        (
            type_url::BACKEND_POLICY,
            resources(&snapshot.backend_policies, Kind::BackendPolicy),
        ),
    ] {
        store
            .apply(type_url, items, Vec::new())
            .map_err(|e| ViewError::State(e.to_string()))?;
    }
    Ok(MeshView {
        state: store.current(),
        store,
        errors,
        trust_domain: settings.trust_domain.clone(),
    })
}

/// A waypoint address as agents print it in their config dump: `<ns>/<hostname>`, or the address.
pub fn gateway_name(gateway: Option<&api::GatewayAddress>) -> Option<String> {
    use api::gateway_address::Destination;
    match gateway?.destination.as_ref()? {
        Destination::Hostname(h) => Some(format!("{}/{}", h.namespace, h.hostname)),
        Destination::Address(a) => Some(a.clone()),
    }
}
