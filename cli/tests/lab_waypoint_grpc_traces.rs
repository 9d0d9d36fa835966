//! gRPC and tracing through the waypoint, end to end in the lab (issue 6, section 7): a client
//! pod calls the gRPC sample app (`ambit app grpc` -> `ambit/grpc-echo`), unary and streaming,
//! over the node agents and the real waypoint pod; the waypoint, told by its Gateway's
//! `lab.ambit.dev/otlp-endpoint` annotation, sends a span per request to the sample OTLP
//! collector pod, whose log the test reads. One lab for the file. Needs root, as CI runs it.

mod common;

use std::time::Duration;

use common::eventually;
use common::lab::TestLab;
use common::traffic::{Expected, WAYPOINT_METRICS};

const MESH: &str = include_str!("manifests/waypoint_grpc_traces.yaml");
/// A caller's W3C trace context: trace id, then the caller's span id.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn grpc_calls_and_streams_pass_through_the_waypoint_and_each_request_is_traced() {
    let lab = TestLab::new("lg");
    lab.up(MESH);
    let client_ip = lab.pod_ip("client");
    unary_calls_and_a_status_code_pass_through(&lab, &client_ip);
    a_stream_is_answered_message_by_message(&lab, &client_ip);
    the_waypoint_counts_grpc_calls_by_status(&lab);
    a_traced_request_gets_a_waypoint_span_that_is_the_backends_parent(&lab);
}

/// `ambit app grpc` in pod client: its answer lines.
fn grpc(lab: &TestLab, args: &[&str]) -> Vec<String> {
    let mut command = vec!["exec", "client", "--", "ambit", "app", "grpc", "grpc:9090"];
    command.extend(args);
    lab.ok(&command).lines().map(str::to_owned).collect()
}

/// Two unary calls, answered by pod grpc, which saw them come from the client's own address;
/// then a call the server ends with status 7 (PERMISSION_DENIED), which reaches the client as
/// that status and not as an HTTP error of the waypoint's.
fn unary_calls_and_a_status_code_pass_through(lab: &TestLab, client_ip: &str) {
    let answers = grpc(lab, &["hello", "world"]);
    assert_eq!(answers.len(), 2, "{answers:?}");
    for (answer, message) in answers.iter().zip(["hello", "world"]) {
        let expected =
            format!("reply sequence=1 server=grpc message=\"{message}\" peer={client_ip}:");
        assert!(answer.starts_with(&expected), "{answer}");
    }
    let refused = grpc(lab, &["--code", "7", "nope"]);
    assert_eq!(refused, ["status code=7 message=\"asked for code 7\""]);
}

/// A bidirectional stream, on a route with retries (so the waypoint keeps a replay copy of the
/// request body as it streams): the client sends each message only once the previous one was
/// answered, so a waypoint holding the stream back would stop it, not slow it.
fn a_stream_is_answered_message_by_message(lab: &TestLab, client_ip: &str) {
    let messages = ["one", "two", "three", "four", "five"];
    let mut args = vec!["--stream"];
    args.extend(messages);
    let answers = grpc(lab, &args);
    assert_eq!(answers.len(), messages.len(), "{answers:?}");
    for (i, (answer, message)) in answers.iter().zip(messages).enumerate() {
        let expected = format!(
            "reply sequence={} server=grpc message=\"{message}\" peer={client_ip}:",
            i + 1
        );
        assert!(answer.starts_with(&expected), "{answer}");
    }
    let log = lab.log("demo-grpc-grpc-9090");
    for message in messages {
        assert!(
            log.lines()
                .any(|l| l == format!("answered 0 Chat {message}")),
            "{message} not answered:\n{log}"
        );
    }
}

/// Istio's request metrics with `request_protocol="grpc"` and the gRPC status of each call:
/// the three calls that were answered (two unary, one stream) and the one ended with 7.
fn the_waypoint_counts_grpc_calls_by_status(lab: &TestLab) {
    let expected: Vec<Expected> = [("0", 3), ("7", 1)]
        .into_iter()
        .map(|(status, n)| {
            let labels = vec![
                ("reporter", "waypoint"),
                ("source_workload", "client"),
                ("destination_workload", "grpc"),
                ("destination_service", "grpc.demo.svc.cluster.local"),
                ("request_protocol", "grpc"),
                ("grpc_response_status", status),
            ];
            ("istio_requests_total", labels, n)
        })
        .collect();
    lab.expect_metrics("waypoint-waypoint", WAYPOINT_METRICS, &expected);
}

/// A request that carries a `traceparent`: the collector gets the waypoint's SERVER span in
/// the caller's trace, with the caller's span as its parent and the request's attributes; and
/// the backend got the same trace with the waypoint's span as its parent. The gRPC calls were
/// traced too, one span per call.
fn a_traced_request_gets_a_waypoint_span_that_is_the_backends_parent(lab: &TestLab) {
    let traceparent = format!("traceparent=00-{TRACE}-{CALLER_SPAN}-01");
    let response = lab.http("client", "echo:80", "/traced", &["--header", &traceparent]);
    assert_eq!(response.status, 200, "{}", response.text);
    let seen = response
        .text
        .lines()
        .find_map(|l| l.strip_prefix("header traceparent: "))
        .unwrap_or_else(|| panic!("the backend got no traceparent:\n{}", response.text));
    let parent_of_backend = seen
        .strip_prefix(&format!("00-{TRACE}-"))
        .and_then(|rest| rest.strip_suffix("-01"))
        .unwrap_or_else(|| panic!("the backend got another trace: {seen}"));
    assert_ne!(parent_of_backend, CALLER_SPAN, "the waypoint made no span");

    let span = eventually(
        "the collector got the span",
        Duration::from_secs(20),
        || {
            let log = lab.log("observability-collector-otlp-4318");
            log.lines()
                .find(|l| l.starts_with(&format!("span trace={TRACE} ")))
                .map(str::to_owned)
                .ok_or(log)
        },
    );
    for field in [
        format!("id={parent_of_backend}"),
        format!("parent={CALLER_SPAN}"),
        "kind=server".to_owned(),
        "service=\"waypoint.demo\"".to_owned(),
        "http.request.method=\"GET\"".to_owned(),
        "url.path=\"/traced\"".to_owned(),
        "http.response.status_code=200".to_owned(),
        "istio.destination_workload=\"server\"".to_owned(),
    ] {
        assert!(
            span.split_whitespace().any(|f| f == field),
            "{field} not in {span}"
        );
    }
    let log = lab.log("observability-collector-otlp-4318");
    for (path, calls) in [
        ("/ambit.lab.v1.Echo/Say", 3),
        ("/ambit.lab.v1.Echo/Chat", 1),
    ] {
        let field = format!("url.path=\"{path}\"");
        let spans = log
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == field))
            .count();
        assert_eq!(spans, calls, "spans of {path}:\n{log}");
    }
}
