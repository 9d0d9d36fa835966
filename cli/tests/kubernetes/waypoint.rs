//! `ambit waypoint apply|delete|list`: the Gateway, and the namespace's enrolment.

use ambit_cli::cluster::waypoint::{self, For};
use serde_json::json;

use crate::namespace;
use crate::server::{echo, serve};

#[tokio::test]
async fn waypoint_apply_creates_the_gateway_and_enrolls_the_namespace() {
    let (client, calls) = serve(|call| match call.path() {
        "/api/v1/namespaces/demo" => (
            200,
            namespace("demo", json!({"istio.io/use-waypoint": "waypoint"})),
        ),
        _ => echo(call),
    });
    let out = waypoint::apply(client, "demo", "waypoint", For::Workload, None, true)
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

/// `--service-account`: the Gateway carries Istio's annotation and the namespace is not touched;
/// one named like the account is refused before anything is written.
#[tokio::test]
async fn waypoint_apply_for_a_service_account_annotates_the_gateway() {
    let (client, calls) = serve(echo);
    let out = waypoint::apply(
        client,
        "shop",
        "reviews-waypoint",
        For::Workload,
        Some("reviews"),
        false,
    )
    .await
    .unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert!(calls[0].is(
        "PATCH",
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/gateways/reviews-waypoint"
    ));
    assert_eq!(
        calls[0].body["metadata"]["annotations"],
        json!({"istio.io/for-service-account": "reviews"})
    );
    assert!(out.contains("service account shop/reviews"), "{out}");

    let (client, calls) = serve(echo);
    let err = waypoint::apply(
        client,
        "shop",
        "reviews",
        For::Workload,
        Some("reviews"),
        false,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot be named reviews"), "{err}");
    assert!(calls.lock().unwrap().is_empty(), "nothing written");
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
    let err = waypoint::apply(client, "demo", "waypoint", For::Service, None, false)
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
        {
            let mut gw = gateway("shop", "reviews-wp", "ambit-waypoint");
            gw["metadata"]["annotations"] = json!({"istio.io/for-service-account": "reviews"});
            gw
        },
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
        "NAMESPACE   NAME         FOR   SERVES               CLASS            PROGRAMMED\n\
         demo        waypoint     all   use-waypoint label   ambit-waypoint   True\n\
         shop        istio-wp     all   use-waypoint label   istio-waypoint   True\n\
         shop        reviews-wp   all   account reviews      ambit-waypoint   True\n"
    );
}
