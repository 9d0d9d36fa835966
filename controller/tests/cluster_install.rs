//! Against a real cluster, as an install runs: Ambit's CRDs, the controller's RBAC and the
//! waypoints' GatewayClass from `deploy/base`, and the controller's components (source,
//! translation, CA Secret, leader election, waypoint reconcile, route and class status) on a
//! client that impersonates the installed ServiceAccount, so every request it makes is
//! authorized by the API server against the shipped RBAC, not the tester's. Then what a user
//! does: label a namespace ambient, apply a workload, an AuthorizationPolicy, a waypoint Gateway
//! and an HTTPRoute; and checks the config the controller serves its agents and waypoints (the
//! published generation its config stream pushes), the waypoint's Deployment and Service, and the
//! Gateway, HTTPRoute and GatewayClass status. Ignored by default; run it with
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test -p ambit-controller --test cluster_install -- --ignored
//! ```
//!
//! Needs: the Gateway API CRDs v1.2+ (upstream's: the test says how to install them if they are
//! missing), permission to impersonate ServiceAccounts and to create CRDs and cluster RBAC
//! (cluster-admin), and nodes that can pull `registry.k8s.io/pause`. The RBAC goes into a
//! namespace of its own (`ambit-it-<random>` stands in for `ambit-system`, its cluster-scoped
//! objects suffixed), so an installed Ambit is not touched; everything the test created is
//! deleted afterwards, pass or fail. (An installed Ambit's controller reconciles the test's
//! Gateway too; the checks hold either way.)

mod cluster_common;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use ambit_controller::ca::secret;
use ambit_controller::leader::{self, LeaderConfig, LeaderMetrics};
use ambit_controller::model::ClusterState;
use ambit_controller::pipeline;
use ambit_controller::push::Generation;
use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::routes::{Mesh, route_resource};
use ambit_controller::reconcile::status::CONTROLLER_NAME;
use ambit_controller::reconcile::{self, ControllerAddress, Reconciler};
use ambit_controller::source::kubernetes::KubernetesSource;
use ambit_controller::translate::Settings;
use ambit_proto::api::type_url;
use futures::FutureExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};
use tokio::sync::watch;

use cluster_common::{PATIENCE, until};

const RBAC: &str = include_str!("../../deploy/base/controller-rbac.yaml");
const CLASS: &str = include_str!("../../deploy/base/gatewayclass.yaml");
const CRDS: [&str; 3] = [
    include_str!("../../deploy/base/crds/security.istio.io.yaml"),
    include_str!("../../deploy/base/crds/networking.istio.io.yaml"),
    include_str!("../../deploy/base/crds/ambit.dev.yaml"),
];
const GATEWAY_API: [&str; 3] = [
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
];
const TEST_MANAGER: &str = "ambit-cluster-test";

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// Where a kind the test writes lives: its resource and whether it is namespaced.
fn resource_of(object: &Value) -> (ApiResource, bool) {
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let (plural, namespaced) = match kind {
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "Namespace" => ("namespaces", false),
        "ServiceAccount" => ("serviceaccounts", true),
        "Service" => ("services", true),
        "Pod" => ("pods", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Role" => ("roles", true),
        "RoleBinding" => ("rolebindings", true),
        "GatewayClass" => ("gatewayclasses", false),
        "Gateway" => ("gateways", true),
        "HTTPRoute" => ("httproutes", true),
        "AuthorizationPolicy" => ("authorizationpolicies", true),
        other => panic!("the test does not write {other}"),
    };
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    (ApiResource::from_gvk_with_plural(&gvk, plural), namespaced)
}

fn api(client: &kube::Client, object: &Value) -> Api<DynamicObject> {
    let (resource, namespaced) = resource_of(object);
    match object["metadata"]["namespace"].as_str() {
        Some(ns) if namespaced => Api::namespaced_with(client.clone(), ns, &resource),
        _ => Api::all_with(client.clone(), &resource),
    }
}

async fn apply(client: &kube::Client, object: &Value) {
    let name = object["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply(TEST_MANAGER).force();
    api(client, object)
        .patch(name, &params, &Patch::Apply(object))
        .await
        .unwrap_or_else(|e| panic!("applying {} {name}: {e}", object["kind"]));
}

async fn exists(client: &kube::Client, object: &Value) -> bool {
    let name = object["metadata"]["name"].as_str().unwrap();
    api(client, object)
        .get_opt(name)
        .await
        .expect("reading")
        .is_some()
}

/// The controller's RBAC with `system` in place of `ambit-system` and its cluster-scoped
/// objects suffixed, so it cannot collide with an installed Ambit.
fn rbac(system: &str) -> Vec<Value> {
    let text = RBAC.replace("ambit-system", system);
    let mut objects = documents(&text);
    for o in &mut objects {
        if matches!(
            o["kind"].as_str(),
            Some("ClusterRole" | "ClusterRoleBinding")
        ) {
            o["metadata"]["name"] = json!(format!("ambit-controller-{system}"));
        }
        if o["kind"] == "ClusterRoleBinding" {
            o["roleRef"]["name"] = json!(format!("ambit-controller-{system}"));
        }
    }
    objects
}

fn has_condition(conditions: &Value, type_: &str, status: &str) -> bool {
    conditions.as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == type_ && c["status"] == status)
    })
}

/// The controller's components as `app.rs` starts them on Kubernetes, on `client`.
async fn run_controller(client: kube::Client, system: &str) -> watch::Receiver<Arc<Generation>> {
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, ready) = watch::channel(false);
    let mesh = Mesh {
        states: states.clone(),
        ready: ready.clone(),
    };
    tokio::spawn(KubernetesSource::new(client.clone()).run(states_tx, ready_tx));
    let (generations_tx, generations) = watch::channel(Arc::new(Generation::empty()));
    tokio::spawn(pipeline::run(
        states,
        ready,
        Settings::default(),
        generations_tx,
    ));
    let ca = secret::load_or_create(
        client.clone(),
        system,
        "cluster.local",
        Duration::from_secs(3600),
    )
    .await
    .expect("the CA root in its Secret, under the controller's RBAC");
    let election = LeaderConfig {
        namespace: system.into(),
        lease_name: leader::LEASE_NAME.into(),
        identity: "cluster-install-test".into(),
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(2),
    };
    let (leading_tx, leading) = watch::channel(false);
    tokio::spawn(leader::run(
        Api::namespaced(client.clone(), system),
        election,
        leading_tx,
        LeaderMetrics::default(),
        futures::future::pending::<()>(),
    ));
    let settings = WaypointSettings {
        image: "registry.k8s.io/pause:3.9".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        controller_namespace: system.into(),
        token_audience: None,
        root_cert_pem: ca.roots().to_pem().concat(),
    };
    let addr = ControllerAddress::Fixed("127.0.0.1:15012".parse().unwrap());
    let reconciler = Reconciler::new(client, settings, addr).with_mesh(mesh);
    tokio::spawn(reconciler.run(leading));
    generations
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn installed_with_the_shipped_rbac_the_controller_serves_a_labeled_namespace_and_its_waypoint()
 {
    let admin = kube::Client::try_default()
        .await
        .expect("a client from KUBECONFIG");
    let crds = Api::<DynamicObject>::all_with(
        admin.clone(),
        &resource_of(&json!({"apiVersion": "apiextensions.k8s.io/v1",
                             "kind": "CustomResourceDefinition"}))
        .0,
    );
    for name in GATEWAY_API {
        assert!(
            crds.get_opt(name).await.expect("reading CRDs").is_some(),
            "CRD {name} missing: install the Gateway API CRDs v1.2+ first, e.g. kubectl apply \
             --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.2.1/standard-install.yaml"
        );
    }
    let system = format!("ambit-it-{:08x}", rand::random::<u32>());
    let app = format!("{system}-app");
    let mut created: Vec<Value> = Vec::new();
    for crd in CRDS.iter().flat_map(|t| documents(t)) {
        if !exists(&admin, &crd).await {
            apply(&admin, &crd).await;
            created.push(crd);
        }
    }
    let class = documents(CLASS).remove(0);
    if !exists(&admin, &class).await {
        apply(&admin, &class).await;
        created.push(class);
    }
    let namespaces = [system.clone(), app.clone()]
        .map(|ns| json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    for ns in &namespaces {
        apply(&admin, ns).await;
    }
    created.extend(namespaces);
    for object in rbac(&system) {
        apply(&admin, &object).await;
        if !object["metadata"]["namespace"].is_string() {
            created.push(object);
        }
    }
    // CRDs take a moment to be served.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let outcome = AssertUnwindSafe(exercise(admin.clone(), system.clone(), app.clone()))
        .catch_unwind()
        .await;
    for object in created.iter().rev() {
        let name = object["metadata"]["name"].as_str().unwrap();
        let _ = api(&admin, object)
            .delete(name, &DeleteParams::default())
            .await;
    }
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn exercise(admin: kube::Client, system: String, app: String) {
    let mut config = kube::Config::infer().await.expect("KUBECONFIG");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{system}:ambit-controller"));
    let controller = kube::Client::try_from(config).expect("an impersonating client");
    let mut generations = run_controller(controller, &system).await;

    // What a user applies.
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": app, "labels": {"istio.io/dataplane-mode": "ambient"}}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": "default", "namespace": app}}),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "echo", "namespace": app, "labels": {"app": "echo"}},
               "spec": {"containers": [{"name": "echo", "image": "registry.k8s.io/pause:3.9",
                                        "ports": [{"name": "http", "containerPort": 8080}]}]}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "echo", "namespace": app},
               "spec": {"selector": {"app": "echo"},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}),
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
               "metadata": {"name": "allow-echo", "namespace": app},
               "spec": {"selector": {"matchLabels": {"app": "echo"}},
                        "rules": [{"from": [{"source": {"namespaces": [app]}}]}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "wp", "namespace": app,
                            "annotations": {"ambit.dev/otlp-endpoint": "http://collector.observability:4318"}},
               "spec": {"gatewayClassName": "ambit-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "echo", "namespace": app},
               "spec": {"parentRefs": [{"name": "wp"}, {"group": "", "kind": "Service", "name": "echo"}],
                        "rules": [{"backendRefs": [{"name": "echo", "port": 80}]},
                                  {"matches": [{"path": {"value": "/v2"}}],
                                   "backendRefs": [{"name": "echo-v2", "port": 80}]}]}}),
    ];
    for object in &objects {
        apply(&admin, object).await;
    }

    // The config the controller serves: the pod captured, its service, its policy.
    let policy = format!("{app}/allow-echo");
    let service = format!("{app}/echo.{app}.svc.cluster.local");
    let pod = format!("Kubernetes//Pod/{app}/echo");
    let served = tokio::time::timeout(
        PATIENCE,
        generations.wait_for(|g| {
            let has =
                |url: &str, name: &str| g.resources(url).is_some_and(|r| r.contains_key(name));
            has(type_url::AUTHORIZATION, &policy)
                && has(type_url::SERVICE, &service)
                && g.resources(type_url::WORKLOAD)
                    .and_then(|r| r.get(pod.as_str()))
                    .and_then(|w| w.workload())
                    .is_some_and(|w| !w.addresses.is_empty())
        }),
    )
    .await
    .expect("the pod, its service and its policy served in time")
    .expect("the pipeline runs")
    .clone();
    let workload = served.resources(type_url::WORKLOAD).unwrap()[pod.as_str()]
        .workload()
        .unwrap()
        .clone();
    assert!(workload.node_captured, "the namespace is ambient");
    assert_eq!(
        workload.authorization_policies,
        std::slice::from_ref(&policy)
    );

    // The waypoint: its Deployment (from the template, tracing on) and Service, owned by the Gateway.
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &app);
    let services: Api<Service> = Api::namespaced(admin.clone(), &app);
    let deployment = until(
        "the waypoint Deployment",
        || async { Some(serde_json::to_value(deployments.get_opt("wp").await.ok()??).unwrap()) },
        |_| true,
    )
    .await;
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array().unwrap().contains(&json!(
            "--otlp-endpoint=http://collector.observability:4318"
        )),
        "{args}"
    );
    assert_eq!(
        deployment["metadata"]["ownerReferences"][0]["kind"],
        "Gateway"
    );
    let svc = until(
        "the waypoint Service",
        || async { Some(serde_json::to_value(services.get_opt("wp").await.ok()??).unwrap()) },
        |_| true,
    )
    .await;
    assert_eq!(svc["spec"]["ports"][0]["port"], 15008);

    // Status: the Gateway accepted, the route's parents (waypoint and Service) accepted with the
    // missing backend named, the class accepted.
    let gateways =
        Api::<DynamicObject>::namespaced_with(admin.clone(), &app, &reconcile::gateway_resource());
    until(
        "the Gateway accepted",
        || async { Some(serde_json::to_value(gateways.get_opt("wp").await.ok()??).unwrap()) },
        |gw| has_condition(&gw["status"]["conditions"], "Accepted", "True"),
    )
    .await;
    let routes = Api::<DynamicObject>::namespaced_with(admin.clone(), &app, &route_resource());
    let route = until(
        "the HTTPRoute's parents",
        || async { Some(serde_json::to_value(routes.get_opt("echo").await.ok()??).unwrap()) },
        |r| {
            r["status"]["parents"].as_array().is_some_and(|ps| {
                ps.iter()
                    .filter(|p| p["controllerName"] == CONTROLLER_NAME)
                    .count()
                    == 2
            })
        },
    )
    .await;
    for parent in route["status"]["parents"].as_array().unwrap() {
        assert!(
            has_condition(&parent["conditions"], "Accepted", "True"),
            "{parent}"
        );
        let refs = parent["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResolvedRefs");
        assert_eq!(refs.unwrap()["reason"], "BackendNotFound", "{parent}");
    }
    let classes =
        Api::<DynamicObject>::all_with(admin.clone(), &resource_of(&documents(CLASS)[0]).0);
    until(
        "the GatewayClass accepted",
        || async {
            Some(serde_json::to_value(classes.get_opt("ambit-waypoint").await.ok()??).unwrap())
        },
        |c| has_condition(&c["status"]["conditions"], "Accepted", "True"),
    )
    .await;
}
