//! The standalone source: a directory of YAML, bad documents reported and skipped, last good state
//! kept, changes picked up live.

use std::fs;
use std::time::Duration;

use ambit_controller::model::{ClusterState, Kind, ObjectRef};
use ambit_controller::source::standalone::{Directory, LoadReport, watch};

fn key(kind: Kind, ns: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: ns.into(),
        name: name.into(),
    }
}

const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-cart, namespace: shop}
spec:
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/cart]}}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-read-by-the-controller}
"#;

#[test]
fn a_bad_document_is_reported_with_file_document_field_and_reason_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let bad = r#"
apiVersion: v1
kind: Service
metadata: {name: ok, namespace: shop}
spec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: typo, namespace: shop}
spec:
  rules: [{when: [{key: source.ip, values: [300.1.1.1]}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: wrong-type, namespace: shop}
spec: {containers: "not a list"}
---
kind: Orphan
"#;
    fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    fs::write(dir.path().join("b.yaml"), bad).unwrap();
    let mut source = Directory::new(dir.path());
    let (report, _) = source.load().unwrap();
    let state = source.state();

    assert!(state.get(&key(Kind::Namespace, "", "shop")).is_some());
    assert!(
        state
            .get(&key(Kind::AuthorizationPolicy, "shop", "allow-cart"))
            .is_some()
    );
    assert!(state.get(&key(Kind::Service, "shop", "ok")).is_some());
    assert_eq!(report.ignored, 1, "the Deployment is not an error");
    assert_eq!(report.errors.len(), 3, "{:#?}", report.errors);
    let policy = &report.errors[0];
    assert!(policy.file.ends_with("b.yaml"));
    assert_eq!(policy.document, 1);
    assert_eq!(policy.field, "spec.rules[0].when[0].values[0]");
    assert!(policy.reason.contains("300.1.1.1"), "{}", policy.reason);
    assert_eq!(
        policy.object,
        Some(key(Kind::AuthorizationPolicy, "shop", "typo"))
    );
    let pod = &report.errors[1];
    assert_eq!((pod.document, pod.field.as_str()), (2, "spec.containers"));
    let orphan = &report.errors[2];
    assert!(orphan.reason.contains("apiVersion"), "{}", orphan.reason);
    // Printed the way an operator reads it.
    let line = policy.to_string();
    assert!(
        line.contains("b.yaml document 1") && line.contains("spec.rules[0].when[0].values[0]"),
        "{line}"
    );
}

#[test]
fn lists_and_multi_document_files_and_default_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let list = r#"
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: cart}}
- {apiVersion: v1, kind: ServiceAccount, metadata: {name: db, namespace: shop}}
"#;
    fs::write(dir.path().join("list.yml"), list).unwrap();
    let mut source = Directory::new(dir.path());
    let (report, _) = source.load().unwrap();
    let state = source.state();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(
        state
            .get(&key(Kind::ServiceAccount, "default", "cart"))
            .is_some()
    );
    assert!(
        state
            .get(&key(Kind::ServiceAccount, "shop", "db"))
            .is_some()
    );
}

#[test]
fn a_broken_file_keeps_its_last_good_objects_and_a_fixed_file_can_delete() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policies.yaml");
    let mut source = Directory::new(dir.path());
    fs::write(&path, GOOD).unwrap();
    source.load().unwrap();
    let before = source.state().clone();
    let policy = key(Kind::AuthorizationPolicy, "shop", "allow-cart");

    // The policy turns invalid: its last good version is kept, and the error reported.
    let broken = GOOD.replace(
        "principals: [cluster.local/ns/shop/sa/cart]",
        "principals: cluster.local",
    );
    fs::write(&path, &broken).unwrap();
    let (report, changed) = source.load().unwrap();
    assert_eq!(report.errors.len(), 1);
    assert_eq!(source.state().get(&policy), before.get(&policy));
    assert_eq!(changed, [], "nothing the file contributes changed");

    // A YAML syntax error part-way: nothing the file held is lost.
    fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop\n",
    )
    .unwrap();
    let (report, _) = source.load().unwrap();
    assert_eq!(report.errors.len(), 1);
    assert_eq!(*source.state(), before);

    // Once the file is valid again, what it no longer contains is deleted.
    fs::write(
        &path,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    let (report, changed) = source.load().unwrap();
    assert!(report.errors.is_empty());
    assert_eq!(changed, [key(Kind::Namespace, "", "shop"), policy.clone()]);
    assert!(source.state().get(&policy).is_none());
    assert!(
        source
            .state()
            .get(&key(Kind::Namespace, "", "shop"))
            .is_some()
    );
}

#[tokio::test]
async fn watch_publishes_each_change() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a.yaml"), GOOD).unwrap();
    let (states_tx, mut states) = tokio::sync::watch::channel(ClusterState::new());
    let (reports_tx, _reports) = tokio::sync::watch::channel(LoadReport::default());
    tokio::spawn(watch(
        Directory::new(dir.path()),
        Duration::from_millis(20),
        states_tx,
        reports_tx,
    ));
    let policy = key(Kind::AuthorizationPolicy, "shop", "allow-cart");

    let wait_for = |states: &mut tokio::sync::watch::Receiver<ClusterState>, present: bool| {
        let mut states = states.clone();
        let policy = policy.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                states.wait_for(|s| s.get(&policy).is_some() == present),
            )
            .await
            .expect("the change was never published")
            .unwrap();
        }
    };
    wait_for(&mut states, true).await;
    fs::write(
        dir.path().join("a.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n",
    )
    .unwrap();
    wait_for(&mut states, false).await;
    fs::write(dir.path().join("b.yaml"), GOOD).unwrap();
    wait_for(&mut states, true).await;
}
