//! `ambit check --kubernetes`: CRDs, the controller and the agents, each with its fix.

use serde_json::json;

use crate::server::{not_found, serve};
use crate::{CRD_PATH, istio_crd};

#[tokio::test]
async fn check_reports_crds_controller_and_agents() {
    let (client, _) = serve(|call| match call.path() {
        "/version" => (
            200,
            json!({"major": "1", "minor": "31", "gitVersion": "v1.31.2",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": ""}),
        ),
        p if p.ends_with("/gateways.gateway.networking.k8s.io") => not_found(call),
        // An old Gateway API bundle.
        p if p.ends_with("/httproutes.gateway.networking.k8s.io") => {
            let mut crd = istio_crd("httproutes.gateway.networking.k8s.io", &["v1"]);
            crd["metadata"]["annotations"] = json!({
                "gateway.networking.k8s.io/bundle-version": "v1.1.0",
                "gateway.networking.k8s.io/channel": "standard"});
            (200, crd)
        }
        p if p.starts_with(CRD_PATH) => {
            let name = p.rsplit('/').next().unwrap();
            let version = if name.ends_with("ambit.dev") {
                "v1alpha1"
            } else {
                "v1"
            };
            (200, istio_crd(name, &[version]))
        }
        "/apis/apps/v1/namespaces/ambit-system/deployments/ambit-controller" => (
            200,
            json!({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ambit-controller"},
            "spec": {"replicas": 2, "selector": {}, "template": {}}, "status": {"readyReplicas": 2}}),
        ),
        "/apis/apps/v1/namespaces/ambit-system/daemonsets/ambit-ztunnel" => (
            200,
            json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "ambit-ztunnel"},
            "spec": {"selector": {}, "template": {}},
            "status": {"numberReady": 1, "desiredNumberScheduled": 2, "currentNumberScheduled": 2,
                       "numberMisscheduled": 0}}),
        ),
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ambit-waypoint" => (
            200,
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "ambit-waypoint"},
            "spec": {"controllerName": "ambit.dev/waypoint-controller"},
            "status": {"conditions": [{"type": "Accepted", "status": "False", "reason": "Pending"}]}}),
        ),
        "/api/v1/nodes" => (
            200,
            json!({"apiVersion": "v1", "kind": "NodeList", "metadata": {},
            "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}),
        ),
        _ => not_found(call),
    });
    let checks = ambit_cli::cluster::check::run(client).await.unwrap();
    let (report, ok) = ambit_cli::cmd::check::report_with(&checks, "all good");
    assert!(!ok);
    let lines: Vec<&str> = report
        .lines()
        .filter(|l| l.starts_with("ok") || l.starts_with("FAIL"))
        .collect();
    assert_eq!(
        lines,
        [
            "ok     API server v1.31.2 reachable",
            "ok     CRD gatewayclasses.gateway.networking.k8s.io serves v1",
            "FAIL   CRD gateways.gateway.networking.k8s.io serves v1",
            "FAIL   CRD httproutes.gateway.networking.k8s.io serves v1 (Gateway API v1.1, standard channel)",
            "ok     CRD authorizationpolicies.security.istio.io serves v1",
            "ok     CRD peerauthentications.security.istio.io serves v1",
            "ok     CRD destinationrules.networking.istio.io serves v1",
            "ok     CRD httpfaults.ambit.dev serves v1alpha1",
            "ok     controller (ambit-system/ambit-controller): 2/2 ready",
            "FAIL   GatewayClass ambit-waypoint (ambit.dev/waypoint-controller): not accepted yet",
            "FAIL   node agents (ambit-system/ambit-ztunnel): ready on 1 of 2 node(s)",
        ],
        "{report}"
    );
    assert!(report.contains("standard-install.yaml"), "{report}");
    assert!(report.contains("fix: Gateway API before v1.2"), "{report}");
    assert!(
        report.contains("logs deployment/ambit-controller"),
        "{report}"
    );
}
