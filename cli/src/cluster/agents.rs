//! `ambit ztunnel-config` on a cluster: which agent pod runs on which node (the pods of the
//! `ambit-ztunnel` DaemonSet of `deploy/base`), and each one's `/config_dump`.
//!
//! An agent's admin server listens on localhost:15000 of its node (host network), which no
//! client outside the node reaches, and should not: it can change the log level. The kubelet
//! does, so the dump is read through a pod port-forward on the API server, authorized like
//! `kubectl port-forward` (the caller needs `create` on `pods/portforward` in `ambit-system`).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{ClusterError, NAMESPACE};
use crate::cmd::ztunnel_config::Section;

/// The label `deploy/base` puts on the agent DaemonSet's pods.
pub const AGENT_SELECTOR: &str = "app=ambit-ztunnel";
/// The agent's admin port (`--admin-addr`, default 127.0.0.1:15000).
pub const ADMIN_PORT: u16 = 15000;
/// Bound on one dump read over an open stream, so a wedged agent fails instead of hanging.
const FETCH_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on a whole dump: the port-forward's setup, then the read.
const DUMP_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("HTTP over the port-forward")]
    Http(#[from] hyper::Error),
    #[error("building the request")]
    Request(#[from] http::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One agent pod and the node it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPod {
    pub node: String,
    pub pod: String,
}

/// The running agent pods, by node name; only `node`'s when given.
pub async fn agent_pods(
    client: &kube::Client,
    node: Option<&str>,
) -> Result<Vec<AgentPod>, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut params = ListParams::default().labels(AGENT_SELECTOR);
    if let Some(node) = node {
        params = params.fields(&format!("spec.nodeName={node}"));
    }
    let list = pods
        .list(&params)
        .await
        .map_err(|e| ClusterError::api("listing the agent pods", e))?;
    let mut agents: Vec<AgentPod> = list
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| {
            Some(AgentPod {
                node: p.spec?.node_name?,
                pod: p.metadata.name?,
            })
        })
        .collect();
    agents.sort_by(|a, b| a.node.cmp(&b.node));
    if agents.is_empty() {
        let on = node.map(|n| format!(" on node {n}")).unwrap_or_default();
        return Err(ClusterError::Agent {
            what: format!("no running agent{on} ({NAMESPACE} pods -l {AGENT_SELECTOR})"),
            reason: "`ambit check --kubernetes` says why".into(),
        });
    }
    Ok(agents)
}

/// The agents' whole dumps for `ztunnel-config`, by node name: `node`'s, else the first agent's
/// or every agent's (see [`Section::same_on_every_agent`]).
pub async fn dumps(
    client: &kube::Client,
    section: Section,
    node: Option<&str>,
) -> Result<Vec<(String, Value)>, ClusterError> {
    let mut agents = agent_pods(client, node).await?;
    if node.is_none() && section.same_on_every_agent() {
        agents.truncate(1);
    }
    let mut dumps = Vec::new();
    for agent in &agents {
        dumps.push((agent.node.clone(), config_dump(client, agent).await?));
    }
    Ok(dumps)
}

/// The agent's whole config dump, through a port-forward to its admin port.
pub async fn config_dump(client: &kube::Client, agent: &AgentPod) -> Result<Value, ClusterError> {
    let what = format!(
        "the agent on {} (pod {NAMESPACE}/{})",
        agent.node, agent.pod
    );
    // Bounded as a whole: a port-forward the API server accepts but never completes must fail.
    tokio::time::timeout(DUMP_TIMEOUT, forwarded_dump(client, agent, &what))
        .await
        .unwrap_or_else(|_| {
            Err(ClusterError::Agent {
                what: what.clone(),
                reason: format!("no config dump within {DUMP_TIMEOUT:?}"),
            })
        })
}

async fn forwarded_dump(
    client: &kube::Client,
    agent: &AgentPod,
    what: &str,
) -> Result<Value, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut forward = pods
        .portforward(&agent.pod, &[ADMIN_PORT])
        .await
        .map_err(|e| ClusterError::api(format!("port-forward to {what}"), e))?;
    let stream = forward.take_stream(ADMIN_PORT).expect("the port asked for");
    let refused = forward.take_error(ADMIN_PORT).expect("the port asked for");
    // The kubelet reports a port it cannot reach on the error channel, then closes the stream:
    // a failed read is explained by that report when there is one.
    let failed = |reason: String| ClusterError::Agent {
        what: what.to_owned(),
        reason,
    };
    let refusal = |message: String| failed(format!("port-forward to {ADMIN_PORT}: {message}"));
    let mut refused = std::pin::pin!(refused);
    let mut dumped = std::pin::pin!(fetch(stream, "/config_dump"));
    // None until the error channel resolves; Some(None) once it closed without a report.
    let mut report: Option<Option<String>> = None;
    let fetched = loop {
        tokio::select! {
            biased;
            message = &mut refused, if report.is_none() => match message {
                Some(message) => break Err(refusal(message)),
                None => report = Some(None),
            },
            answer = &mut dumped => match answer {
                Ok(answer) => break Ok(answer),
                Err(e) => {
                    if report.is_none()
                        && let Ok(Some(message)) =
                            tokio::time::timeout(Duration::from_secs(1), &mut refused).await
                    {
                        break Err(refusal(message));
                    }
                    break Err(failed(format!(
                        "reading its config dump: {}",
                        crate::error_chain(&e)
                    )));
                }
            },
        }
    };
    forward.abort();
    let (status, body) = fetched?;
    if status != 200 {
        return Err(failed(format!("it answered {status}: {body}")));
    }
    serde_json::from_str(&body).map_err(|e| failed(format!("its config dump is not JSON: {e}")))
}

/// `GET <path>` over `stream` (any byte stream to an HTTP/1.1 server, such as a port-forward):
/// the status and body. The body is read by its length, not to the end of the stream: a
/// port-forward does not always pass on the server's close.
pub async fn fetch<S>(stream: S, path: &str) -> Result<(u16, String), FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let connection = tokio::spawn(connection);
        let request = http::Request::get(path)
            .header(http::header::HOST, format!("localhost:{ADMIN_PORT}"))
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        connection.abort();
        Ok::<_, FetchError>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| FetchError::Timeout(FETCH_TIMEOUT))?
}
