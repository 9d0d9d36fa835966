//! Request telemetry: Istio's request metrics with its standard labels and `reporter="waypoint"`.

mod common;

use ambit_waypoint::proxy::Protocol;
use common::*;
use http_body_util::Full;

#[tokio::test]
async fn requests_are_counted_with_istio_labels_sizes_and_durations() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "echo-1", Behaviour::default()).await;
        mesh.service("echo", "10.96.4.10", &[&b]);
        let mut client = mesh.http("10.96.4.10", Protocol::Http1).await;
        for _ in 0..3 {
            let post = get("/items")
                .method("POST")
                .body(Full::new(bytes::Bytes::from_static(b"0123456789")))
                .unwrap();
            assert_eq!(client.send(post).await.status, 200);
        }
        let metrics = mesh.metrics();
        let requests = metrics
            .lines()
            .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
            .unwrap_or_else(|| panic!("no istio_requests_total for 200:\n{metrics}"));
        for label in [
            "reporter=\"waypoint\"",
            "source_workload=\"client\"",
            "source_workload_namespace=\"frontend\"",
            "source_principal=\"spiffe://cluster.local/ns/frontend/sa/client\"",
            "destination_workload=\"echo-1\"",
            "destination_workload_namespace=\"shop\"",
            "destination_principal=\"spiffe://cluster.local/ns/shop/sa/backend\"",
            "destination_service=\"echo.shop.svc.cluster.local\"",
            "destination_service_name=\"echo\"",
            "request_protocol=\"http\"",
            "response_flags=\"-\"",
            "connection_security_policy=\"mutual_tls\"",
        ] {
            assert!(requests.contains(label), "{label} missing in {requests}");
        }
        assert!(requests.ends_with(" 3"), "{requests}");
        for family in [
            "istio_request_duration_milliseconds_count{",
            "istio_request_bytes_sum{",
            "istio_response_bytes_count{",
        ] {
            assert!(metrics.contains(family), "{family} missing:\n{metrics}");
        }
        // 3 bodies of 10 bytes in, echoed back.
        let request_bytes = metrics
            .lines()
            .find(|l| {
                l.starts_with("istio_request_bytes_sum{") && l.contains("response_code=\"200\"")
            })
            .unwrap();
        assert!(request_bytes.ends_with(" 30.0"), "{request_bytes}");
    })
    .await;
}
