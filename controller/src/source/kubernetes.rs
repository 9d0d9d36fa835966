//! Kubernetes mode: the nine kinds the controller reads, list+watched cluster-wide from the API.
//!
//! This module owns the watch streams and the [`ClusterState`] they build, published on a
//! `watch::Sender` exactly as the standalone source does, plus a readiness flag. It decodes custom
//! resources with [`object_from_value`] and checks every object with [`translate::validate`], so a
//! cluster and a YAML directory yield the same objects. It does not translate, push, or write to
//! the API server.
//!
//! Rules it keeps:
//! - a re-list (after a restart or a `410 Gone`) replaces that kind's objects wholesale, so
//!   deletions missed while disconnected are not kept forever;
//! - an invalid object is skipped and logged; if an earlier version was accepted, that version
//!   stays (a policy edited into nonsense must not vanish and widen access);
//! - one failing kind (a missing CRD, RBAC, a flaky API server) never stops the others: each
//!   watch retries with kube's backoff.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;

use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::yaml::object_from_value;
use crate::model::{ClusterState, Kind, Object, ObjectRef};
use crate::translate;

/// Every kind the source watches. Readiness waits for all of them.
pub const KINDS: [Kind; 11] = [
    Kind::Namespace,
    Kind::Node,
    Kind::Pod,
    Kind::Service,
    Kind::ServiceAccount,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::AuthorizationPolicy,
    Kind::PeerAuthentication,
    Kind::DestinationRule,
    Kind::HttpFault,
];

/// Upper bound on events folded into one publish, so a flood of events (a 10k-pod re-list) still
/// lets the state out regularly and the decoded backlog stays bounded.
const MAX_BATCH: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Neither in-cluster config nor a usable KUBECONFIG: a deployment problem, fix and restart.
    #[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
    Config(#[source] kube::Error),
    /// Every watch stream ended. With backoff they retry forever, so this means kube gave up.
    #[error("every Kubernetes watch ended")]
    WatchesEnded,
}

/// The source: a client, and the watches started from it by [`KubernetesSource::run`].
#[derive(Clone)]
pub struct KubernetesSource {
    client: Client,
}

impl KubernetesSource {
    pub fn new(client: Client) -> Self {
        KubernetesSource { client }
    }

    /// The API client, for other Kubernetes-facing parts (the CA's TokenReview and Secret).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// A client from the in-cluster service account, or else KUBECONFIG / `~/.kube/config`.
    pub async fn try_default() -> Result<Self, SourceError> {
        Client::try_default()
            .await
            .map(Self::new)
            .map_err(SourceError::Config)
    }

    /// Watches every kind in [`KINDS`] and publishes each change on `states`; several events that
    /// arrive together are published once. `ready` turns true (once, and stays true) after every
    /// kind has been listed, so nothing downstream serves a half-read cluster at start. Runs until
    /// every receiver of `states` is gone.
    pub async fn run(
        self,
        states: watch::Sender<ClusterState>,
        ready: watch::Sender<bool>,
    ) -> Result<(), SourceError> {
        let mut events = stream::select_all(KINDS.map(|kind| self.watch(kind)));
        let mut tracker = Tracker::default();
        loop {
            let first = tokio::select! {
                () = states.closed() => return Ok(()),
                next = events.next() => next,
            };
            let Some(first) = first else {
                return Err(SourceError::WatchesEnded);
            };
            // Coalesce: take whatever else is already decoded, then publish once. The state is
            // changed in place (the pipeline translates under its borrow rather than copying it).
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match events.next().now_or_never() {
                    Some(Some(item)) => batch.push(item),
                    _ => break,
                }
            }
            states.send_if_modified(|state| {
                let mut changed = false;
                for (kind, item) in batch {
                    match item {
                        Ok(change) => changed |= tracker.apply(state, kind, change),
                        Err(e) => tracker.failed(kind, &e),
                    }
                }
                changed
            });
            // After the state, so whoever sees `ready` also sees every kind's first list.
            if tracker.listed.len() == KINDS.len() && !*ready.borrow() {
                info!("every kind listed; Kubernetes source ready");
                ready.send_replace(true);
            }
        }
    }

    fn watch(&self, kind: Kind) -> KindEvents {
        let client = self.client.clone();
        match kind {
            // Core kinds: the typed k8s-openapi structs are already the model's types.
            Kind::Namespace => events(kind, Api::all(client), |n: Namespace| {
                Ok(Object::Namespace(Box::new(n)))
            }),
            Kind::Node => events(kind, Api::all(client), |n: Node| {
                Ok(Object::Node(Box::new(n)))
            }),
            Kind::Pod => events(kind, Api::all(client), |p: Pod| {
                Ok(Object::Pod(Box::new(p)))
            }),
            Kind::Service => events(kind, Api::all(client), |s: Service| {
                Ok(Object::Service(Box::new(s)))
            }),
            Kind::ServiceAccount => events(kind, Api::all(client), |s: ServiceAccount| {
                Ok(Object::ServiceAccount(s))
            }),
            Kind::Gateway => custom(kind, client, "gateway.networking.k8s.io/v1", "gateways"),
            Kind::HttpRoute => custom(kind, client, "gateway.networking.k8s.io/v1", "httproutes"),
            Kind::AuthorizationPolicy => custom(
                kind,
                client,
                "security.istio.io/v1",
                "authorizationpolicies",
            ),
            Kind::PeerAuthentication => {
                custom(kind, client, "security.istio.io/v1", "peerauthentications")
            }
            // v1 since Istio 1.22; older clusters serve v1beta1 only.
            Kind::DestinationRule => {
                custom(kind, client, "networking.istio.io/v1", "destinationrules")
            }
            Kind::HttpFault => custom(kind, client, "ambit.dev/v1alpha1", "httpfaults"),
        }
    }
}

impl Debug for KubernetesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesSource").finish_non_exhaustive()
    }
}

type KindEvents = BoxStream<'static, (Kind, Result<Change, watcher::Error>)>;

/// A watcher event for one kind, already decoded and validated (outside the state's lock).
#[derive(Debug)]
enum Change {
    /// A list starts: the following `Listed` objects, and only they, will be the kind's objects.
    Relist,
    Listed(Decoded),
    ListDone,
    Applied(Decoded),
    Deleted(ObjectRef),
}

#[derive(Debug)]
enum Decoded {
    /// Shared: it goes into the state as it is (and an `Object` is ~600 bytes inline, a
    /// rejection needs only its name).
    Valid(Arc<Object>),
    /// Unusable (already logged); its last accepted version, if any, is kept.
    Rejected(ObjectRef),
}

/// A watch on a custom resource (`api_version` "<group>/<version>"), decoded by the same code as
/// the YAML source.
fn custom(kind: Kind, client: Client, api_version: &str, plural: &str) -> KindEvents {
    let (group, version) = api_version.split_once('/').expect("group/version");
    let resource = ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: api_version.into(),
        kind: kind.as_str().into(),
        plural: plural.into(),
    };
    let api = Api::<DynamicObject>::all_with(client, &resource);
    events(kind, api, move |object: DynamicObject| {
        let value = serde_json::to_value(object).map_err(|e| (String::new(), e.to_string()))?;
        object_from_value(kind, value)
    })
}

fn events<K, F>(kind: Kind, api: Api<K>, into: F) -> KindEvents
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
    F: Fn(K) -> Result<Object, (String, String)> + Copy + Send + 'static,
{
    // The backoff turns errors into a delay before the watcher's next attempt instead of a hot
    // loop; the watcher itself re-lists after 410 Gone and resumes after a dropped connection.
    watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .map(move |item| {
            let change = item.map(|event| match event {
                Event::Init => Change::Relist,
                Event::InitApply(o) => Change::Listed(accept(kind, o, into)),
                Event::InitDone => Change::ListDone,
                Event::Apply(o) => Change::Applied(accept(kind, o, into)),
                Event::Delete(o) => Change::Deleted(object_ref(kind, o.meta())),
            });
            (kind, change)
        })
        .boxed()
}

/// Decodes and validates; logs and rejects what cannot be used.
fn accept<K: Resource>(
    kind: Kind,
    object: K,
    into: impl Fn(K) -> Result<Object, (String, String)>,
) -> Decoded {
    let key = object_ref(kind, object.meta());
    let checked = into(object).and_then(|o| {
        let o = o.with_defaults();
        translate::validate(&o).map_err(|e| (e.field, e.reason))?;
        Ok(o)
    });
    match checked {
        Ok(o) => Decoded::Valid(Arc::new(o)),
        Err((field, reason)) => {
            warn!(
                kind = %key.kind,
                namespace = %key.namespace,
                name = %key.name,
                field = %field,
                reason = %reason,
                "invalid object skipped; its last accepted version, if any, stays"
            );
            Decoded::Rejected(key)
        }
    }
}

fn object_ref(kind: Kind, meta: &ObjectMeta) -> ObjectRef {
    let namespace = if kind.is_namespaced() {
        meta.namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "default".into())
    } else {
        String::new()
    };
    ObjectRef {
        kind,
        namespace,
        name: meta.name.clone().unwrap_or_default(),
    }
}

/// Per-kind bookkeeping around the shared state: lists in progress and which kinds are ready.
#[derive(Debug, Default)]
struct Tracker {
    /// Objects of a list in progress; they replace the kind's objects when it completes, so a
    /// half-done re-list is never published.
    relisting: BTreeMap<Kind, BTreeMap<ObjectRef, Arc<Object>>>,
    /// Kinds whose first list completed, or which the API server does not serve at all.
    listed: BTreeSet<Kind>,
    /// Kinds answered with 404 (CRD not installed), so the warning is logged once, not per retry.
    absent: BTreeSet<Kind>,
}

impl Tracker {
    /// Applies one change; true if the state changed.
    fn apply(&mut self, state: &mut ClusterState, kind: Kind, change: Change) -> bool {
        match change {
            Change::Relist => {
                self.relisting.insert(kind, BTreeMap::new());
                false
            }
            Change::Listed(decoded) => {
                let Some(fresh) = self.relisting.get_mut(&kind) else {
                    // The watcher always starts a list with Init; if not, treat it as an update.
                    return apply_one(state, decoded);
                };
                match decoded {
                    Decoded::Valid(o) => {
                        fresh.insert(o.object_ref(), o);
                    }
                    Decoded::Rejected(key) => {
                        if let Some(previous) = state.get_shared(&key) {
                            fresh.insert(key, previous.clone());
                        }
                    }
                }
                false
            }
            Change::ListDone => {
                let fresh = self.relisting.remove(&kind).unwrap_or_default();
                if self.listed.insert(kind) {
                    debug!(%kind, objects = fresh.len(), "first list done");
                }
                if self.absent.remove(&kind) {
                    info!(%kind, "now served by the API server");
                }
                let stale: Vec<ObjectRef> = state
                    .iter()
                    .filter(|(key, _)| key.kind == kind && !fresh.contains_key(key))
                    .map(|(key, _)| key.clone())
                    .collect();
                let mut changed = !stale.is_empty();
                for key in stale {
                    state.remove(&key);
                }
                for object in fresh.into_values() {
                    changed |= upsert(state, object);
                }
                changed
            }
            Change::Applied(decoded) => apply_one(state, decoded),
            Change::Deleted(key) => state.remove(&key).is_some(),
        }
    }

    fn failed(&mut self, kind: Kind, error: &watcher::Error) {
        match error {
            // A resource that is not served has no objects: that kind is complete (empty), and
            // the backoff keeps retrying so installing the CRD later is noticed. Objects accepted
            // before are kept: deleting a CRD deletes its objects, and those arrive as events.
            watcher::Error::InitialListFailed(kube::Error::Api(status)) if status.code == 404 => {
                self.listed.insert(kind);
                if self.absent.insert(kind) {
                    warn!(%kind, "not served by the API server (CRD not installed?); treated as empty, retrying");
                }
            }
            // Expired resourceVersion: routine, the watcher re-lists.
            watcher::Error::WatchError(status) if status.code == 410 => {
                debug!(%kind, "resourceVersion expired; re-listing");
            }
            _ => warn!(%kind, "watch failed, retrying with backoff: {error}"),
        }
    }
}

fn apply_one(state: &mut ClusterState, decoded: Decoded) -> bool {
    match decoded {
        Decoded::Valid(object) => upsert(state, object),
        Decoded::Rejected(_) => false,
    }
}

/// Inserts unless an equal object is already there (which then keeps its allocation, so the
/// pipeline sees it unchanged by pointer); true if the state changed.
fn upsert(state: &mut ClusterState, object: Arc<Object>) -> bool {
    if state.get(&object.object_ref()) == Some(&*object) {
        return false;
    }
    state.insert(object);
    true
}
