//! A small in-memory Kubernetes API server for the tests of what the controller *writes* (the
//! waypoint reconciler, leader election). Unlike `k8s_common`'s scripted replies it keeps
//! objects: it creates (POST), replaces (PUT, with resourceVersion conflicts), patches (server-side
//! apply and merge patches, approximated as a JSON merge, including the `status` subresource),
//! deletes, lists with equality label selectors, and answers watches with the changes after the
//! watch's resourceVersion (held open until there is one). A real `kube::Client` talks to it
//! through `tower_test::mock::pair`. Tests change objects as users or other controllers would
//! (`put`, `update`, `delete`), inject failures (`fail`) and read every request made (`requests`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::watch;
use tower_test::mock::{self, SendResponse};

pub const PATIENCE: Duration = Duration::from_secs(10);

pub const GATEWAYS: &str = "/apis/gateway.networking.k8s.io/v1/gateways";
pub const GATEWAY_CLASSES: &str = "/apis/gateway.networking.k8s.io/v1/gatewayclasses";
pub const HTTP_ROUTES: &str = "/apis/gateway.networking.k8s.io/v1/httproutes";
pub const DEPLOYMENTS: &str = "/apis/apps/v1/deployments";
pub const SERVICES: &str = "/api/v1/services";
pub const SERVICE_ACCOUNTS: &str = "/api/v1/serviceaccounts";
pub const CONFIG_MAPS: &str = "/api/v1/configmaps";
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    collection: String,
    namespace: String,
    name: String,
}

struct Parked {
    collection: String,
    namespace: Option<String>,
    selector: Vec<(String, String)>,
    since: u64,
    respond: SendResponse<Response<Body>>,
}

struct Fault {
    method: Method,
    path: String,
    status: u16,
    remaining: usize,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    events: Vec<(u64, Key, &'static str, Value)>,
    parked: Vec<Parked>,
    requests: Vec<Logged>,
    faults: Vec<Fault>,
}

#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    /// Bumped on every request and change, for `wait_for`.
    ticks: watch::Sender<u64>,
}

/// Where a request points: a collection (`/apis/apps/v1/deployments`), maybe a namespace, an
/// object and a subresource.
struct Target {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn target(path: &str) -> Option<Target> {
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("/api/v1".to_string(), rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (format!("/apis/{group}/{version}"), rest)
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, segs) = if segs.first() == Some(&"namespaces") && segs.len() >= 3 {
        (Some(segs[1].to_string()), &segs[2..])
    } else {
        (None, &segs[..])
    };
    Some(Target {
        collection: format!("{prefix}/{}", segs.first()?),
        namespace,
        name: segs.get(1).map(|s| s.to_string()),
        subresource: segs.get(2).map(|s| s.to_string()),
    })
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| {
            value
                .replace("%3D", "=")
                .replace("%2F", "/")
                .replace("%2C", ",")
        })
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn reply(respond: SendResponse<Response<Body>>, code: u16, body: &Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(Body::from(body.to_string().into_bytes()))
        .unwrap();
    respond.send_response(response);
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn matches(object: &Value, selector: &[(String, String)]) -> bool {
    selector
        .iter()
        .all(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

impl Inner {
    fn change(&mut self, key: Key, kind: &'static str, mut object: Value) -> Value {
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if kind == "DELETED" {
            self.objects.remove(&key);
        } else {
            self.objects.insert(key.clone(), object.clone());
        }
        self.events.push((self.rv, key, kind, object.clone()));
        self.flush();
        object
    }

    fn create(&mut self, key: Key, mut object: Value) -> Value {
        let meta = &mut object["metadata"];
        meta["uid"] = json!(format!("uid-{}-{}", key.name, self.rv + 1));
        meta["generation"] = json!(1);
        meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        if !key.namespace.is_empty() {
            meta["namespace"] = json!(key.namespace);
        }
        self.change(key, "ADDED", object)
    }

    /// Replaces `key` with `new`, keeping what the server owns; the generation moves with spec.
    /// A write that changes nothing is no change, as on a real API server (no new
    /// resourceVersion, no watch event): otherwise every apply would trigger another reconcile.
    fn replace(&mut self, key: Key, mut new: Value) -> Value {
        let old = self.objects[&key].clone();
        for field in ["uid", "creationTimestamp", "namespace", "generation"] {
            new["metadata"][field] = old["metadata"][field].clone();
        }
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return old;
        }
        let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
        new["metadata"]["generation"] = json!(generation + i64::from(old["spec"] != new["spec"]));
        self.change(key, "MODIFIED", new)
    }

    /// Answers parked watches that have events now.
    fn flush(&mut self) {
        let parked = std::mem::take(&mut self.parked);
        for watch in parked {
            let events: Vec<String> = self
                .events
                .iter()
                .filter(|(rv, key, _, object)| {
                    *rv > watch.since
                        && key.collection == watch.collection
                        && watch.namespace.as_ref().is_none_or(|n| *n == key.namespace)
                        && matches(object, &watch.selector)
                })
                .map(|(_, _, kind, object)| json!({"type": kind, "object": object}).to_string())
                .collect();
            if events.is_empty() {
                self.parked.push(watch);
                continue;
            }
            let body = events.join("\n") + "\n";
            let response = Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(Body::from(body.into_bytes()))
                .unwrap();
            watch.respond.send_response(response);
        }
    }

    fn fault(&mut self, method: &Method, path: &str) -> Option<u16> {
        let fault = self
            .faults
            .iter_mut()
            .find(|f| f.method == *method && path.contains(&f.path) && f.remaining > 0)?;
        fault.remaining -= 1;
        Some(fault.status)
    }
}

impl FakeApi {
    /// The server task and a client whose every request it answers.
    pub fn start() -> (FakeApi, kube::Client) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (ticks, _) = watch::channel(0);
        let fake = FakeApi {
            inner: Arc::new(Mutex::new(Inner::default())),
            ticks,
        };
        let server = fake.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let logged = Logged {
                    method: parts.method.clone(),
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or("").to_string(),
                    content_type: parts
                        .headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string(),
                    body,
                };
                server.serve(logged, respond);
                server.ticks.send_modify(|t| *t += 1);
            }
        });
        let client = kube::Client::new(service, "default");
        (fake, client)
    }

    fn serve(&self, request: Logged, respond: SendResponse<Response<Body>>) {
        let mut inner = self.inner.lock().unwrap();
        inner.requests.push(request.clone());
        if let Some(code) = inner.fault(&request.method, &request.path) {
            return reply(
                respond,
                code,
                &status(code, "InternalError", "injected failure"),
            );
        }
        let Some(t) = target(&request.path) else {
            return reply(respond, 404, &status(404, "NotFound", "no such path"));
        };
        let name = t
            .name
            .clone()
            .or_else(|| request.body["metadata"]["name"].as_str().map(String::from));
        let key = Key {
            collection: t.collection.clone(),
            namespace: t.namespace.clone().unwrap_or_default(),
            name: name.unwrap_or_default(),
        };
        let exists = inner.objects.get(&key).cloned();
        let not_found = || status(404, "NotFound", &format!("{} not found", key.name));
        match (request.method.clone(), t.name.is_some()) {
            (Method::GET, true) => match exists {
                Some(o) => reply(respond, 200, &o),
                None => reply(respond, 404, &not_found()),
            },
            (Method::GET, false) => {
                let selector: Vec<(String, String)> = query_param(&request.query, "labelSelector")
                    .map(|s| {
                        s.split(',')
                            .filter_map(|p| p.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    })
                    .unwrap_or_default();
                if query_param(&request.query, "watch").as_deref() == Some("true") {
                    let since = query_param(&request.query, "resourceVersion")
                        .and_then(|rv| rv.parse().ok())
                        .unwrap_or(0);
                    inner.parked.push(Parked {
                        collection: t.collection,
                        namespace: t.namespace,
                        selector,
                        since,
                        respond,
                    });
                    inner.flush();
                    return;
                }
                let items: Vec<Value> = inner
                    .objects
                    .iter()
                    .filter(|(k, o)| {
                        k.collection == t.collection
                            && t.namespace.as_ref().is_none_or(|n| *n == k.namespace)
                            && matches(o, &selector)
                    })
                    .map(|(_, o)| o.clone())
                    .collect();
                let list = json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": inner.rv.to_string()}, "items": items});
                reply(respond, 200, &list)
            }
            (Method::POST, _) => {
                if exists.is_some() {
                    return reply(respond, 409, &status(409, "AlreadyExists", "exists"));
                }
                let created = inner.create(key, request.body);
                reply(respond, 201, &created)
            }
            (Method::PUT, true) => {
                let Some(old) = exists else {
                    return reply(respond, 404, &not_found());
                };
                let sent = &request.body["metadata"]["resourceVersion"];
                if !sent.is_null() && *sent != old["metadata"]["resourceVersion"] {
                    return reply(respond, 409, &status(409, "Conflict", "the object changed"));
                }
                let replaced = inner.replace(key, request.body);
                reply(respond, 200, &replaced)
            }
            (Method::PATCH, true) => {
                let apply = request.content_type.contains("apply-patch");
                let (mut object, patch) = match (exists, t.subresource.as_deref()) {
                    (Some(o), Some("status")) => (o, json!({"status": request.body["status"]})),
                    (Some(o), _) => (o, request.body),
                    (None, None) if apply => {
                        let created = inner.create(key, request.body);
                        return reply(respond, 201, &created);
                    }
                    (None, _) => return reply(respond, 404, &not_found()),
                };
                merge(&mut object, &patch);
                let patched = inner.replace(key, object);
                reply(respond, 200, &patched)
            }
            (Method::DELETE, true) => match exists {
                Some(o) => {
                    let deleted = inner.change(key, "DELETED", o);
                    reply(respond, 200, &deleted)
                }
                None => reply(respond, 404, &not_found()),
            },
            _ => reply(
                respond,
                405,
                &status(405, "MethodNotAllowed", "not supported"),
            ),
        }
    }

    // ----- the test's side: what users and other controllers do -----

    /// Creates or replaces `object` in `collection` (its namespace from its metadata).
    pub fn put(&self, collection: &str, object: Value) -> Value {
        let key = Key {
            collection: collection.into(),
            namespace: object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("")
                .into(),
            name: object["metadata"]["name"].as_str().unwrap().into(),
        };
        let mut inner = self.inner.lock().unwrap();
        let out = if inner.objects.contains_key(&key) {
            inner.replace(key, object)
        } else {
            inner.create(key, object)
        };
        drop(inner);
        self.ticks.send_modify(|t| *t += 1);
        out
    }

    /// Changes an object in place (e.g. a Deployment's status, as its controller would).
    pub fn update(
        &self,
        collection: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) {
        let mut object = self
            .get(collection, namespace, name)
            .expect("the object exists");
        f(&mut object);
        self.put(collection, object);
    }

    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        let key = Key {
            collection: collection.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        let mut inner = self.inner.lock().unwrap();
        let object = inner.objects.get(&key).cloned().expect("the object exists");
        inner.change(key, "DELETED", object);
        drop(inner);
        self.ticks.send_modify(|t| *t += 1);
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = Key {
            collection: collection.into(),
            namespace: namespace.into(),
            name: name.into(),
        };
        self.inner.lock().unwrap().objects.get(&key).cloned()
    }

    /// The next `times` requests of `method` to a path containing `path` fail with `status`.
    pub fn fail(&self, method: Method, path: &str, status: u16, times: usize) {
        self.inner.lock().unwrap().faults.push(Fault {
            method,
            path: path.into(),
            status,
            remaining: times,
        });
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The writes (anything but GET) so far.
    pub fn writes(&self) -> Vec<Logged> {
        let mut writes = self.requests();
        writes.retain(|r| r.method != Method::GET);
        writes
    }

    /// Waits until `done` holds for the server.
    pub async fn wait_for(&self, what: &str, mut done: impl FnMut(&FakeApi) -> bool) {
        let mut ticks = self.ticks.subscribe();
        let wait = async {
            loop {
                if done(self) {
                    return;
                }
                // Also poll: a condition may depend on time passing, not only on requests.
                let _ = tokio::time::timeout(Duration::from_millis(50), ticks.changed()).await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }
}
