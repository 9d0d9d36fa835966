//! The mesh as the data plane sees it, built by the controller's own code from the lab's
//! manifest directory: `ambit_controller`'s directory loader and translation produce the
//! resources the controller pushes, and the agents' [`Store`] indexes them into the
//! [`MeshState`] an agent routes and authorizes with. `ambit explain`, `ambit get` and the lab's
//! kube-proxy read this, so they agree with the agents by construction rather than by a second
//! implementation of the rules (which pods are captured, which policies apply).

use std::path::Path;
use std::sync::Arc;

use ambit_controller::source::standalone::Directory;
use ambit_controller::translate::{self, Settings};
use ambit_proto::api::{self, resource::Kind, type_url};
use ambit_ztunnel::state::{MeshState, Store};

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("reading the lab's manifests: {0}")]
    Load(String),
    #[error("the controller's translation was rejected by the agents' state: {0}")]
    State(String),
}

/// The translated mesh, and the documents the controller rejects (it skips them too).
pub struct MeshView {
    pub state: Arc<MeshState>,
    pub errors: Vec<String>,
    pub trust_domain: String,
}

/// Translates the manifests in `dir` with the settings the lab runs the controller with.
pub fn load(dir: &Path) -> Result<MeshView, ViewError> {
    let settings = Settings::default();
    let mut directory = Directory::new(dir);
    let (report, _) = directory
        .load()
        .map_err(|e| ViewError::Load(e.to_string()))?;
    let snapshot = translate::translate(directory.state(), &settings);
    let store = Store::new(&settings.trust_domain);
    let resources = |items: Vec<(String, Kind)>| -> Vec<api::Resource> {
        items
            .into_iter()
            .map(|(name, kind)| api::Resource {
                name,
                version: String::new(),
                kind: Some(kind),
            })
            .collect()
    };
    let workloads = snapshot
        .workloads
        .iter()
        .map(|(k, w)| (k.clone(), Kind::Workload((**w).clone())))
        .collect();
    let services = snapshot
        .services
        .iter()
        .map(|(k, s)| (k.clone(), Kind::Service((**s).clone())))
        .collect();
    let policies = snapshot
        .authorizations
        .iter()
        .map(|(k, a)| (k.clone(), Kind::Authorization((**a).clone())))
        .collect();
    for (type_url, items) in [
        (type_url::WORKLOAD, workloads),
        (type_url::SERVICE, services),
        (type_url::AUTHORIZATION, policies),
    ] {
        store
            .apply(type_url, resources(items), Vec::new())
            .map_err(|e| ViewError::State(e.to_string()))?;
    }
    Ok(MeshView {
        state: store.current(),
        errors: report.errors.iter().map(ToString::to_string).collect(),
        trust_domain: settings.trust_domain,
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
