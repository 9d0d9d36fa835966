//! Against the cluster of KUBECONFIG, `#[ignore]`d: any cluster with Gateway API CRDs v1.2+
//! (kind, k3d, a cloud one): `cargo test -p ambit-cli --test kubernetes -- --ignored`.

use std::time::Duration;

use ambit_cli::cluster::install::{self, Uninstall};
use ambit_cli::cluster::waypoint::{self, For};
use serde_json::json;

use crate::rendered;

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
        waypoint::apply(
            client.clone(),
            test_ns,
            "waypoint",
            For::Service,
            None,
            true
        )
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

/// Against the cluster of KUBECONFIG with Ambit installed and its agents running (`ambit
/// install`, images pullable): `ztunnel-config` reads every agent through a port-forward, and
/// `explain` sees a DENY policy applied in a throwaway namespace (pods run
/// `registry.k8s.io/pause`). Deletes what it made.
#[tokio::test]
#[ignore = "needs a Kubernetes cluster (KUBECONFIG) with Ambit installed and running"]
async fn real_cluster_ztunnel_config_and_explain() {
    use ambit_cli::cluster::{agents, mesh};
    use ambit_cli::cmd::explain::{Placement, Request};
    use ambit_cli::cmd::ztunnel_config::{self, Section};
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::PatchParams;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch};

    let client = ambit_cli::cluster::client()
        .await
        .expect("a cluster in KUBECONFIG");
    let dumps = agents::dumps(&client, Section::Certificates, None)
        .await
        .expect("every agent's config dump through a port-forward");
    assert!(!dumps.is_empty());
    println!(
        "{}",
        ztunnel_config::output(Section::Certificates, dumps, false).unwrap()
    );

    let ns = "ambit-explain-e2e";
    let apply = PatchParams::apply("ambit-e2e").force();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
        "labels": {"istio.io/dataplane-mode": "ambient"}}});
    namespaces
        .patch(ns, &apply, &Patch::Apply(&namespace))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for (name, app) in [("client", "client"), ("server", "echo")] {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]}});
        pods.patch(name, &apply, &Patch::Apply(&pod)).await.unwrap();
    }
    let gvk = GroupVersionKind::gvk("security.istio.io", "v1", "AuthorizationPolicy");
    let policies: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk, "authorizationpolicies"),
    );
    let policy = json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "deny-client", "namespace": ns}, "spec": {
        "selector": {"matchLabels": {"app": "echo"}}, "action": "DENY",
        "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/{ns}/sa/default")]}}]}]}});
    policies
        .patch("deny-client", &apply, &Patch::Apply(&policy))
        .await
        .unwrap();
    // Until both pods have an address.
    let mut explained = String::new();
    for _ in 0..120 {
        let (objects, view) = mesh::load(&client).await.unwrap();
        let placement = Placement::from_cluster(&objects);
        let request = Request::default();
        if let Ok(out) = ambit_cli::cmd::explain(
            &placement,
            &view,
            &format!("{ns}/client"),
            &format!("{ns}/server:80"),
            &request,
        ) {
            explained = out;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .unwrap();
    println!("{explained}");
    assert!(
        explained.contains(&format!("denied by DENY policy {ns}/deny-client (rule 1)")),
        "{explained}"
    );
}
