//! `ambit ztunnel-config` on a cluster: the agent pods found by the DaemonSet's label (and
//! node), each one's `/config_dump` read through a pod port-forward to its admin port, and the
//! same tables as the lab's.

use std::sync::Arc;

use ambit_cli::cluster::agents::{self, AgentPod};
use ambit_cli::cmd::ztunnel_config::{self, Section};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::io::DuplexStream;

use crate::server::{serve, serve_forwarding};

/// An agent's dump, shaped as `ambit-ztunnel`'s admin server writes it.
fn dump(node: &str) -> Value {
    json!({
        "node": node, "ready": true, "not_ready_because": null, "config": {},
        "workloads": [{"uid": "Kubernetes//Pod/demo/client", "name": "client", "namespace": "demo",
            "node": "node-a", "addresses": ["10.244.1.2"],
            "identity": "spiffe://cluster.local/ns/demo/sa/client", "captured": true,
            "protocol": "HBONE", "local": node == "node-a", "waypoint": null, "services": [],
            "mtls_mode": "PERMISSIVE", "healthy": true}],
        "services": [],
        "policies": [{"name": "deny-client", "namespace": "demo", "scope": "WORKLOAD",
            "action": "DENY", "rules": 1}],
        "certificates": [{"identity": format!("spiffe://cluster.local/ns/demo/sa/on-{node}"),
            "state": "valid", "not_after": 0, "expires_in_seconds": 7260}],
        "open_connections": 0,
    })
}

/// The agent's admin server on `stream`: a real HTTP/1.1 server that keeps the connection open
/// after answering, as a keep-alive server does (the fetch must not wait for the close).
fn admin_server(stream: DuplexStream, body: String) {
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: http::Request<_>| {
            let (status, body) = match req.uri().path() {
                "/config_dump" => (200, body.clone()),
                _ => (404, "not found".to_owned()),
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(status)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap(),
                )
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

#[tokio::test]
async fn the_dump_is_read_by_its_length_over_any_stream() {
    let (ours, theirs) = tokio::io::duplex(4096);
    let body = dump("node-a").to_string();
    admin_server(theirs, body.clone());
    let (status, got) = agents::fetch(ours, "/config_dump").await.unwrap();
    assert_eq!((status, got), (200, body));

    let (ours, theirs) = tokio::io::duplex(4096);
    admin_server(theirs, String::new());
    let (status, _) = agents::fetch(ours, "/nothing").await.unwrap();
    assert_eq!(status, 404);
}

fn agent_pod(name: &str, node: &str, phase: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "ambit-system",
                        "labels": {"app": "ambit-ztunnel"}},
           "spec": {"nodeName": node, "containers": []}, "status": {"phase": phase}})
}

fn pod_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

#[tokio::test]
async fn agents_are_found_by_the_daemonsets_label_and_node() {
    let (client, calls) = serve(|_| {
        (
            200,
            pod_list(vec![
                agent_pod("ambit-ztunnel-b", "node-b", "Running"),
                agent_pod("ambit-ztunnel-a", "node-a", "Running"),
                agent_pod("ambit-ztunnel-c", "node-c", "Pending"),
            ]),
        )
    });
    let found = agents::agent_pods(&client, None).await.unwrap();
    // Running ones only, by node name.
    assert_eq!(
        found,
        [
            AgentPod {
                node: "node-a".into(),
                pod: "ambit-ztunnel-a".into()
            },
            AgentPod {
                node: "node-b".into(),
                pod: "ambit-ztunnel-b".into()
            },
        ]
    );
    agents::agent_pods(&client, Some("node-b")).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    let uris: Vec<&str> = calls.iter().map(|c| c.uri.as_str()).collect();
    assert_eq!(
        uris,
        [
            "/api/v1/namespaces/ambit-system/pods?&labelSelector=app%3Dambit-ztunnel",
            "/api/v1/namespaces/ambit-system/pods?&fieldSelector=spec.nodeName%3Dnode-b&labelSelector=app%3Dambit-ztunnel",
        ]
    );

    let (client, _) = serve(|_| (200, pod_list(vec![])));
    let err = agents::agent_pods(&client, Some("node-x"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no running agent on node node-x"),
        "{err}"
    );
}

/// A cluster of two agents whose port-forwards reach each one's admin server.
fn cluster() -> (kube::Client, crate::server::Calls) {
    let pods = pod_list(vec![
        agent_pod("ambit-ztunnel-a", "node-a", "Running"),
        agent_pod("ambit-ztunnel-b", "node-b", "Running"),
    ]);
    serve_forwarding(
        move |_| (200, pods.clone()),
        Arc::new(|path, stream| {
            // .../pods/ambit-ztunnel-a/portforward: the agent on node-a.
            let node = if path.contains("ambit-ztunnel-a") {
                "node-a"
            } else {
                "node-b"
            };
            admin_server(stream, dump(node).to_string());
            Ok(())
        }),
    )
}

#[tokio::test]
async fn ztunnel_config_reads_each_agent_through_a_port_forward() {
    let (client, calls) = cluster();
    let dumps = agents::dumps(&client, Section::Certificates, None)
        .await
        .unwrap();
    let out = ztunnel_config::output(Section::Certificates, dumps, false).unwrap();
    assert_eq!(
        out,
        "AGENT    IDENTITY                                      STATE   EXPIRES IN\n\
         node-a   spiffe://cluster.local/ns/demo/sa/on-node-a   valid   2h1m\n\
         node-b   spiffe://cluster.local/ns/demo/sa/on-node-b   valid   2h1m\n"
    );
    let calls = calls.lock().unwrap().clone();
    let requests: Vec<String> = calls
        .iter()
        .map(|c| format!("{} {}", c.method, c.uri))
        .collect();
    assert_eq!(
        requests,
        [
            "GET /api/v1/namespaces/ambit-system/pods?&labelSelector=app%3Dambit-ztunnel",
            "GET /api/v1/namespaces/ambit-system/pods/ambit-ztunnel-a/portforward?&ports=15000",
            "GET /api/v1/namespaces/ambit-system/pods/ambit-ztunnel-b/portforward?&ports=15000",
        ]
    );
}

#[tokio::test]
async fn workloads_come_from_one_agent_and_json_is_the_raw_section() {
    let (client, calls) = cluster();
    let dumps = agents::dumps(&client, Section::Workloads, None)
        .await
        .unwrap();
    let out = ztunnel_config::output(Section::Workloads, dumps.clone(), false).unwrap();
    assert!(
        out.starts_with("NAMESPACE   NAME     ADDRESS      NODE     CAPTURED"),
        "{out}"
    );
    assert!(
        out.contains("demo        client   10.244.1.2   node-a   yes"),
        "{out}"
    );
    let json: Value =
        serde_json::from_str(&ztunnel_config::output(Section::Workloads, dumps, true).unwrap())
            .unwrap();
    assert_eq!(json, json!({"node-a": dump("node-a")["workloads"]}));
    // One port-forward only.
    let forwards = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.path().ends_with("/portforward"))
        .count();
    assert_eq!(forwards, 1);
}

#[tokio::test]
async fn an_agent_the_kubelet_cannot_reach_is_named_with_the_kubelets_reason() {
    let pods = pod_list(vec![agent_pod("ambit-ztunnel-a", "node-a", "Running")]);
    let (client, _) = serve_forwarding(
        move |_| (200, pods.clone()),
        Arc::new(|_, _| {
            Err("error forwarding port 15000 to pod 1f2e: connection refused".to_owned())
        }),
    );
    let err = agents::dumps(&client, Section::Policies, None)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the agent on node-a (pod ambit-system/ambit-ztunnel-a): port-forward to 15000: error \
         forwarding port 15000 to pod 1f2e: connection refused"
    );
}
