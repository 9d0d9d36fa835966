//! Against a real cluster: objects applied with the API are read by the Kubernetes source,
//! translated, published by the pipeline, and changes reach the published config. Ignored by
//! default; anyone with a cluster (KUBECONFIG, or in-cluster) runs them with
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test -p ambit-controller --test cluster -- --ignored
//! ```
//!
//! Each test works in a namespace of its own (`ambit-test-<random>`), deleted afterwards, pass or
//! fail. The AuthorizationPolicy and Gateway CRDs are installed (schema-less ones) only if the
//! cluster lacks them, and then removed again. The pod runs `registry.k8s.io/pause`, so the nodes
//! must be able to pull it. The waypoint test checks what the reconciler creates and the
//! Gateway's `Accepted` status, not that the waypoint image runs.

mod cluster_common;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::leader::{self, LeaderConfig, LeaderMetrics};
use ambit_controller::model::ClusterState;
use ambit_controller::pipeline;
use ambit_controller::push::Generation;
use ambit_controller::push::resources::Versioned;
use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::{self, ControllerAddress, Reconciler};
use ambit_controller::source::kubernetes::KubernetesSource;
use ambit_controller::translate::Settings;
use ambit_proto::api::{self, type_url};
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use cluster_common::{PATIENCE, until};

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// A custom resource the tests need; installed schema-less if the cluster lacks it.
struct Crd {
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    /// Whether writes to `status` go through the status subresource, as Gateway API's do.
    status: bool,
}

const CRDS: [Crd; 2] = [
    Crd {
        group: "security.istio.io",
        plural: "authorizationpolicies",
        singular: "authorizationpolicy",
        kind: "AuthorizationPolicy",
        status: false,
    },
    Crd {
        group: "gateway.networking.k8s.io",
        plural: "gateways",
        singular: "gateway",
        kind: "Gateway",
        status: true,
    },
];

/// Creates the CRD if the cluster lacks it; its name if it did.
async fn ensure_crd(client: &kube::Client, crd: &Crd) -> Option<String> {
    let name = format!("{}.{}", crd.plural, crd.group);
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt(&name).await.expect("reading CRDs").is_some() {
        return None;
    }
    let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let mut version = json!({"name": "v1", "served": true, "storage": true,
                             "schema": {"openAPIV3Schema": schema}});
    if crd.status {
        version["subresources"] = json!({"status": {}});
    }
    let definition = json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": crd.group, "scope": "Namespaced",
            "names": {"plural": crd.plural, "singular": crd.singular,
                      "kind": crd.kind, "listKind": format!("{}List", crd.kind)},
            "versions": [version],
        },
    });
    crds.create(&PostParams::default(), &from_json(definition))
        .await
        .unwrap_or_else(|e| panic!("creating the CRD {name}: {e}"));
    let established = await_condition(crds, &name, conditions::is_crd_established());
    tokio::time::timeout(PATIENCE, established)
        .await
        .expect("the CRD established in time")
        .expect("watching the CRD");
    Some(name)
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
    let mut created_crds = Vec::new();
    for crd in &CRDS {
        created_crds.extend(ensure_crd(&client, crd).await);
    }
    let outcome = AssertUnwindSafe(test(client.clone(), namespace.clone()))
        .catch_unwind()
        .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in created_crds {
        let _ = crds.delete(&name, &DeleteParams::default()).await;
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

fn gateways(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &reconcile::gateway_resource())
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn a_waypoint_gateway_is_deployed_by_the_leader_and_cleaned_up_with_it() {
    in_test_namespace(|client, ns| async move {
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces
            .create(
                &PostParams::default(),
                &from_json(json!({"metadata": {"name": ns}})),
            )
            .await
            .expect("creating the namespace");

        // Leader election over a Lease in the test namespace, then the reconciler it gates.
        let election = LeaderConfig {
            namespace: ns.clone(),
            lease_name: leader::LEASE_NAME.into(),
            identity: "cluster-test".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        };
        let (leading_tx, mut leading) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let elector = tokio::spawn(leader::run(
            Api::namespaced(client.clone(), &ns),
            election,
            leading_tx,
            LeaderMetrics::default(),
            async move {
                let _ = stopped.await;
            },
        ));
        let settings = WaypointSettings {
            image: "registry.k8s.io/pause:3.9".into(),
            trust_domain: "cluster.local".into(),
            cluster_domain: "cluster.local".into(),
            controller_namespace: "ambit-system".into(),
            token_audience: None,
            root_cert_pem: "not checked here".into(),
        };
        let addr = ControllerAddress::Fixed("127.0.0.1:15012".parse().unwrap());
        tokio::spawn(Reconciler::new(client.clone(), settings, addr).run(leading.clone()));
        tokio::time::timeout(PATIENCE, leading.wait_for(|l| *l))
            .await
            .expect("leading in time")
            .unwrap();

        let gateway = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "wp", "namespace": ns},
            "spec": {"gatewayClassName": "ambit-waypoint",
                     "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        });
        let created = gateways(&client, &ns)
            .create(&PostParams::default(), &from_json(gateway))
            .await
            .expect("creating the Gateway");
        let uid = created.metadata.uid.clone().unwrap();

        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let deployment = until(
            "the Deployment",
            || async { deployments.get_opt("wp").await.ok()? },
            |_| true,
        )
        .await;
        let service = until(
            "the Service",
            || async { services.get_opt("wp").await.ok()? },
            |_| true,
        )
        .await;
        let account = until(
            "the ServiceAccount",
            || async { accounts.get_opt("wp").await.ok()? },
            |_| true,
        )
        .await;
        for owners in [
            deployment.metadata.owner_references.clone(),
            service.metadata.owner_references.clone(),
            account.metadata.owner_references.clone(),
        ] {
            let owner = &owners.expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str()),
                ("Gateway", uid.as_str())
            );
            assert_eq!(owner.controller, Some(true));
        }
        let pod = deployment.spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("wp"));
        let ports = service.spec.unwrap().ports.unwrap();
        assert!(
            ports
                .iter()
                .any(|p| p.port == 15008 && p.name.as_deref() == Some("mesh"))
        );

        let accepted = until(
            "the Gateway accepted",
            || async { gateways(&client, &ns).get_opt("wp").await.ok()? },
            |gw: &DynamicObject| {
                gw.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                })
            },
        )
        .await;
        assert_eq!(
            accepted.data["status"]["addresses"][0]["value"],
            format!("wp.{ns}.svc.cluster.local")
        );

        // Deleted, the Gateway takes its waypoint with it.
        gateways(&client, &ns)
            .delete("wp", &DeleteParams::default())
            .await
            .expect("deleting the Gateway");
        until(
            "the Deployment gone",
            || async { Some(deployments.get_opt("wp").await.ok()?.is_none()) },
            |gone| *gone,
        )
        .await;
        until(
            "the Service gone",
            || async { Some(services.get_opt("wp").await.ok()?.is_none()) },
            |gone| *gone,
        )
        .await;

        // Shutting down releases the Lease.
        let _ = stop.send(());
        elector.await.unwrap();
        let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
        let lease = leases.get(leader::LEASE_NAME).await.expect("the Lease");
        assert_eq!(lease.spec.unwrap().holder_identity.unwrap_or_default(), "");
    })
    .await;
}
