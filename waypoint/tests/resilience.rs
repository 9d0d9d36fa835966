//! Resilience through a real waypoint: retries, per-try timeouts, connect failures, fault
//! injection, outlier detection and request limits. No test asserts a duration: timeouts are
//! observed as statuses and response flags.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use ambit_proto::api::{self, resource::Kind, type_url};
use ambit_proto::hbone::REASON_HEADER;
use ambit_waypoint::proxy::Protocol;
use bytes::Bytes;
use common::*;
use http_body_util::Full;

fn retry(attempts: u32, codes: &[u32]) -> Option<api::RetryPolicy> {
    Some(api::RetryPolicy {
        attempts,
        codes: codes.to_vec(),
        retry_on: Vec::new(),
        backoff_ms: 1,
    })
}

#[tokio::test]
async fn retries_turn_an_endpoint_failing_half_its_requests_into_success() {
    within(async {
        let mesh = Mesh::start().await;
        let flaky = Behaviour {
            fail_every: 2,
            fail_status: 503,
            ..Behaviour::default()
        };
        let b = Backend::start(&mesh, "flaky", flaky).await;
        mesh.service("flaky", "10.96.1.10", &[&b]);
        // Without retries, half the requests fail: the backend really is flaky.
        let mut client = mesh.http("10.96.1.10", Protocol::Http1).await;
        let mut failed = 0;
        for _ in 0..100 {
            if client.get("/").await.status != 200 {
                failed += 1;
            }
        }
        assert_eq!(failed, 50);

        mesh.route(route(
            "retry",
            "flaky",
            vec![api::RouteRule {
                backends: vec![backend_ref("flaky", 1)],
                retry: retry(2, &[503]),
                ..Default::default()
            }],
        ));
        let mut ok = 0;
        for _ in 0..200 {
            if client.get("/").await.status == 200 {
                ok += 1;
            }
        }
        assert_eq!(ok, 200, "every request succeeds within its retries");
        assert!(mesh.metrics().contains("ambit_waypoint_retries_total"));
    })
    .await;
}

#[tokio::test]
async fn a_per_try_timeout_gives_504() {
    within(async {
        let mesh = Mesh::start().await;
        let slow = Behaviour {
            delay: Duration::from_secs(30),
            ..Behaviour::default()
        };
        let b = Backend::start(&mesh, "slow", slow).await;
        mesh.service("slow", "10.96.1.20", &[&b]);
        mesh.route(route(
            "timeouts",
            "slow",
            vec![api::RouteRule {
                backends: vec![backend_ref("slow", 1)],
                timeouts: Some(api::Timeouts {
                    request_ms: 0,
                    backend_request_ms: 100,
                }),
                retry: retry(1, &[504]),
                ..Default::default()
            }],
        ));
        let mut client = mesh.http("10.96.1.20", Protocol::Http2).await;
        let a = client.get("/").await;
        assert_eq!(a.status, 504, "{}", a.body);
        assert!(a.header(REASON_HEADER).contains("timeout"), "{}", a.body);
        // A GET is idempotent: the timed-out try was retried once before giving up.
        assert_eq!(b.requests.load(Ordering::Relaxed), 2);
        // Counted against the workload that timed out, as Istio counts it.
        let metrics = mesh.metrics();
        let timed_out = metrics
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_flags=\"UT\""))
            .unwrap_or_else(|| panic!("no UT request counted:\n{metrics}"));
        assert!(
            timed_out.contains("destination_workload=\"slow\""),
            "{timed_out}"
        );
        assert!(timed_out.contains("response_code=\"504\""), "{timed_out}");
    })
    .await;
}

#[tokio::test]
async fn a_short_response_arrives_whole_and_one_that_stalls_past_the_timeout_gets_504() {
    within(async {
        let mesh = Mesh::start().await;
        let stalling = Behaviour {
            body_delay: Duration::from_millis(300),
            ..Behaviour::default()
        };
        let b = Backend::start(&mesh, "stall", stalling).await;
        mesh.service("stall", "10.96.1.21", &[&b]);
        let rule = |request_ms| api::RouteRule {
            backends: vec![backend_ref("stall", 1)],
            timeouts: Some(api::Timeouts {
                request_ms,
                backend_request_ms: 0,
            }),
            ..Default::default()
        };
        // The head comes at once, the body 300 ms later: a patient route gets all of it.
        mesh.route(route("stall", "stall", vec![rule(2_000)]));
        let echo = || {
            get("/items")
                .method("POST")
                .body(Full::new(Bytes::from_static(b"0123456789")))
                .unwrap()
        };
        let mut client = mesh.http("10.96.1.21", Protocol::Http1).await;
        let answer = client.send(echo()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body, "0123456789");
        // The request's timeout covers the body the waypoint waits for, not only the head.
        mesh.route(route("stall", "stall", vec![rule(100)]));
        let mut client = mesh.http("10.96.1.21", Protocol::Http1).await;
        let answer = client.send(echo()).await;
        assert_eq!(answer.status, 504, "{}", answer.body);
        assert!(
            answer.header(REASON_HEADER).contains("time"),
            "{}",
            answer.body
        );
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_endpoint_gives_503_naming_the_connect_failure() {
    within(async {
        let mesh = Mesh::start().await;
        mesh.apply(type_url::SERVICE, vec![service("gone", "10.96.1.30")]);
        // A pod whose port nobody listens on: its agent refuses the tunnel.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let host = hostname("gone");
        mesh.apply(
            type_url::WORKLOAD,
            vec![workload(
                "gone-1",
                NS,
                "backend",
                "127.0.0.1",
                &[(&host, 80, port)],
            )],
        );
        let mut client = mesh.http("10.96.1.30", Protocol::Http1).await;
        let a = client.get("/").await;
        assert_eq!(a.status, 503);
        assert!(
            a.header(REASON_HEADER).contains("connect failure"),
            "{}",
            a.header(REASON_HEADER)
        );
        assert!(mesh.metrics().contains("response_flags=\"UF\""));
    })
    .await;
}

#[tokio::test]
async fn faults_abort_and_delay_their_share_of_requests() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "ratings", Behaviour::default()).await;
        mesh.service("ratings", "10.96.1.40", &[&b]);
        let fault = |abort: f64, delay: f64| api::FaultInjection {
            delay: Some(api::FaultDelay {
                fixed_delay_ms: 20,
                percentage: delay,
            }),
            abort: Some(api::FaultAbort {
                http_status: 418,
                percentage: abort,
            }),
        };
        mesh.route(route(
            "faults",
            "ratings",
            vec![
                api::RouteRule {
                    matches: vec![path_prefix("/abort")],
                    backends: vec![backend_ref("ratings", 1)],
                    fault: Some(fault(100.0, 0.0)),
                    ..Default::default()
                },
                api::RouteRule {
                    matches: vec![path_prefix("/half")],
                    backends: vec![backend_ref("ratings", 1)],
                    fault: Some(fault(50.0, 0.0)),
                    ..Default::default()
                },
                api::RouteRule {
                    matches: vec![path_prefix("/delay")],
                    backends: vec![backend_ref("ratings", 1)],
                    fault: Some(fault(0.0, 100.0)),
                    ..Default::default()
                },
            ],
        ));
        let mut client = mesh.http("10.96.1.40", Protocol::Http1).await;
        assert_eq!(client.get("/abort").await.status, 418);
        assert_eq!(
            b.requests.load(Ordering::Relaxed),
            0,
            "an abort never reaches the backend"
        );
        let mut aborted = 0;
        for _ in 0..400 {
            if client.get("/half").await.status == 418 {
                aborted += 1;
            }
        }
        // Binomial(400, 0.5): sd 10; 140..=260 is 6 sd either way.
        assert!((140..=260).contains(&aborted), "{aborted} of 400 aborted");
        let a = client.get("/delay").await;
        assert_eq!(a.status, 200);
        let metrics = mesh.metrics();
        assert!(metrics.contains("response_flags=\"FI\""), "{metrics}");
        assert!(metrics.contains("response_flags=\"DI\""), "{metrics}");
    })
    .await;
}

#[tokio::test]
async fn outlier_detection_ejects_the_failing_endpoint() {
    within(async {
        let mesh = Mesh::start().await;
        let broken = Behaviour {
            fail_every: 1,
            fail_status: 500,
            ..Behaviour::default()
        };
        let good = Backend::start(&mesh, "good", Behaviour::default()).await;
        let bad = Backend::start(&mesh, "bad", broken).await;
        mesh.service("catalog", "10.96.1.50", &[&good, &bad]);
        mesh.apply(
            type_url::BACKEND_POLICY,
            vec![resource(
                "shop/catalog",
                Kind::BackendPolicy(api::BackendPolicy {
                    name: "catalog".into(),
                    namespace: NS.into(),
                    service_namespace: NS.into(),
                    service_hostname: hostname("catalog"),
                    load_balancer: api::LoadBalancer::RoundRobin as i32,
                    outlier_detection: Some(api::OutlierDetection {
                        consecutive_5xx: 2,
                        base_ejection_ms: 600_000,
                        max_ejection_percent: 50,
                        ..Default::default()
                    }),
                    connection_pool: None,
                }),
            )],
        );
        let mut client = mesh.http("10.96.1.50", Protocol::Http1).await;
        for _ in 0..100 {
            client.get("/").await;
        }
        // Two consecutive 500s eject it; for the (ten-minute) ejection it gets nothing more.
        assert_eq!(bad.requests.load(Ordering::Relaxed), 2);
        assert_eq!(good.requests.load(Ordering::Relaxed), 98);
        assert!(
            mesh.metrics()
                .contains("ambit_waypoint_outlier_ejections_total 1")
        );
    })
    .await;
}

#[tokio::test]
async fn requests_beyond_the_pending_limit_get_503_overflow() {
    within(async {
        let mesh = Mesh::start().await;
        let slow = Behaviour {
            delay: Duration::from_secs(30),
            ..Behaviour::default()
        };
        let b = Backend::start(&mesh, "busy", slow).await;
        mesh.service("busy", "10.96.1.60", &[&b]);
        mesh.apply(
            type_url::BACKEND_POLICY,
            vec![resource(
                "shop/busy",
                Kind::BackendPolicy(api::BackendPolicy {
                    name: "busy".into(),
                    namespace: NS.into(),
                    service_namespace: NS.into(),
                    service_hostname: hostname("busy"),
                    connection_pool: Some(api::ConnectionPool {
                        max_requests: 1,
                        max_pending_requests: 1,
                        max_connections: 0,
                    }),
                    ..Default::default()
                }),
            )],
        );
        // One request in flight, one waiting: the third is refused at once.
        let mut clients = Vec::new();
        for _ in 0..2 {
            let mut c = mesh.http("10.96.1.60", Protocol::Http1).await;
            clients.push(tokio::spawn(async move { c.get("/").await.status }));
        }
        // Wait (without a deadline of its own) until one is at the backend and one queued.
        while b.requests.load(Ordering::Relaxed) < 1
            || !mesh.metrics().contains("ambit_waypoint_active_requests 2")
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut third = mesh.http("10.96.1.60", Protocol::Http1).await;
        let a = third.get("/").await;
        assert_eq!(a.status, 503);
        assert!(a.header(REASON_HEADER).contains("overflow"), "{}", a.body);
        assert!(mesh.metrics().contains("response_flags=\"UO\""));
        for c in clients {
            c.abort();
        }
    })
    .await;
}
