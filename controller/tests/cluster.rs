//! Against a real cluster: objects applied with the API are read by the Kubernetes source,
//! translated, published by the pipeline, and changes reach the published config. Ignored by
//! default; anyone with a cluster (KUBECONFIG, or in-cluster) runs them with
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test -p ambit-controller --test cluster -- --ignored
//! ```
//!
//! Each test works in a namespace of its own (`ambit-test-<random>`), deleted afterwards, pass or
//! fail. The AuthorizationPolicy CRD is installed (a schema-less one) only if the cluster lacks
//! it, and then removed again. The pod runs `registry.k8s.io/pause`, so the nodes must be able to
//! pull it.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::model::ClusterState;
use ambit_controller::pipeline;
use ambit_controller::push::Generation;
use ambit_controller::push::resources::Versioned;
use ambit_controller::source::kubernetes::KubernetesSource;
use ambit_controller::translate::Settings;
use ambit_proto::api::{self, type_url};
use futures::FutureExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

/// Generous: the first pod on a node may wait for an image pull.
const PATIENCE: Duration = Duration::from_secs(180);
const POLICY_CRD: &str = "authorizationpolicies.security.istio.io";

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// Creates the AuthorizationPolicy CRD if the cluster lacks it; true if it did.
async fn ensure_policy_crd(client: &kube::Client) -> bool {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds
        .get_opt(POLICY_CRD)
        .await
        .expect("reading CRDs")
        .is_some()
    {
        return false;
    }
    let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let crd = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": POLICY_CRD},
        "spec": {
            "group": "security.istio.io", "scope": "Namespaced",
            "names": {"plural": "authorizationpolicies", "singular": "authorizationpolicy",
                      "kind": "AuthorizationPolicy", "listKind": "AuthorizationPolicyList"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                          "schema": {"openAPIV3Schema": schema}}],
        },
    });
    crds.create(&PostParams::default(), &from_json(crd))
        .await
        .expect("creating the AuthorizationPolicy CRD");
    let established = await_condition(crds, POLICY_CRD, conditions::is_crd_established());
    tokio::time::timeout(PATIENCE, established)
        .await
        .expect("the CRD established in time")
        .expect("watching the CRD");
    true
}

/// Runs `test` in a fresh namespace and deletes what it made afterwards, even if it panicked.
async fn in_test_namespace<F, Fut>(test: F)
where
    F: FnOnce(kube::Client, String) -> Fut,
    Fut: Future<Output = ()>,
{
    let client = kube::Client::try_default()
        .await
        .expect("a client from KUBECONFIG or the in-cluster config");
    let namespace = format!("ambit-test-{:08x}", rand::random::<u32>());
    let created_crd = ensure_policy_crd(&client).await;
    let outcome = AssertUnwindSafe(test(client.clone(), namespace.clone()))
        .catch_unwind()
        .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
    if created_crd {
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        let _ = crds.delete(POLICY_CRD, &DeleteParams::default()).await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The namespace (ambient), an echo pod, its service and a policy selecting it.
async fn apply_mesh(client: &kube::Client, ns: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace = json!({"metadata": {"name": ns,
        "labels": {"istio.io/dataplane-mode": "ambient"}}});
    namespaces
        .create(&PostParams::default(), &from_json(namespace))
        .await
        .expect("creating the namespace");
    // A pod is refused until the namespace's default ServiceAccount exists.
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account = await_condition(accounts, "default", |sa: Option<&ServiceAccount>| {
        sa.is_some()
    });
    tokio::time::timeout(PATIENCE, account)
        .await
        .expect("the default ServiceAccount in time")
        .expect("watching ServiceAccounts");
    let pod = json!({
        "metadata": {"name": "echo", "labels": {"app": "echo"}},
        "spec": {"containers": [{"name": "echo", "image": "registry.k8s.io/pause:3.9",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    });
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(&PostParams::default(), &from_json(pod))
        .await
        .expect("creating the pod");
    let service = json!({
        "metadata": {"name": "echo"},
        "spec": {"selector": {"app": "echo"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    });
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services
        .create(&PostParams::default(), &from_json(service))
        .await
        .expect("creating the service");
    let policy = json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-echo", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "echo"}},
                 "rules": [{"from": [{"source": {"namespaces": [ns]}}],
                            "to": [{"operation": {"ports": ["8080"]}}]}]},
    });
    policies(client, ns)
        .create(&PostParams::default(), &from_json(policy))
        .await
        .expect("creating the AuthorizationPolicy");
}

fn policies(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let resource = ApiResource {
        group: "security.istio.io".into(),
        version: "v1".into(),
        api_version: "security.istio.io/v1".into(),
        kind: "AuthorizationPolicy".into(),
        plural: "authorizationpolicies".into(),
    };
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// The source and the pipeline over the cluster; the published generations.
fn run_controller(client: kube::Client) -> watch::Receiver<Arc<Generation>> {
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, ready) = watch::channel(false);
    let (generations_tx, generations) = watch::channel(Arc::new(Generation::empty()));
    tokio::spawn(KubernetesSource::new(client).run(states_tx, ready_tx));
    tokio::spawn(pipeline::run(
        states,
        ready,
        Settings::default(),
        generations_tx,
    ));
    generations
}

fn resource<'a>(g: &'a Generation, type_url: &str, name: &str) -> Option<&'a Versioned> {
    g.resources(type_url)?.get(name).map(|r| &**r)
}

fn workload<'a>(g: &'a Generation, ns: &str) -> Option<&'a api::Workload> {
    resource(g, type_url::WORKLOAD, &format!("Kubernetes//Pod/{ns}/echo"))?.workload()
}

async fn published(
    generations: &mut watch::Receiver<Arc<Generation>>,
    what: &str,
    done: impl FnMut(&Arc<Generation>) -> bool,
) {
    tokio::time::timeout(PATIENCE, generations.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("never published: {what}"))
        .expect("the pipeline stopped");
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn an_ambient_namespace_pod_service_and_policy_are_translated_and_changes_follow() {
    in_test_namespace(|client, ns| async move {
        apply_mesh(&client, &ns).await;
        let mut generations = run_controller(client.clone());

        // Once the pod is scheduled and has an address, everything is there, and linked.
        let svc_key = format!("{ns}/echo.{ns}.svc.cluster.local");
        let policy_key = format!("{ns}/allow-echo");
        published(
            &mut generations,
            "the pod, its service and its policy",
            |g| {
                workload(g, &ns).is_some_and(|w| !w.addresses.is_empty())
                    && resource(g, type_url::SERVICE, &svc_key).is_some()
                    && resource(g, type_url::AUTHORIZATION, &policy_key).is_some()
            },
        )
        .await;
        let g = generations.borrow().clone();
        let echo = workload(&g, &ns).unwrap();
        assert!(echo.node_captured, "the namespace is ambient");
        assert!(!echo.node.is_empty());
        let ports: BTreeMap<u32, u32> = echo.services[&svc_key]
            .ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect();
        assert_eq!(
            ports,
            [(80, 8080)].into(),
            "targetPort http resolved on the pod"
        );
        assert_eq!(
            echo.authorization_policies,
            std::slice::from_ref(&policy_key)
        );
        let service = resource(&g, type_url::SERVICE, &svc_key)
            .and_then(Versioned::service)
            .unwrap();
        assert!(!service.addresses.is_empty(), "a cluster IP");
        let policy = resource(&g, type_url::AUTHORIZATION, &policy_key)
            .and_then(Versioned::authorization)
            .unwrap();
        assert_eq!(policy.scope, api::Scope::WorkloadSelector as i32);
        assert_eq!(policy.rules[0].to[0].ports, [8080]);

        // Taking the namespace out of ambient mode releases the pod from capture.
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let unlabel = json!({"metadata": {"labels": {"istio.io/dataplane-mode": null}}});
        namespaces
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&unlabel))
            .await
            .expect("relabelling the namespace");
        published(&mut generations, "the pod no longer captured", |g| {
            workload(g, &ns).is_some_and(|w| !w.node_captured)
        })
        .await;

        // Deleting the policy removes it and unlinks it from the pod.
        policies(&client, &ns)
            .delete("allow-echo", &DeleteParams::default())
            .await
            .expect("deleting the policy");
        published(&mut generations, "the policy gone", |g| {
            resource(g, type_url::AUTHORIZATION, &policy_key).is_none()
                && workload(g, &ns).is_some_and(|w| w.authorization_policies.is_empty())
        })
        .await;
    })
    .await;
}
