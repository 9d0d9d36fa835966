//! A scripted API server for the cluster commands: it plays the transport of a real
//! `kube::Client` (tower-test), records every request (method, path with query, content type,
//! body) and answers each with whatever the test's function returns; [`serve_forwarding`] also
//! serves pod port-forwards (`portforward.rs`).

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

use crate::portforward::{Backend, upgrade};

#[derive(Debug, Clone)]
pub struct Call {
    pub method: String,
    /// Path and query, as sent.
    pub uri: String,
    pub content_type: String,
    pub body: Value,
}

impl Call {
    pub fn path(&self) -> &str {
        self.uri.split('?').next().unwrap()
    }

    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| v.to_string())
        })
    }

    pub fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path() == path
    }
}

pub type Calls = Arc<Mutex<Vec<Call>>>;

/// A client whose requests `answer` serves (status, JSON body); and the log of those requests.
pub fn serve<F>(answer: F) -> (kube::Client, Calls)
where
    F: FnMut(&Call) -> (u16, Value) + Send + 'static,
{
    serve_with(answer, None)
}

/// As [`serve`], and a pod port-forward is upgraded, its port reaching `backend`.
pub fn serve_forwarding<F>(answer: F, backend: Backend) -> (kube::Client, Calls)
where
    F: FnMut(&Call) -> (u16, Value) + Send + 'static,
{
    serve_with(answer, Some(backend))
}

fn serve_with<F>(mut answer: F, backend: Option<Backend>) -> (kube::Client, Calls)
where
    F: FnMut(&Call) -> (u16, Value) + Send + 'static,
{
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls: Calls = Arc::default();
    let log = calls.clone();
    tokio::spawn(async move {
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let call = Call {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            if let Some(backend) = backend
                .clone()
                .filter(|_| call.path().ends_with("/portforward"))
            {
                let port = call
                    .query("ports")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                log.lock().unwrap().push(call);
                tokio::spawn(async move {
                    respond.send_response(upgrade(parts, port, backend).await);
                });
                continue;
            }
            let (status, reply) = answer(&call);
            log.lock().unwrap().push(call);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(reply.to_string().into_bytes()))
                .unwrap();
            respond.send_response(response);
        }
    });
    (kube::Client::new(service, "default"), calls)
}

/// The API server's answer for a missing object.
pub fn not_found(call: &Call) -> (u16, Value) {
    let name = call.path().rsplit('/').next().unwrap();
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404,
               "reason": "NotFound", "message": format!("{name} not found"),
               "details": {"name": name}}),
    )
}

/// Answers a PATCH or DELETE with the object it names (what a real server does, roughly).
pub fn echo(call: &Call) -> (u16, Value) {
    let name = call.path().rsplit('/').next().unwrap();
    let mut body = call.body.clone();
    if !body.is_object() || body.get("kind").is_none() {
        body = json!({"apiVersion": "v1", "kind": "Status", "status": "Success",
                      "metadata": {"name": name}});
    }
    (200, body)
}
