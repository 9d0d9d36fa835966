//! `ambit install`, `uninstall`, `waypoint` and `check --kubernetes` against a scripted API
//! server: the exact requests they make. The `#[ignore]`d test at the end runs the same commands
//! against the cluster of KUBECONFIG (see the README's "Kubernetes" section).

#[path = "kubernetes/server.rs"]
mod server;

use std::time::Duration;

use ambit_cli::cluster::install::{self, Uninstall};
use ambit_cli::cluster::render::{self, Values};
use ambit_cli::cluster::waypoint::{self, For};
use serde_json::{Value, json};
use server::{Call, echo, not_found, serve};

const CRD_PATH: &str = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";

fn rendered() -> Vec<Value> {
    render::render(&Values::default()).unwrap()
}

/// An existing CRD, labelled as Istio's Helm chart labels its own.
fn istio_crd(name: &str, versions: &[&str]) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "istio"}},
        "spec": {"group": "security.istio.io", "scope": "Namespaced",
                 "names": {"kind": "AuthorizationPolicy", "plural": "authorizationpolicies"},
                 "versions": versions.iter().map(|v| json!({"name": v, "served": true,
                     "storage": *v == "v1"})).collect::<Vec<_>>()},
    })
}

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
    assert_eq!(patches[11].body, rendered()[11]);
    // Each CRD is looked up before it is applied.
    let gets = calls
        .iter()
        .filter(|c| c.method == "GET" && c.path().starts_with(CRD_PATH));
    assert_eq!(gets.count(), 4);
    assert_eq!(out.lines().count(), 15, "{out}");
    assert!(
        out.contains("daemonset.apps/ambit-ztunnel serverside-applied"),
        "{out}"
    );
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

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

#[tokio::test]
async fn waypoint_apply_creates_the_gateway_and_enrolls_the_namespace() {
    let (client, calls) = serve(|call| match call.path() {
        "/api/v1/namespaces/demo" => (
            200,
            namespace("demo", json!({"istio.io/use-waypoint": "waypoint"})),
        ),
        _ => echo(call),
    });
    let out = waypoint::apply(client, "demo", "waypoint", For::Workload, true)
        .await
        .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let gateway = &calls[0];
    assert!(gateway.is(
        "PATCH",
        "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint"
    ));
    assert_eq!(gateway.content_type, "application/apply-patch+yaml");
    assert_eq!(gateway.query("fieldManager").as_deref(), Some("ambit"));
    assert_eq!(
        gateway.body,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "demo",
                         "labels": {"istio.io/waypoint-for": "workload"}},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        })
    );
    let label = &calls[1];
    assert!(label.is("PATCH", "/api/v1/namespaces/demo"));
    assert_eq!(label.content_type, "application/merge-patch+json");
    assert_eq!(
        label.body,
        json!({"metadata": {"labels": {"istio.io/use-waypoint": "waypoint"}}})
    );
    assert!(
        out.contains("namespace demo labeled with \"istio.io/use-waypoint=waypoint\""),
        "{out}"
    );
}

#[tokio::test]
async fn waypoint_apply_without_gateway_api_says_what_to_install() {
    let (client, _) = serve(|_| {
        (
            404,
            json!({"kind": "Status", "code": 404, "status": "Failure",
                                             "reason": "NotFound", "message": "the server could not find the requested resource"}),
        )
    });
    let err = waypoint::apply(client, "demo", "waypoint", For::Service, false)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Gateway API CRDs are not installed: install v1.2 or later"),
        "{err}"
    );
}

#[tokio::test]
async fn waypoint_delete_unenrolls_the_namespace_it_served() {
    let (client, calls) = serve(|call| match (call.method.as_str(), call.path()) {
        (_, "/api/v1/namespaces/demo") => (
            200,
            namespace("demo", json!({"istio.io/use-waypoint": "waypoint"})),
        ),
        _ => echo(call),
    });
    let out = waypoint::delete(client, "demo", "waypoint").await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert!(calls[0].is(
        "DELETE",
        "/apis/gateway.networking.k8s.io/v1/namespaces/demo/gateways/waypoint"
    ));
    let patch = calls
        .iter()
        .find(|c| c.method == "PATCH")
        .expect("a label patch");
    assert_eq!(
        patch.body,
        json!({"metadata": {"labels": {"istio.io/use-waypoint": null}}})
    );
    assert!(out.contains("label istio.io/use-waypoint removed"), "{out}");

    // Enrolled in another waypoint: left alone.
    let (client, calls) = serve(|call| match (call.method.as_str(), call.path()) {
        (_, "/api/v1/namespaces/demo") => (
            200,
            namespace("demo", json!({"istio.io/use-waypoint": "other"})),
        ),
        _ => echo(call),
    });
    waypoint::delete(client, "demo", "waypoint").await.unwrap();
    assert!(!calls.lock().unwrap().iter().any(|c| c.method == "PATCH"));
}

#[tokio::test]
async fn waypoint_list_shows_only_waypoint_classes() {
    let gateway = |ns: &str, name: &str, class: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": name, "namespace": ns, "labels": {"istio.io/waypoint-for": "all"}},
            "spec": {"gatewayClassName": class},
            "status": {"conditions": [{"type": "Programmed", "status": "True"}]},
        })
    };
    let items = vec![
        gateway("demo", "waypoint", "ambit-waypoint"),
        gateway("demo", "ingress", "nginx"),
        gateway("shop", "istio-wp", "istio-waypoint"),
    ];
    let (client, calls) = serve(move |_| {
        (
            200,
            json!({"apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayList", "metadata": {}, "items": items}),
        )
    });
    let out = waypoint::list(client, None).await.unwrap();
    assert!(calls.lock().unwrap()[0].is("GET", "/apis/gateway.networking.k8s.io/v1/gateways"));
    assert_eq!(
        out,
        "NAMESPACE   NAME       FOR   CLASS            PROGRAMMED\n\
         demo        waypoint   all   ambit-waypoint   True\n\
         shop        istio-wp   all   istio-waypoint   True\n"
    );
}

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
            "FAIL   CRD gateways.gateway.networking.k8s.io serves v1",
            "FAIL   CRD httproutes.gateway.networking.k8s.io serves v1 (Gateway API v1.1, standard channel)",
            "ok     CRD authorizationpolicies.security.istio.io serves v1",
            "ok     CRD peerauthentications.security.istio.io serves v1",
            "ok     CRD destinationrules.networking.istio.io serves v1",
            "ok     CRD httpfaults.ambit.dev serves v1alpha1",
            "ok     controller (ambit-system/ambit-controller): 2/2 ready",
            "FAIL   node agents (ambit-system/ambit-ztunnel): ready on 1 of 2 node(s)",
        ],
        "{report}"
    );
    assert!(report.contains("standard-install.yaml"), "{report}");
    assert!(report.contains("fix: Gateway API before v1.2"), "{report}");
}

/// Against the cluster of KUBECONFIG (any cluster with Gateway API CRDs v1.2+; images need not
/// be pullable, the test checks objects, not pods):
/// `cargo test -p ambit-cli --test kubernetes -- --ignored`.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG)"]
async fn real_cluster_install_enroll_waypoint_uninstall() {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    };

    let client = ambit_cli::cluster::client()
        .await
        .expect("a cluster in KUBECONFIG");
    let objects = rendered();
    println!(
        "{}",
        install::install(client.clone(), &objects).await.unwrap()
    );

    let test_ns = "ambit-e2e";
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": test_ns, "labels": {"istio.io/dataplane-mode": "ambient"}}});
    let apply = PatchParams::apply("ambit-e2e").force();
    namespaces
        .patch(test_ns, &apply, &Patch::Apply(&ns))
        .await
        .unwrap();

    // The policy CRD may take a moment to be established after install.
    let gvk = GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy");
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        test_ns,
        &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"),
    );
    let policy = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-all", "namespace": test_ns}, "spec": {"action": "DENY",
        "rules": [{"from": [{"source": {"notNamespaces": [test_ns]}}]}]}});
    let mut tries = 0;
    while let Err(e) = policies
        .patch("deny-all", &apply, &Patch::Apply(&policy))
        .await
    {
        tries += 1;
        assert!(tries < 30, "applying an AuthorizationPolicy: {e}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!(
        "{}",
        waypoint::apply(client.clone(), test_ns, "waypoint", For::Service, true)
            .await
            .unwrap()
    );
    let labels = namespaces
        .get(test_ns)
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    assert_eq!(labels["istio.io/use-waypoint"], "waypoint");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "ambit-system");
    assert!(
        deployments
            .get_opt("ambit-controller")
            .await
            .unwrap()
            .is_some()
    );
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "ambit-system");
    assert!(daemonsets.get_opt("ambit-ztunnel").await.unwrap().is_some());

    println!(
        "{}",
        waypoint::delete(client.clone(), test_ns, "waypoint")
            .await
            .unwrap()
    );
    namespaces
        .delete(test_ns, &DeleteParams::default())
        .await
        .unwrap();
    let options = Uninstall {
        crds: false,
        wait: Duration::from_secs(120),
        poll: Duration::from_secs(1),
    };
    println!(
        "{}",
        install::uninstall(client.clone(), &objects, &options)
            .await
            .unwrap()
    );
    assert!(daemonsets.get_opt("ambit-ztunnel").await.unwrap().is_none());
}
