//! A scripted Kubernetes API server for tests (kube-rs's `tower-test` approach). It is the only
//! fake: it plays the API server for a real `kube::Client` and answers any path. GETs get scripted
//! replies in order, then empty lists; watch requests are handed to the test, which answers them
//! with events or leaves them open (a quiet watch); POSTs (creates) go to a handler per path, such
//! as the TokenReview script the authentication tests share (`review_tokens`).
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response, StatusCode, Uri};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tower_test::mock::{self, SendResponse};

/// A hang guard, not a timing assumption: every wait below normally ends in milliseconds (or
/// about a second when the watcher backs off before a re-list).
pub const PATIENCE: Duration = Duration::from_secs(10);

// ----- the scripted API server -----

pub enum ListReply {
    Now(StatusCode, Value),
    /// Held until the test sends the reply: a list that is still in flight.
    Later(oneshot::Receiver<Value>),
}

/// A watch request the test answers.
pub struct WatchRequest {
    uri: Uri,
    respond: SendResponse<Response<Body>>,
}

impl WatchRequest {
    pub fn param(&self, name: &str) -> Option<String> {
        query_param(&self.uri, name)
    }

    /// Sends `events` as the watch body, which then ends (the watcher resumes from the last
    /// event's resourceVersion with a new watch request).
    pub fn events(self, events: &[Value]) {
        let body: String = events.iter().map(|e| format!("{e}\n")).collect();
        self.respond.send_response(response(StatusCode::OK, body));
    }
}

pub type WatchQueue = (
    mpsc::UnboundedSender<WatchRequest>,
    Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<WatchRequest>>>,
);

/// Answers a create (POST) with a status and a body, given the posted object.
pub type CreateHandler = Arc<dyn Fn(Value) -> (StatusCode, Value) + Send + Sync>;

#[derive(Default)]
pub struct Script {
    lists: Mutex<HashMap<String, VecDeque<ListReply>>>,
    watches: Mutex<HashMap<String, WatchQueue>>,
    creates: Mutex<HashMap<String, CreateHandler>>,
}

impl Script {
    pub fn watch_queue(&self, path: &str) -> WatchQueue {
        let mut watches = self.watches.lock().unwrap();
        let (tx, rx) = watches.entry(path.to_string()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Arc::new(tokio::sync::Mutex::new(rx)))
        });
        (tx.clone(), rx.clone())
    }
}

pub struct ApiServer {
    script: Arc<Script>,
    /// Every request's URI, in arrival order.
    log: watch::Receiver<Vec<Uri>>,
}

impl ApiServer {
    /// The server task and a client whose every request it answers.
    pub fn start() -> (ApiServer, kube::Client) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let script = Arc::new(Script::default());
        let (log_tx, log) = watch::channel(Vec::new());
        let served = script.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let uri = request.uri().clone();
                log_tx.send_modify(|log| log.push(uri.clone()));
                let path = uri.path().to_string();
                if request.method() == Method::POST {
                    let handler = served.creates.lock().unwrap().get(&path).cloned();
                    let body = request.into_body().collect_bytes().await.unwrap();
                    let posted = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let (status, reply) = match handler {
                        Some(handler) => handler(posted),
                        None => (StatusCode::NOT_FOUND, not_found(&path)),
                    };
                    respond.send_response(json_response(status, &reply));
                    continue;
                }
                if query_param(&uri, "watch").as_deref() == Some("true") {
                    // The queue holds the request, so an unanswered watch stays open.
                    let _ = served
                        .watch_queue(&path)
                        .0
                        .send(WatchRequest { uri, respond });
                    continue;
                }
                let scripted = served
                    .lists
                    .lock()
                    .unwrap()
                    .get_mut(&path)
                    .and_then(VecDeque::pop_front);
                match scripted {
                    None => respond.send_response(json_response(StatusCode::OK, &list("1", []))),
                    Some(ListReply::Now(status, body)) => {
                        respond.send_response(json_response(status, &body))
                    }
                    Some(ListReply::Later(reply)) => {
                        tokio::spawn(async move {
                            if let Ok(body) = reply.await {
                                respond.send_response(json_response(StatusCode::OK, &body));
                            }
                        });
                    }
                }
            }
        });
        let client = kube::Client::new(service, "default");
        (ApiServer { script, log }, client)
    }

    /// Answers every create (POST) on `path` with `handler`.
    pub fn on_create(
        &self,
        path: &str,
        handler: impl Fn(Value) -> (StatusCode, Value) + Send + Sync + 'static,
    ) {
        let mut creates = self.script.creates.lock().unwrap();
        creates.insert(path.to_string(), Arc::new(handler));
    }

    /// Scripts the next reply to a GET of `path` (a list, or a single object).
    pub fn reply_to_list(&self, path: &str, reply: ListReply) {
        let mut lists = self.script.lists.lock().unwrap();
        lists.entry(path.to_string()).or_default().push_back(reply);
    }

    pub fn list(&self, path: &str, body: Value) {
        self.reply_to_list(path, ListReply::Now(StatusCode::OK, body));
    }

    /// The next watch request on `path`, in arrival order.
    pub async fn next_watch(&self, path: &str) -> WatchRequest {
        let (_, queue) = self.script.watch_queue(path);
        let mut queue = queue.lock().await;
        tokio::time::timeout(PATIENCE, queue.recv())
            .await
            .unwrap_or_else(|_| panic!("no watch request on {path}"))
            .expect("the scripted server stopped")
    }

    pub fn lists_of(&self, path: &str) -> usize {
        self.log
            .borrow()
            .iter()
            .filter(|u| is_list_of(u, path))
            .count()
    }

    /// Waits until the request log satisfies `done`.
    pub async fn wait_for_requests(&self, what: &str, done: impl FnMut(&Vec<Uri>) -> bool) {
        wait(&mut self.log.clone(), what, done).await;
    }
}

pub fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_string())
    })
}

pub fn is_list_of(uri: &Uri, path: &str) -> bool {
    uri.path() == path && query_param(uri, "watch").is_none()
}

pub fn is_watch_of(uri: &Uri, path: &str) -> bool {
    uri.path() == path && query_param(uri, "watch").as_deref() == Some("true")
}

pub fn response(status: StatusCode, body: String) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(body.into_bytes()))
        .unwrap()
}

pub fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    response(status, body.to_string())
}

// ----- Kubernetes objects, as the API server sends them -----

pub fn list<const N: usize>(resource_version: &str, items: [Value; N]) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": resource_version},
        "items": items.to_vec(),
    })
}

pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

pub fn gone() -> Value {
    event(
        "ERROR",
        json!({
            "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
            "message": "too old resource version: 10 (15)", "reason": "Expired", "code": 410,
        }),
    )
}

pub fn not_found(plural: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "the server could not find the requested resource", "reason": "NotFound",
        "details": {"kind": plural}, "code": 404,
    })
}

pub fn meta(namespace: Option<&str>, name: &str, resource_version: &str) -> Value {
    let mut meta = json!({"name": name, "resourceVersion": resource_version});
    if let Some(ns) = namespace {
        meta["namespace"] = json!(ns);
    }
    meta
}

pub fn core(kind: &str, namespace: Option<&str>, name: &str, rv: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": meta(namespace, name, rv)})
}

pub async fn wait<T>(rx: &mut watch::Receiver<T>, what: &str, done: impl FnMut(&T) -> bool) {
    tokio::time::timeout(PATIENCE, rx.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the sender is gone");
}

// ----- TokenReview -----

pub const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// The node agents' ServiceAccount, as a TokenReview names it.
pub const AGENT: &str = "system:serviceaccount:ambit-system:ambit-ztunnel";

/// The pods the callers' tokens are bound to: the node agent's on node-1, waypoint shop/wp's.
pub const CALLER_PODS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: ztunnel-abc, namespace: ambit-system, uid: uid-agent}
spec: {nodeName: node-1, serviceAccountName: ambit-ztunnel, containers: [{name: a, image: x}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: wp-7f9, namespace: shop, uid: uid-wp}
spec: {nodeName: node-2, serviceAccountName: wp, containers: [{name: a, image: x}]}
---
"#;

/// What the API server says about a token: a TokenReview status naming `user`, bound to `pod`
/// (name, uid) when given.
pub fn authenticated(user: &str, pod: Option<(&str, &str)>) -> Value {
    use ambit_controller::auth::token_review::{POD_NAME, POD_UID};
    let mut status = json!({"authenticated": true, "user": {"username": user}});
    if let Some((name, uid)) = pod {
        status["user"]["extra"] = json!({POD_NAME: [name], POD_UID: [uid]});
    }
    status
}

impl ApiServer {
    /// Answers TokenReviews from `tokens` (token -> review status; any other token has expired),
    /// and fails with 500 for the token "api-down". Returns the audiences of every review posted.
    pub fn review_tokens(&self, tokens: &[(&str, Value)]) -> Arc<Mutex<Vec<Value>>> {
        let tokens: HashMap<String, Value> = tokens
            .iter()
            .map(|(t, s)| (t.to_string(), s.clone()))
            .collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let seen = asked.clone();
        self.on_create(REVIEWS, move |review| {
            seen.lock()
                .unwrap()
                .push(review["spec"]["audiences"].clone());
            let token = review["spec"]["token"].as_str().unwrap_or("");
            if token == "api-down" {
                return (StatusCode::INTERNAL_SERVER_ERROR, not_found("tokenreviews"));
            }
            let status = tokens.get(token).cloned().unwrap_or(json!({
                "authenticated": false, "error": "token has expired"
            }));
            let mut answer = review.clone();
            answer["status"] = status;
            (StatusCode::CREATED, answer)
        });
        asked
    }
}
