//! `ambit install` and `uninstall`: server-side apply in order, Istio's CRDs left alone, the
//! agents stopped first.

use std::time::Duration;

use ambit_cli::cluster::install::{self, Uninstall};
use serde_json::json;

use crate::server::{Call, echo, not_found, serve};
use crate::{CRD_PATH, istio_crd, rendered};

#[tokio::test]
async fn install_applies_every_object_server_side_in_order() {
    let (client, calls) = serve(|call| match call.method.as_str() {
        "GET" => not_found(call),
        _ => echo(call),
    });
    let out = install::install(client, &rendered()).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    let patches: Vec<&Call> = calls.iter().filter(|c| c.method == "PATCH").collect();
    let paths: Vec<&str> = patches.iter().map(|c| c.path()).collect();
    assert_eq!(
        paths,
        [
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/authorizationpolicies.security.istio.io",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/peerauthentications.security.istio.io",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/destinationrules.networking.istio.io",
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/httpfaults.ambit.dev",
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ambit-waypoint",
            "/api/v1/namespaces/ambit-system",
            "/api/v1/namespaces/ambit-system/serviceaccounts/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/roles/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/rolebindings/ambit-controller",
            "/api/v1/namespaces/ambit-system/services/ambit-controller",
            "/apis/apps/v1/namespaces/ambit-system/deployments/ambit-controller",
            "/apis/policy/v1/namespaces/ambit-system/poddisruptionbudgets/ambit-controller",
            "/api/v1/namespaces/ambit-system/serviceaccounts/ambit-ztunnel",
            "/apis/apps/v1/namespaces/ambit-system/daemonsets/ambit-ztunnel",
        ]
    );
    for patch in &patches {
        assert_eq!(
            patch.content_type, "application/apply-patch+yaml",
            "{}",
            patch.uri
        );
        assert_eq!(patch.query("fieldManager").as_deref(), Some("ambit"));
        assert_eq!(patch.query("force").as_deref(), Some("true"));
        assert_eq!(patch.query("fieldValidation").as_deref(), Some("Strict"));
    }
    // What is applied is the rendered object itself.
    assert_eq!(patches[12].body, rendered()[12]);
    // Each CRD is looked up before it is applied.
    let gets = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path().starts_with(CRD_PATH));
    assert_eq!(gets.count(), 4);
    assert_eq!(out.lines().count(), 16, "{out}");
    assert!(
        out.contains("daemonset.apps/ambit-ztunnel serverside-applied"),
        "{out}"
    );
}

/// Without the Gateway API CRDs there is no GatewayClass kind: it is skipped, saying why, and
/// everything else is installed.
#[tokio::test]
async fn install_without_gateway_api_skips_the_gateway_class_and_says_so() {
    let (client, calls) = serve(|call| match call.method.as_str() {
        "GET" => not_found(call),
        "PATCH" if call.path().contains("/gatewayclasses/") => not_found(call),
        _ => echo(call),
    });
    let out = install::install(client, &rendered()).await.unwrap();
    assert!(
        out.contains("gatewayclass.gateway.networking.k8s.io/ambit-waypoint skipped: the Gateway API CRDs are not installed"),
        "{out}"
    );
    assert!(
        out.contains("daemonset.apps/ambit-ztunnel serverside-applied"),
        "{out}"
    );
    let patches = calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c.method == "PATCH")
        .count();
    assert_eq!(patches, rendered().len());
}

#[tokio::test]
async fn install_leaves_an_existing_istio_crd_alone() {
    let ap = format!("{CRD_PATH}/authorizationpolicies.security.istio.io");
    let pa = format!("{CRD_PATH}/peerauthentications.security.istio.io");
    let ours = format!("{CRD_PATH}/httpfaults.ambit.dev");
    let (client, calls) = serve({
        let (ap, pa, ours) = (ap.clone(), pa.clone(), ours.clone());
        move |call| match call.method.as_str() {
            "GET" if call.path() == ap => (
                200,
                istio_crd(
                    "authorizationpolicies.security.istio.io",
                    &["v1", "v1beta1"],
                ),
            ),
            // An old Istio: no v1 yet.
            "GET" if call.path() == pa => (
                200,
                istio_crd("peerauthentications.security.istio.io", &["v1beta1"]),
            ),
            // Installed by an earlier `ambit install`: applied again (upgrade).
            "GET" if call.path() == ours => {
                let mut crd = istio_crd("httpfaults.ambit.dev", &["v1alpha1"]);
                crd["metadata"]["labels"] = json!({"app.kubernetes.io/part-of": "ambit"});
                (200, crd)
            }
            "GET" => not_found(call),
            _ => echo(call),
        }
    });
    let out = install::install(client, &rendered()).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls
            .iter()
            .any(|c| c.is("PATCH", &ap) || c.is("PATCH", &pa))
    );
    assert!(calls.iter().any(|c| c.is("PATCH", &ours)));
    assert!(
        out.contains(
            "customresourcedefinition.apiextensions.k8s.io/authorizationpolicies.security.istio.io \
         exists and is not Ambit's (app.kubernetes.io/part-of=istio): left as it is"
        ),
        "{out}"
    );
    assert!(
        out.contains("does not serve v1, the version Ambit reads"),
        "{out}"
    );
    assert_eq!(out.matches("warning").count(), 1, "{out}");
}

#[tokio::test]
async fn uninstall_stops_the_agents_first_and_waits_for_them() {
    let daemonset = "/apis/apps/v1/namespaces/ambit-system/daemonsets/ambit-ztunnel";
    let mut polls = 0;
    let (client, calls) = serve(move |call| match call.method.as_str() {
        // The agents take two polls to drain and remove their rules.
        "GET" if call.path() == daemonset && polls < 2 => {
            polls += 1;
            (
                200,
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                         "metadata": {"name": "ambit-ztunnel", "namespace": "ambit-system"}}),
            )
        }
        "GET" => not_found(call),
        _ => echo(call),
    });
    let options = Uninstall {
        crds: false,
        wait: Duration::from_secs(10),
        poll: Duration::from_millis(5),
    };
    let out = install::uninstall(client, &rendered(), &options)
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    let first = &calls[0];
    assert!(first.is("DELETE", daemonset), "{first:?}");
    assert_eq!(first.body["propagationPolicy"], "Foreground");
    // Nothing else is deleted until the DaemonSet is gone.
    let gets: Vec<usize> = (0..calls.len())
        .filter(|&i| calls[i].is("GET", daemonset))
        .collect();
    assert_eq!(gets, [1, 2, 3]);
    let deletes: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| c.path())
        .collect();
    assert_eq!(
        deletes,
        [
            daemonset,
            "/api/v1/namespaces/ambit-system/serviceaccounts/ambit-ztunnel",
            "/apis/policy/v1/namespaces/ambit-system/poddisruptionbudgets/ambit-controller",
            "/apis/apps/v1/namespaces/ambit-system/deployments/ambit-controller",
            "/api/v1/namespaces/ambit-system/services/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/rolebindings/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/ambit-system/roles/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/ambit-controller",
            "/apis/rbac.authorization.k8s.io/v1/clusterroles/ambit-controller",
            "/api/v1/namespaces/ambit-system/serviceaccounts/ambit-controller",
            "/api/v1/namespaces/ambit-system",
            // The waypoints' class goes too; Gateways of it stay (the user's objects).
            "/apis/gateway.networking.k8s.io/v1/gatewayclasses/ambit-waypoint",
        ]
    );
    assert!(out.contains("CRDs kept"), "{out}");
}

#[tokio::test]
async fn uninstall_with_crds_deletes_only_ambits_own() {
    let ap = format!("{CRD_PATH}/authorizationpolicies.security.istio.io");
    let (client, calls) = serve({
        let ap = ap.clone();
        move |call| match call.method.as_str() {
            "GET" if call.path() == ap => (
                200,
                istio_crd("authorizationpolicies.security.istio.io", &["v1"]),
            ),
            "GET" if call.path().starts_with(CRD_PATH) => {
                let name = call.path().rsplit('/').next().unwrap();
                let mut crd = istio_crd(name, &["v1"]);
                crd["metadata"]["labels"] = json!({"app.kubernetes.io/part-of": "ambit"});
                (200, crd)
            }
            "GET" => not_found(call),
            _ => echo(call),
        }
    });
    let options = Uninstall {
        crds: true,
        wait: Duration::from_secs(10),
        poll: Duration::from_millis(5),
    };
    let out = install::uninstall(client, &rendered(), &options)
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    let deleted: Vec<&str> = calls
        .iter()
        .filter(|c| c.method == "DELETE" && c.path().starts_with(CRD_PATH))
        .map(|c| c.path().rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        deleted,
        [
            "httpfaults.ambit.dev",
            "destinationrules.networking.istio.io",
            "peerauthentications.security.istio.io"
        ]
    );
    assert!(
        out.contains("authorizationpolicies.security.istio.io is not Ambit's: kept"),
        "{out}"
    );
}

#[tokio::test]
async fn uninstall_gives_up_on_agents_that_never_stop() {
    let (client, _) = serve(|call| match call.method.as_str() {
        "GET" => (
            200,
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
                              "metadata": {"name": "ambit-ztunnel"}}),
        ),
        _ => echo(call),
    });
    let options = Uninstall {
        crds: false,
        wait: Duration::from_millis(30),
        poll: Duration::from_millis(5),
    };
    let err = install::uninstall(client, &rendered(), &options)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("daemonset.apps/ambit-ztunnel: still there"),
        "{err}"
    );
}
