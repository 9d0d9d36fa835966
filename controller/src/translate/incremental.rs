//! Incremental translation: keeps a [`Snapshot`] in step with the state by re-translating only what
//! a change can affect.
//!
//! What each resource is computed from (see `workload.rs`, `service.rs`, `authorization.rs`), and
//! so what a change of each kind re-translates:
//!
//! | change | re-translated |
//! |---|---|
//! | Pod | that pod's workload; in a namespace with a per-service-account waypoint, when its labels or account change (or it comes or goes), that namespace's services too (a Service uses that waypoint when all its pods run as the account) |
//! | AuthorizationPolicy | that policy; with a selector (before or after), the workloads of its namespace (every workload for the root namespace: its selector policies select across the mesh) |
//! | Service | that service; the workloads of its namespace (`Workload.services`) |
//! | Namespace (labels) | the workloads and services of that namespace (capture, waypoint); every route (a listener's `allowedRoutes` may select namespaces by label) |
//! | PeerAuthentication | the workloads of its namespace (every workload for the root namespace) |
//! | Gateway | every workload, service and route (`use-waypoint-namespace` can point anywhere; a route attaches through the Gateway's listeners) |
//! | HTTPRoute, DestinationRule | that route, that backend policy |
//! | HTTPFault | the routes of its namespace (rules name faults in their own namespace) |
//! | Node, ServiceAccount | nothing (translation does not read them) |
//!
//! So one pod change costs one pod's translation; a service, policy or namespace change costs one
//! namespace's pods (~100 at 10k pods / 100 namespaces); the rare mesh-wide changes (a gateway, a
//! root-namespace policy) cost a full translation. Re-translated resources that come out equal are
//! not reported as changed, so the push layer only sends what really differs.
//!
//! [`translate`](super::translate) is [`Translator::rebuild`] on an empty translator; the tests
//! check that any sequence of updates ends where a translation from scratch does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ambit_proto::api;
use k8s_openapi::api::core::v1::{Pod, Service};

use super::{Settings, Snapshot, authorization, backend, route, service, waypoint, workload};
use crate::model::{self, ClusterState, Kind, Object, ObjectRef};

/// Resources that changed in one update: the new version, or `None` when removed.
#[derive(Debug, Default, PartialEq)]
pub struct Changes {
    pub workloads: BTreeMap<String, Option<Arc<api::Workload>>>,
    pub services: BTreeMap<String, Option<Arc<api::Service>>>,
    pub authorizations: BTreeMap<String, Option<Arc<api::Authorization>>>,
    pub routes: BTreeMap<String, Option<Arc<api::Route>>>,
    pub backend_policies: BTreeMap<String, Option<Arc<api::BackendPolicy>>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.workloads.is_empty()
            && self.services.is_empty()
            && self.authorizations.is_empty()
            && self.routes.is_empty()
            && self.backend_policies.is_empty()
    }
}

/// A snapshot and the settings it was translated with.
#[derive(Debug)]
pub struct Translator {
    settings: Settings,
    snapshot: Snapshot,
}

/// What one update re-translates.
#[derive(Debug, Default)]
struct Dirty {
    all_pods: bool,
    all_services: bool,
    all_routes: bool,
    pod_namespaces: BTreeSet<String>,
    service_namespaces: BTreeSet<String>,
    route_namespaces: BTreeSet<String>,
    /// Single objects: pods, services, policies, routes (including deleted ones).
    objects: BTreeSet<ObjectRef>,
}

impl Dirty {
    /// `state` is the state after `changes`.
    fn of(changes: &[model::Change], root_namespace: &str, state: &ClusterState) -> Dirty {
        let mut dirty = Dirty::default();
        for change in changes {
            let key = &change.key;
            let (before, after) = (change.before.as_deref(), change.after.as_deref());
            match key.kind {
                Kind::Pod => {
                    dirty.objects.insert(key.clone());
                    let selected = |o: Option<&Object>| match o {
                        Some(Object::Pod(p)) => Some((
                            model::labels(&p.metadata).clone(),
                            workload::service_account(p).to_string(),
                        )),
                        _ => None,
                    };
                    if selected(before) != selected(after)
                        && waypoint::has_account_waypoints(state, &key.namespace)
                    {
                        dirty.service_namespaces.insert(key.namespace.clone());
                    }
                }
                Kind::Service => {
                    dirty.objects.insert(key.clone());
                    dirty.pod_namespaces.insert(key.namespace.clone());
                }
                Kind::AuthorizationPolicy => {
                    dirty.objects.insert(key.clone());
                    let selects = |o: Option<&Object>| matches!(o, Some(Object::AuthorizationPolicy(p)) if p.spec.selector.is_some());
                    if selects(before) || selects(after) {
                        dirty.pods_of(&key.namespace, root_namespace);
                    }
                }
                Kind::PeerAuthentication => dirty.pods_of(&key.namespace, root_namespace),
                Kind::Namespace => {
                    let labels =
                        |o: Option<&Object>| o.map(|o| model::labels(o.metadata()).clone());
                    if labels(before) != labels(after) {
                        dirty.pod_namespaces.insert(key.name.clone());
                        dirty.service_namespaces.insert(key.name.clone());
                        dirty.all_routes = true;
                    }
                }
                Kind::Gateway => {
                    dirty.all_pods = true;
                    dirty.all_services = true;
                    dirty.all_routes = true;
                }
                Kind::HttpRoute | Kind::DestinationRule => {
                    dirty.objects.insert(key.clone());
                }
                Kind::HttpFault => {
                    dirty.route_namespaces.insert(key.namespace.clone());
                }
                Kind::Node | Kind::ServiceAccount => {}
            }
        }
        dirty
    }

    fn pods_of(&mut self, namespace: &str, root_namespace: &str) {
        if namespace == root_namespace {
            self.all_pods = true;
        } else {
            self.pod_namespaces.insert(namespace.to_string());
        }
    }
}

impl Translator {
    pub fn new(settings: Settings) -> Self {
        Translator {
            settings,
            snapshot: Snapshot::default(),
        }
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn into_snapshot(self) -> Snapshot {
        self.snapshot
    }

    /// Translates the whole state and returns what differs from the snapshot held before.
    pub fn rebuild(&mut self, state: &ClusterState) -> Changes {
        let mut fresh = Translator::new(self.settings.clone());
        let ignored = &mut Changes::default();
        for pod in state.pods() {
            fresh.workload(state, pod, ignored);
        }
        for svc in state.services() {
            fresh.service(state, svc, ignored);
        }
        for policy in state.authorization_policies() {
            fresh.authorization(policy, ignored);
        }
        for r in state.http_routes() {
            fresh.route(state, r, ignored);
        }
        for rule in state.destination_rules() {
            fresh.backend_policy(rule, ignored);
        }
        let (held, fresh) = (&mut self.snapshot, fresh.snapshot);
        let mut changes = Changes::default();
        replace_all(&mut held.workloads, &mut changes.workloads, fresh.workloads);
        replace_all(&mut held.services, &mut changes.services, fresh.services);
        replace_all(
            &mut held.authorizations,
            &mut changes.authorizations,
            fresh.authorizations,
        );
        replace_all(&mut held.routes, &mut changes.routes, fresh.routes);
        replace_all(
            &mut held.backend_policies,
            &mut changes.backend_policies,
            fresh.backend_policies,
        );
        changes
    }

    /// Brings the snapshot from the state before `changes` to `state` (the state after them),
    /// re-translating only what the changes can affect. Returns what differs.
    pub fn update(&mut self, state: &ClusterState, changes: &[model::Change]) -> Changes {
        let dirty = Dirty::of(changes, &self.settings.root_namespace, state);
        let mut out = Changes::default();
        for key in &dirty.objects {
            let (ns, name) = (key.namespace.as_str(), key.name.as_str());
            match (key.kind, state.get(key)) {
                (Kind::Pod, Some(Object::Pod(pod))) => self.workload(state, pod, &mut out),
                (Kind::Pod, _) => {
                    let uid = workload::uid(ns, name, &self.settings);
                    set(&mut self.snapshot.workloads, &mut out.workloads, uid, None);
                }
                (Kind::Service, Some(Object::Service(svc))) => self.service(state, svc, &mut out),
                (Kind::Service, _) => {
                    let key = service::key(ns, name, &self.settings);
                    set(&mut self.snapshot.services, &mut out.services, key, None);
                }
                (Kind::AuthorizationPolicy, Some(Object::AuthorizationPolicy(p))) => {
                    self.authorization(p, &mut out)
                }
                (Kind::AuthorizationPolicy, _) => {
                    let key = authorization::key(ns, name);
                    set(
                        &mut self.snapshot.authorizations,
                        &mut out.authorizations,
                        key,
                        None,
                    );
                }
                (Kind::HttpRoute, Some(Object::HttpRoute(r))) => self.route(state, r, &mut out),
                (Kind::HttpRoute, _) => {
                    let key = route::key(ns, name);
                    set(&mut self.snapshot.routes, &mut out.routes, key, None);
                }
                (Kind::DestinationRule, Some(Object::DestinationRule(d))) => {
                    self.backend_policy(d, &mut out)
                }
                (Kind::DestinationRule, _) => {
                    let key = backend::key(ns, name);
                    set(
                        &mut self.snapshot.backend_policies,
                        &mut out.backend_policies,
                        key,
                        None,
                    );
                }
                _ => {}
            }
        }
        if dirty.all_routes {
            for r in state.http_routes() {
                self.route(state, r, &mut out);
            }
        } else {
            for ns in &dirty.route_namespaces {
                for r in state.http_routes_in(ns) {
                    self.route(state, r, &mut out);
                }
            }
        }
        if dirty.all_pods {
            for pod in state.pods() {
                self.workload(state, pod, &mut out);
            }
        } else {
            for ns in &dirty.pod_namespaces {
                for pod in state.pods_in(ns) {
                    self.workload(state, pod, &mut out);
                }
            }
        }
        if dirty.all_services {
            for svc in state.services() {
                self.service(state, svc, &mut out);
            }
        } else {
            for ns in &dirty.service_namespaces {
                for svc in state.services_in(ns) {
                    self.service(state, svc, &mut out);
                }
            }
        }
        out
    }

    fn workload(&mut self, state: &ClusterState, pod: &Pod, out: &mut Changes) {
        let meta = &pod.metadata;
        let uid = workload::uid(model::namespace(meta), model::name(meta), &self.settings);
        let translated = workload::translate(pod, state, &self.settings);
        set(
            &mut self.snapshot.workloads,
            &mut out.workloads,
            uid,
            translated.map(Arc::new),
        );
    }

    fn service(&mut self, state: &ClusterState, svc: &Service, out: &mut Changes) {
        let meta = &svc.metadata;
        let key = service::key(model::namespace(meta), model::name(meta), &self.settings);
        let translated = service::translate(svc, state, &self.settings);
        set(
            &mut self.snapshot.services,
            &mut out.services,
            key,
            translated.map(Arc::new),
        );
    }

    fn authorization(&mut self, policy: &model::AuthorizationPolicy, out: &mut Changes) {
        let meta = &policy.metadata;
        let key = authorization::key(model::namespace(meta), model::name(meta));
        let translated = skip_invalid(
            "AuthorizationPolicy",
            &key,
            authorization::translate(policy, &self.settings),
        );
        set(
            &mut self.snapshot.authorizations,
            &mut out.authorizations,
            key,
            translated,
        );
    }
}

impl Translator {
    fn route(&mut self, state: &ClusterState, r: &model::HttpRoute, out: &mut Changes) {
        let meta = &r.metadata;
        let key = route::key(model::namespace(meta), model::name(meta));
        let translated = skip_invalid(
            "HTTPRoute",
            &key,
            route::translate(r, state, &self.settings),
        );
        set(&mut self.snapshot.routes, &mut out.routes, key, translated);
    }

    fn backend_policy(&mut self, rule: &model::DestinationRule, out: &mut Changes) {
        let meta = &rule.metadata;
        let key = backend::key(model::namespace(meta), model::name(meta));
        let translated = skip_invalid(
            "DestinationRule",
            &key,
            backend::translate(rule, &self.settings),
        );
        set(
            &mut self.snapshot.backend_policies,
            &mut out.backend_policies,
            key,
            translated,
        );
    }
}

/// Sources validate on the way in, so an error here is a last line of defence (or a setting
/// validation could not know, such as the cluster domain), not the reporting path.
fn skip_invalid<T>(
    kind: &str,
    key: &str,
    translated: Result<T, super::ValidationError>,
) -> Option<Arc<T>> {
    match translated {
        Ok(t) => Some(Arc::new(t)),
        Err(e) => {
            tracing::warn!(object = %key, "skipping invalid {kind}: {e}");
            None
        }
    }
}

/// Puts `value` (or its absence) under `key`, recording it in `changed` only if it differs from
/// what was held.
fn set<T: PartialEq>(
    held: &mut BTreeMap<String, Arc<T>>,
    changed: &mut BTreeMap<String, Option<Arc<T>>>,
    key: String,
    value: Option<Arc<T>>,
) {
    let same = match (held.get(&key), &value) {
        (Some(old), Some(new)) => old == new,
        (None, None) => true,
        _ => false,
    };
    if same {
        return;
    }
    match &value {
        Some(v) => held.insert(key.clone(), v.clone()),
        None => held.remove(&key),
    };
    changed.insert(key, value);
}

/// Replaces everything `held` holds with `fresh`, recording what differs.
fn replace_all<T: PartialEq>(
    held: &mut BTreeMap<String, Arc<T>>,
    changed: &mut BTreeMap<String, Option<Arc<T>>>,
    fresh: BTreeMap<String, Arc<T>>,
) {
    let stale: Vec<String> = held
        .keys()
        .filter(|k| !fresh.contains_key(*k))
        .cloned()
        .collect();
    for key in stale {
        set(held, changed, key, None);
    }
    for (key, value) in fresh {
        set(held, changed, key, Some(value));
    }
}
