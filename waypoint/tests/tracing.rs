//! OpenTelemetry traces: a span per request sent to an OTLP/HTTP collector, continuing the
//! caller's W3C trace context and handing the backend the waypoint's span as its parent.

mod common;

use std::time::Duration;

use ambit_waypoint::config::Config;
use ambit_waypoint::proxy::Protocol;
use ambit_waypoint::trace::context::{TraceParent, to_hex};
use ambit_waypoint::trace::{Endpoint, TraceSettings, otlp};
use clap::Parser;
use common::collector::Collector;
use common::*;
use http_body_util::Full;

const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const VIP: &str = "10.96.7.10";

fn settings(collector: &Collector) -> TraceSettings {
    TraceSettings {
        endpoint: Endpoint::parse(&collector.endpoint()).unwrap(),
        sampling: 1.0,
        flush_interval: Duration::from_millis(100),
        queue: 2048,
        service_name: "waypoint.shop".into(),
        namespace: NS.into(),
    }
}

/// A traced waypoint in front of one echo backend (failing every request with `fail_status`
/// when it is not 0).
async fn traced(collector: &Collector, fail_status: u16) -> Mesh {
    let mesh = Mesh::start_with(Some(settings(collector))).await;
    let behaviour = Behaviour {
        fail_every: u64::from(fail_status != 0),
        fail_status,
        ..Behaviour::default()
    };
    let b = Backend::start(&mesh, "echo-1", behaviour).await;
    mesh.service("echo", VIP, &[&b]);
    mesh
}

async fn send(mesh: &Mesh, headers: &[(&str, &str)]) -> Answer {
    let mut client = mesh.http(VIP, Protocol::Http1).await;
    let mut req = get("/items/7");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    client.send(req.body(Full::default()).unwrap()).await
}

fn attribute<'a>(span: &'a otlp::Span, key: &str) -> &'a otlp::any_value::Value {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
        .unwrap_or_else(|| panic!("no attribute {key} in {:#?}", span.attributes))
}

fn text<'a>(span: &'a otlp::Span, key: &str) -> &'a str {
    match attribute(span, key) {
        otlp::any_value::Value::StringValue(s) => s,
        other => panic!("{key} is {other:?}"),
    }
}

/// The traceparent the backend received.
fn seen_by_backend(answer: &Answer) -> TraceParent {
    let value = answer.header("x-req-traceparent");
    TraceParent::parse(value.as_bytes())
        .unwrap_or_else(|e| panic!("backend saw traceparent {value:?}: {e}"))
}

#[tokio::test]
async fn a_request_with_a_traceparent_gets_a_child_span_that_is_the_backends_parent() {
    within(async {
        let collector = Collector::start().await;
        let mesh = traced(&collector, 0).await;
        let answer = send(
            &mesh,
            &[("traceparent", INCOMING), ("tracestate", "vendor=abc")],
        )
        .await;
        assert_eq!(answer.status, 200);

        let spans = collector.spans(1).await;
        let span = &spans[0];
        assert_eq!(to_hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&span.parent_span_id), "00f067aa0ba902b7");
        assert_eq!(span.span_id.len(), 8);
        assert_ne!(span.span_id, span.parent_span_id);
        assert_eq!(span.kind, otlp::span::SpanKind::Server as i32);
        assert_eq!(span.trace_state, "vendor=abc");
        assert_eq!(span.name, "echo.shop.svc.cluster.local:80/*");
        assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
        assert!(span.start_time_unix_nano > 0);
        assert!(span.status.is_none(), "{:?}", span.status);

        // The backend's parent is the waypoint's span, in the same trace; tracestate kept.
        let sent = seen_by_backend(&answer);
        assert_eq!(sent.trace_id.to_vec(), span.trace_id);
        assert_eq!(sent.span_id.to_vec(), span.span_id);
        assert!(sent.sampled);
        assert_eq!(answer.header("x-req-tracestate"), "vendor=abc");

        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.path", "/items/7"),
            ("server.address", "svc.test"),
            ("istio.source_workload", "client"),
            ("istio.source_workload_namespace", "frontend"),
            (
                "istio.source_principal",
                "spiffe://cluster.local/ns/frontend/sa/client",
            ),
            ("istio.destination_workload", "echo-1"),
            ("istio.destination_workload_namespace", "shop"),
            (
                "istio.destination_principal",
                "spiffe://cluster.local/ns/shop/sa/backend",
            ),
            ("istio.destination_service", "echo.shop.svc.cluster.local"),
            ("ambit.route", "default"),
        ] {
            assert_eq!(text(span, key), value, "{key}");
        }
        assert!(matches!(
            attribute(span, "http.response.status_code"),
            otlp::any_value::Value::IntValue(200)
        ));
        assert!(text(span, "upstream_address").starts_with("127.0.0."));

        let received = collector.received.lock().unwrap();
        let resource = &received.resources[0];
        assert!(resource.attributes.iter().any(|a| a.key == "service.name"
            && a.value.as_ref().and_then(|v| v.value.as_ref())
                == Some(&otlp::any_value::Value::StringValue("waypoint.shop".into()))));
    })
    .await;
}

#[tokio::test]
async fn without_a_valid_traceparent_a_new_trace_is_started_and_propagated() {
    within(async {
        let collector = Collector::start().await;
        let mesh = traced(&collector, 0).await;
        let fresh = send(&mesh, &[]).await;
        // Version ff is invalid: a new trace, and the orphaned tracestate is not passed on.
        let malformed = "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let restarted = send(
            &mesh,
            &[("traceparent", malformed), ("tracestate", "vendor=abc")],
        )
        .await;
        assert_eq!(restarted.header("x-req-tracestate"), "");

        let spans = collector.spans(2).await;
        for answer in [&fresh, &restarted] {
            let sent = seen_by_backend(answer);
            let span = spans
                .iter()
                .find(|s| s.span_id == sent.span_id)
                .expect("the backend's parent is an exported span");
            assert_eq!(span.trace_id, sent.trace_id.to_vec());
            assert!(span.parent_span_id.is_empty(), "a root span");
            assert_ne!(to_hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert!(sent.sampled);
        }
        assert_ne!(spans[0].trace_id, spans[1].trace_id);
    })
    .await;
}

#[tokio::test]
async fn an_unsampled_trace_is_propagated_but_not_exported() {
    within(async {
        let collector = Collector::start().await;
        let mesh = traced(&collector, 0).await;
        let unsampled = INCOMING.replace("-01", "-00");
        let answer = send(&mesh, &[("traceparent", unsampled.as_str())]).await;
        let sent = seen_by_backend(&answer);
        assert_eq!(to_hex(&sent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!sent.sampled, "the caller's decision is kept");

        let sampled = send(&mesh, &[("traceparent", INCOMING)]).await;
        assert!(seen_by_backend(&sampled).sampled);
        // Shutdown sends everything queued: only the sampled request's span is there.
        mesh.flush_traces().await;
        let spans = collector.spans(1).await;
        assert_eq!(spans.len(), 1, "{spans:#?}");
        assert_eq!(spans[0].span_id, seen_by_backend(&sampled).span_id.to_vec());
        assert!(
            mesh.metrics()
                .contains("ambit_waypoint_trace_spans_exported_total 1")
        );
    })
    .await;
}

#[tokio::test]
async fn a_5xx_answer_is_an_error_span() {
    within(async {
        let collector = Collector::start().await;
        let mesh = traced(&collector, 503).await;
        let answer = send(&mesh, &[("traceparent", INCOMING)]).await;
        assert_eq!(answer.status, 503);
        let spans = collector.spans(1).await;
        let status = spans[0].status.as_ref().expect("a status");
        assert_eq!(status.code, otlp::status::StatusCode::Error as i32);
        assert!(matches!(
            attribute(&spans[0], "http.response.status_code"),
            otlp::any_value::Value::IntValue(503)
        ));
    })
    .await;
}

#[tokio::test]
async fn tracing_is_off_by_default_and_leaves_traceparent_alone() {
    within(async {
        let config = Config::try_parse_from([
            "ambit-waypoint",
            "--waypoint",
            "shop/waypoint",
            "--root-cert",
            "r",
            "--token-file",
            "t",
        ])
        .unwrap();
        let mesh = Mesh::start_with(config.trace_settings()).await;
        let b = Backend::start(&mesh, "echo-1", Behaviour::default()).await;
        mesh.service("echo", VIP, &[&b]);
        let answer = send(
            &mesh,
            &[("traceparent", INCOMING), ("tracestate", "vendor=abc")],
        )
        .await;
        assert_eq!(answer.status, 200);
        // Passed through exactly as sent: no span of ours in between.
        assert_eq!(answer.header("x-req-traceparent"), INCOMING);
        assert_eq!(answer.header("x-req-tracestate"), "vendor=abc");
        assert!(
            mesh.metrics()
                .contains("ambit_waypoint_trace_spans_exported_total 0")
        );
    })
    .await;
}
