//! Leader election against the in-memory API server (`k8s_fake`): a free Lease is taken and
//! renewed, a fresh Lease of another holder is left alone and an expired one taken over, the
//! Lease is released on shutdown, and a leader that loses its Lease stops leading, which stops
//! the waypoint reconciler; two replicas hand the waypoints over when the leader stops. Timings
//! are shortened (1s lease) so the tests run in seconds.

mod k8s_fake;

use std::time::Duration;

use ambit_controller::leader::{self, LeaderConfig, LeaderMetrics};
use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::{ControllerAddress, Reconciler};
use http::Method;
use k8s_fake::{DEPLOYMENTS, FakeApi, GATEWAYS, LEASES};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const NS: &str = "ambit-system";

fn config(identity: &str) -> LeaderConfig {
    LeaderConfig {
        namespace: NS.into(),
        lease_name: leader::LEASE_NAME.into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
    }
}

struct Candidate {
    leading: watch::Receiver<bool>,
    registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Candidate {
    fn start(client: kube::Client, identity: &str) -> Candidate {
        let mut registry = Registry::with_prefix("ambit_controller");
        let metrics = LeaderMetrics::new(&mut registry);
        let (leading_tx, leading) = watch::channel(false);
        let (stop, stopped) = oneshot::channel::<()>();
        let leases: Api<Lease> = Api::namespaced(client, NS);
        let task = tokio::spawn(leader::run(
            leases,
            config(identity),
            leading_tx,
            metrics,
            async move {
                let _ = stopped.await;
            },
        ));
        Candidate {
            leading,
            registry,
            stop: Some(stop),
            task,
        }
    }

    async fn until_leading(&mut self, leading: bool) {
        tokio::time::timeout(k8s_fake::PATIENCE, self.leading.wait_for(|l| *l == leading))
            .await
            .unwrap_or_else(|_| panic!("never leading={leading}"))
            .unwrap();
    }

    fn gauge(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).unwrap();
        text.lines()
            .find(|l| l.starts_with("ambit_controller_leader "))
            .unwrap_or("")
            .to_string()
    }

    async fn shut_down(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(k8s_fake::PATIENCE, self.task)
            .await
            .expect("the candidate stops")
            .unwrap();
    }
}

fn lease(fake: &FakeApi) -> Value {
    fake.get(LEASES, NS, leader::LEASE_NAME).expect("the Lease")
}

fn held_by(holder: &str, renew_time: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": leader::LEASE_NAME, "namespace": NS},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 1,
                 "renewTime": renew_time, "leaseTransitions": 0},
    })
}

#[tokio::test]
async fn a_free_lease_is_taken_renewed_and_released_on_shutdown() {
    let (fake, client) = FakeApi::start();
    let mut a = Candidate::start(client, "pod-a");
    a.until_leading(true).await;
    assert_eq!(a.gauge(), "ambit_controller_leader 1");
    let first = lease(&fake);
    assert_eq!(first["spec"]["holderIdentity"], "pod-a");
    assert_eq!(first["spec"]["leaseDurationSeconds"], 1);

    let renewed = first["spec"]["renewTime"].clone();
    fake.wait_for("a renewal", |f| lease(f)["spec"]["renewTime"] != renewed)
        .await;
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "pod-a");
    assert_eq!(lease(&fake)["spec"]["leaseTransitions"], 0);

    let mut leading = a.leading.clone();
    a.shut_down().await;
    assert!(!*leading.borrow_and_update());
    let released = lease(&fake);
    assert!(
        released["spec"]["holderIdentity"]
            .as_str()
            .unwrap_or("")
            .is_empty(),
        "{released}"
    );
    assert_eq!(released["spec"]["leaseDurationSeconds"], 1);
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_by_another_replica() {
    let (fake, client) = FakeApi::start();
    let mut a = Candidate::start(client.clone(), "pod-a");
    a.until_leading(true).await;
    let mut b = Candidate::start(client, "pod-b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!*b.leading.borrow(), "pod-a holds a fresh lease");
    a.shut_down().await;
    // Well under a lease duration: the release, not the expiry, handed it over.
    tokio::time::timeout(Duration::from_millis(700), b.until_leading(true))
        .await
        .expect("pod-b took over at once");
    let spec = &lease(&fake)["spec"];
    assert_eq!(spec["holderIdentity"], "pod-b");
    assert_eq!(
        spec["leaseTransitions"], 0,
        "a released lease was free, not taken over"
    );
}

#[tokio::test]
async fn a_fresh_lease_of_another_holder_is_left_alone_and_an_expired_one_taken_over() {
    let (fake, client) = FakeApi::start();
    fake.put(LEASES, held_by("pod-b", "2026-01-01T00:00:00.000000Z"));
    // pod-b keeps renewing (its clock may be anything: only the change counts).
    let renewer = {
        let fake = fake.clone();
        tokio::spawn(async move {
            for i in 0..15 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                fake.update(LEASES, NS, leader::LEASE_NAME, |l| {
                    l["spec"]["renewTime"] = json!(format!("2026-01-01T00:00:{i:02}.000000Z"));
                });
            }
        })
    };
    let mut a = Candidate::start(client, "pod-a");
    renewer.await.unwrap();
    assert!(!*a.leading.borrow(), "a renewed lease is not taken");
    assert_eq!(a.gauge(), "ambit_controller_leader 0");
    let puts_by_a = fake
        .requests()
        .iter()
        .filter(|r| r.method == Method::PUT)
        .count();
    assert_eq!(puts_by_a, 0, "not even tried");

    // pod-b stopped renewing: a lease duration later, pod-a takes over.
    a.until_leading(true).await;
    let spec = &lease(&fake)["spec"];
    assert_eq!(spec["holderIdentity"], "pod-a");
    assert_eq!(spec["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_leader_whose_lease_was_taken_or_who_cannot_renew_stops_leading() {
    let (fake, client) = FakeApi::start();
    let mut a = Candidate::start(client, "pod-a");
    a.until_leading(true).await;

    // Someone else holds it now (an operator, a replica with a bad clock): stop at once.
    fake.put(LEASES, {
        let mut taken = lease(&fake);
        taken["spec"]["holderIdentity"] = json!("pod-b");
        taken
    });
    a.until_leading(false).await;
    assert_eq!(a.gauge(), "ambit_controller_leader 0");

    // pod-b is gone; pod-a leads again, then the API server fails every renewal.
    a.until_leading(true).await;
    fake.fail(Method::PUT, "/leases/", 500, 1000);
    let lost = std::time::Instant::now();
    a.until_leading(false).await;
    assert!(
        lost.elapsed() < Duration::from_secs(1),
        "stopped within the renew deadline, before the lease expired for others"
    );
}

/// A waypoint reconciler that deploys `example.com/waypoint:<tag>`.
fn reconciler(client: kube::Client, tag: &str) -> Reconciler {
    let settings = WaypointSettings {
        image: format!("example.com/waypoint:{tag}"),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        controller_namespace: NS.into(),
        token_audience: None,
        root_cert_pem: "PEM".into(),
    };
    let addr = ControllerAddress::Fixed("10.0.0.1:15012".parse().unwrap());
    Reconciler::new(client, settings, addr)
}

#[tokio::test]
async fn losing_leadership_stops_the_reconciler() {
    let (fake, client) = FakeApi::start();
    let mut a = Candidate::start(client.clone(), "pod-a");
    tokio::spawn(reconciler(client, "test").run(a.leading.clone()));
    let gateway = |name: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"gatewayClassName": "ambit-waypoint"}})
    };
    fake.put(GATEWAYS, gateway("first"));
    fake.wait_for("the leader deploys", |f| {
        f.get(DEPLOYMENTS, "shop", "first").is_some()
    })
    .await;

    // pod-b takes the lease and keeps it fresh.
    fake.put(LEASES, {
        let mut taken = lease(&fake);
        taken["spec"]["holderIdentity"] = json!("pod-b");
        taken
    });
    a.until_leading(false).await;
    let keep_fresh = {
        let fake = fake.clone();
        tokio::spawn(async move {
            for i in 0..10 {
                tokio::time::sleep(Duration::from_millis(150)).await;
                fake.update(LEASES, NS, leader::LEASE_NAME, |l| {
                    l["spec"]["renewTime"] = json!(format!("2026-01-01T00:01:{i:02}.000000Z"));
                });
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    fake.put(GATEWAYS, gateway("second"));
    keep_fresh.await.unwrap();
    assert!(!*a.leading.borrow());
    assert!(
        fake.get(DEPLOYMENTS, "shop", "second").is_none(),
        "a replica that does not lead writes nothing"
    );
    // Leading again (pod-b's lease expired), it catches up.
    a.until_leading(true).await;
    fake.wait_for("the new leader deploys", |f| {
        f.get(DEPLOYMENTS, "shop", "second").is_some()
    })
    .await;
}

#[tokio::test]
async fn two_replicas_hand_the_waypoints_over_and_only_the_leader_writes() {
    let (fake, client) = FakeApi::start();
    // Each replica deploys its own image, so every Deployment says which replica wrote it.
    let replica = |identity: &str| {
        let candidate = Candidate::start(client.clone(), identity);
        tokio::spawn(reconciler(client.clone(), identity).run(candidate.leading.clone()));
        candidate
    };
    let image = |f: &FakeApi, name: &str| {
        f.get(DEPLOYMENTS, "shop", name).map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
    };
    let gateway = |name: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": name, "namespace": "shop"},
               "spec": {"gatewayClassName": "ambit-waypoint"}})
    };

    let mut a = replica("pod-a");
    a.until_leading(true).await;
    let mut b = replica("pod-b");
    fake.put(GATEWAYS, gateway("first"));
    fake.wait_for("pod-a deploys", |f| image(f, "first").is_some())
        .await;
    // pod-b, not leading, leaves pod-a's Deployment alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*b.leading.borrow());
    assert_eq!(
        image(&fake, "first").as_deref(),
        Some("example.com/waypoint:pod-a")
    );

    // pod-a stops (a rolling update): it releases the Lease, pod-b takes over at once and
    // reconciles every Gateway, the existing one and one created during the hand-over.
    fake.put(GATEWAYS, gateway("second"));
    a.shut_down().await;
    tokio::time::timeout(Duration::from_millis(700), b.until_leading(true))
        .await
        .expect("pod-b took over at once");
    fake.wait_for("pod-b owns both waypoints", |f| {
        image(f, "first").as_deref() == Some("example.com/waypoint:pod-b")
            && image(f, "second").as_deref() == Some("example.com/waypoint:pod-b")
    })
    .await;
    assert_eq!(lease(&fake)["spec"]["holderIdentity"], "pod-b");
    b.shut_down().await;
}
