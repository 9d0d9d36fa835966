//! The waypoint reconciler against the in-memory API server (`k8s_fake`): a waypoint Gateway
//! gets its ServiceAccount, root ConfigMap, Deployment and Service, owned by the Gateway and
//! applied server-side; its status follows the Deployment; what a vanished Gateway left behind is
//! swept; an invalid Gateway is told so; failures are retried; nothing is written unless leading.

mod k8s_fake;

use std::time::Duration;

use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::{ControllerAddress, ReconcileMetrics, Reconciler};
use http::Method;
use k8s_fake::{CONFIG_MAPS, DEPLOYMENTS, FakeApi, GATEWAYS, SERVICE_ACCOUNTS, SERVICES};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::watch;

const NS: &str = "shop";

fn settings() -> WaypointSettings {
    WaypointSettings {
        image: "example.com/ambit-waypoint:test".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        controller_namespace: "ambit-system".into(),
        token_audience: Some("ambit".into()),
        root_cert_pem: "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n".into(),
    }
}

fn gateway(name: &str, class: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"gatewayClassName": class,
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    })
}

/// The API server with the controller's Service, and a reconciler that leads while the returned
/// sender says so.
fn start(leading: bool) -> (FakeApi, watch::Sender<bool>) {
    let (fake, client) = FakeApi::start();
    fake.put(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "ambit-controller", "namespace": "ambit-system"},
               "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 15012}]}}),
    );
    let (leading_tx, leading_rx) = watch::channel(leading);
    let reconciler = Reconciler::new(client, settings(), ControllerAddress::ServiceIp(15012))
        .with_sweep_interval(Duration::from_millis(200));
    tokio::spawn(reconciler.run(leading_rx));
    (fake, leading_tx)
}

fn owned_by_gateway(fake: &FakeApi, collection: &str, name: &str) -> bool {
    fake.get(collection, NS, name).is_some()
}

fn condition<'a>(gw: &'a Value, type_: &str) -> Option<&'a Value> {
    gw["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

fn condition_is(fake: &FakeApi, name: &str, type_: &str, status: &str) -> bool {
    fake.get(GATEWAYS, NS, name)
        .is_some_and(|gw| condition(&gw, type_).is_some_and(|c| c["status"] == status))
}

async fn deployed(fake: &FakeApi, name: &str) {
    let root = format!("{name}-ambit-root-cert");
    fake.wait_for("the waypoint's objects", |f| {
        owned_by_gateway(f, SERVICE_ACCOUNTS, name)
            && owned_by_gateway(f, CONFIG_MAPS, &root)
            && owned_by_gateway(f, DEPLOYMENTS, name)
            && owned_by_gateway(f, SERVICES, name)
    })
    .await;
}

#[tokio::test]
async fn a_waypoint_gateway_is_deployed_owned_by_it_and_programmed_once_available() {
    let (fake, _leading) = start(true);
    let gw = fake.put(GATEWAYS, gateway("wp", "ambit-waypoint", json!({})));
    deployed(&fake, "wp").await;

    let owner = json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                        "name": "wp", "uid": gw["metadata"]["uid"], "controller": true}]);
    for (collection, name) in [
        (SERVICE_ACCOUNTS, "wp"),
        (CONFIG_MAPS, "wp-ambit-root-cert"),
        (DEPLOYMENTS, "wp"),
        (SERVICES, "wp"),
    ] {
        let object = fake.get(collection, NS, name).unwrap();
        assert_eq!(
            object["metadata"]["ownerReferences"], owner,
            "{collection}/{name}"
        );
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["gateway.networking.k8s.io/gateway-name"], "wp");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "ambit-controller");
    }

    let deployment = fake.get(DEPLOYMENTS, NS, "wp").unwrap();
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"], "wp",
        "the translation keeps waypoint pods off waypoints by this label"
    );
    assert_eq!(
        pod["spec"]["serviceAccountName"], "wp",
        "identity ns/shop/sa/wp"
    );
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "example.com/ambit-waypoint:test");
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "--waypoint=shop/wp",
        "--controller-addr=10.96.0.12:15012",
        "--controller-namespace=ambit-system",
        "--trust-domain=cluster.local",
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    let token = &pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "ambit");
    assert_eq!(pod["spec"]["enableServiceLinks"], false);
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "scaling is left to users"
    );
    let root = fake.get(CONFIG_MAPS, NS, "wp-ambit-root-cert").unwrap();
    assert_eq!(root["data"]["root-cert.pem"], settings().root_cert_pem);

    let service = fake.get(SERVICES, NS, "wp").unwrap();
    assert_eq!(
        service["spec"]["selector"]["gateway.networking.k8s.io/gateway-name"],
        "wp"
    );
    let mesh = &service["spec"]["ports"][0];
    assert_eq!(
        (mesh["name"].as_str(), mesh["port"].as_i64()),
        (Some("mesh"), Some(15008))
    );

    // Every write was a forced server-side apply by the controller's field manager.
    let writes = fake.writes();
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(w.method, Method::PATCH, "{} {}", w.method, w.path);
        assert!(w.content_type.contains("apply-patch"), "{w:?}");
        assert!(w.query.contains("fieldManager=ambit-controller"), "{w:?}");
        assert!(w.query.contains("force=true"), "{w:?}");
    }

    // Accepted, not programmed yet, and the address agents use.
    fake.wait_for("Accepted=True", |f| {
        condition_is(f, "wp", "Accepted", "True")
    })
    .await;
    let gw = fake.get(GATEWAYS, NS, "wp").unwrap();
    let programmed = condition(&gw, "Programmed").unwrap();
    assert_eq!(
        (&programmed["status"], &programmed["reason"]),
        (&json!("False"), &json!("Pending"))
    );
    assert_eq!(programmed["observedGeneration"], 1);
    assert_eq!(
        gw["status"]["addresses"],
        json!([{"type": "Hostname", "value": "wp.shop.svc.cluster.local"}])
    );

    // The Deployment's controller reports a replica available: Programmed.
    fake.update(DEPLOYMENTS, NS, "wp", |d| {
        d["status"] = json!({"replicas": 1, "availableReplicas": 1});
    });
    fake.wait_for("Programmed=True", |f| {
        condition_is(f, "wp", "Programmed", "True")
    })
    .await;

    // Reconciling again with nothing new writes no status (an annotation is not a generation).
    let status_writes = |f: &FakeApi| {
        f.writes()
            .iter()
            .filter(|w| w.path.ends_with("/status"))
            .count()
    };
    let before = status_writes(&fake);
    let applies = fake.writes().len();
    fake.update(GATEWAYS, NS, "wp", |g| {
        g["metadata"]["annotations"] = json!({"note": "touched"});
    });
    fake.wait_for("another reconcile", |f| f.writes().len() >= applies + 4)
        .await;
    assert_eq!(status_writes(&fake), before);
}

#[tokio::test]
async fn what_a_removed_gateway_left_behind_is_deleted() {
    let (fake, _leading) = start(false);
    // Left over from before a restart: the objects of a Gateway deleted while the garbage
    // collector was off, and a user's Deployment that only looks similar.
    let leftover = |name: &str| {
        json!({"metadata": {"name": name, "namespace": NS, "labels": {
            "gateway.networking.k8s.io/gateway-name": "old",
            "app.kubernetes.io/managed-by": "ambit-controller"}}})
    };
    fake.put(DEPLOYMENTS, leftover("old"));
    fake.put(SERVICES, leftover("old"));
    fake.put(
        DEPLOYMENTS,
        json!({"metadata": {"name": "users", "namespace": NS,
               "labels": {"gateway.networking.k8s.io/gateway-name": "old"}}}),
    );
    fake.put(GATEWAYS, gateway("wp", "istio-waypoint", json!({})));
    _leading.send_replace(true);
    deployed(&fake, "wp").await;
    fake.wait_for("the leftovers deleted", |f| {
        f.get(DEPLOYMENTS, NS, "old").is_none() && f.get(SERVICES, NS, "old").is_none()
    })
    .await;
    assert!(
        fake.get(DEPLOYMENTS, NS, "users").is_some(),
        "not ours: kept"
    );

    // Deleting the Gateway deletes its objects, even without a garbage collector.
    fake.delete(GATEWAYS, NS, "wp");
    fake.wait_for("the waypoint's objects deleted", |f| {
        [
            (SERVICE_ACCOUNTS, "wp"),
            (CONFIG_MAPS, "wp-ambit-root-cert"),
            (DEPLOYMENTS, "wp"),
            (SERVICES, "wp"),
        ]
        .iter()
        .all(|(c, n)| f.get(c, NS, n).is_none())
    })
    .await;
}

#[tokio::test]
async fn an_invalid_waypoint_is_not_accepted_and_other_classes_are_left_alone() {
    let (fake, _leading) = start(true);
    fake.put(
        GATEWAYS,
        gateway(
            "bad",
            "ambit-waypoint",
            json!({"istio.io/waypoint-for": "everything"}),
        ),
    );
    fake.put(GATEWAYS, gateway("edge", "nginx", json!({})));
    fake.wait_for("Accepted=False", |f| {
        condition_is(f, "bad", "Accepted", "False")
    })
    .await;
    let gw = fake.get(GATEWAYS, NS, "bad").unwrap();
    let accepted = condition(&gw, "Accepted").unwrap();
    assert_eq!(accepted["reason"], "Invalid");
    let message = accepted["message"].as_str().unwrap();
    assert!(message.contains("istio.io/waypoint-for"), "{message}");
    assert_eq!(condition(&gw, "Programmed").unwrap()["status"], "False");
    assert!(gw["status"]["addresses"].is_null());

    // A later good Gateway is still reconciled: the invalid one broke nothing.
    fake.put(GATEWAYS, gateway("good", "ambit-waypoint", json!({})));
    deployed(&fake, "good").await;
    assert!(fake.get(DEPLOYMENTS, NS, "bad").is_none());
    assert!(fake.get(DEPLOYMENTS, NS, "edge").is_none());
    let edge = fake.get(GATEWAYS, NS, "edge").unwrap();
    assert!(
        edge["status"].is_null(),
        "another class's status is not ours to write"
    );

    // Fixed, it is accepted and deployed.
    fake.update(GATEWAYS, NS, "bad", |g| {
        g["metadata"]["labels"] = json!({"istio.io/waypoint-for": "all"});
    });
    deployed(&fake, "bad").await;
    fake.wait_for("Accepted=True", |f| {
        condition_is(f, "bad", "Accepted", "True")
    })
    .await;
}

/// `ambit.dev/otlp-endpoint` turns the waypoint's traces on; a value the waypoint would refuse at
/// start (crash-looping every pod) is refused on the Gateway instead.
#[tokio::test]
async fn the_otlp_annotation_reaches_the_waypoint_and_a_bad_one_is_not_accepted() {
    let (fake, _leading) = start(true);
    let annotated = |name: &str, endpoint: &str| {
        let mut gw = gateway(name, "ambit-waypoint", json!({}));
        gw["metadata"]["annotations"] = json!({"ambit.dev/otlp-endpoint": endpoint});
        gw
    };
    fake.put(
        GATEWAYS,
        annotated("traced", "http://collector.observability:4318"),
    );
    fake.put(
        GATEWAYS,
        annotated("tls", "https://collector.observability:4318"),
    );
    deployed(&fake, "traced").await;
    let args = |fake: &FakeApi| -> Vec<String> {
        let d = fake.get(DEPLOYMENTS, NS, "traced").unwrap();
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].clone();
        serde_json::from_value(args).unwrap()
    };
    assert!(
        args(&fake).contains(&"--otlp-endpoint=http://collector.observability:4318".to_string()),
        "{:?}",
        args(&fake)
    );
    fake.wait_for("the https endpoint refused", |f| {
        condition_is(f, "tls", "Accepted", "False")
    })
    .await;
    let gw = fake.get(GATEWAYS, NS, "tls").unwrap();
    let message = condition(&gw, "Accepted").unwrap()["message"].clone();
    assert!(
        message.as_str().unwrap().contains("https is not supported"),
        "{message}"
    );
    assert!(fake.get(DEPLOYMENTS, NS, "tls").is_none());

    // The annotation removed: tracing off again.
    fake.update(GATEWAYS, NS, "traced", |g| {
        g["metadata"]["annotations"] = json!({});
    });
    fake.wait_for("the flag gone", |f| {
        !args(f).iter().any(|a| a.starts_with("--otlp-endpoint"))
    })
    .await;
}

#[tokio::test]
async fn a_failed_write_is_retried() {
    let (fake, client) = FakeApi::start();
    let mut registry = Registry::with_prefix("ambit_controller");
    let metrics = ReconcileMetrics::new(&mut registry);
    let fixed = ControllerAddress::Fixed("10.0.0.1:15012".parse().unwrap());
    let (_leading, leading) = watch::channel(true);
    tokio::spawn(
        Reconciler::new(client, settings(), fixed)
            .with_metrics(metrics)
            .run(leading),
    );
    fake.fail(Method::PATCH, "/deployments/wp", 500, 2);
    fake.put(GATEWAYS, gateway("wp", "ambit-waypoint", json!({})));
    deployed(&fake, "wp").await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains(r#"ambit_controller_waypoint_reconciles_total{result="api_error"} 2"#),
        "{text}"
    );
    let attempts = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::PATCH && r.path.ends_with("/deployments/wp"))
        .count();
    assert!(attempts >= 3, "two failures, then success: {attempts}");
}

#[tokio::test]
async fn nothing_is_written_unless_leading() {
    let (fake, leading) = start(false);
    fake.put(GATEWAYS, gateway("wp", "ambit-waypoint", json!({})));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    leading.send_replace(true);
    deployed(&fake, "wp").await;

    leading.send_replace(false);
    // Let the controller wind down, then add a Gateway: nobody deploys it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = fake.writes().len();
    fake.put(GATEWAYS, gateway("later", "ambit-waypoint", json!({})));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        fake.writes().len(),
        writes,
        "{:?}",
        &fake.writes()[writes..]
    );

    // Leading again picks it up.
    leading.send_replace(true);
    deployed(&fake, "later").await;
}
