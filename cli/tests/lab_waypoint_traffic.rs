//! The waypoint's routing, resilience and L7 policy end to end in the lab (issue 6, section 7):
//! the real controller translates Kubernetes YAML (Gateway, HTTPRoute with weights, header
//! matches, GEP-1731 retries and timeouts, HTTPFault, AuthorizationPolicy) for the real waypoint
//! pod, the node agents carry a client pod's requests to it over HBONE, and each check reads
//! what the client got, what the echo servers answered (their logs), and what the waypoint
//! counted. One lab for the whole file, as its bring-up costs more than most checks. Needs root,
//! as CI runs it.

mod common;

use std::time::{Duration, Instant};

use common::eventually;
use common::lab::TestLab;
use common::traffic::{Expected, Tally, WAYPOINT_METRICS, answered, metric};

const MESH: &str = include_str!("manifests/waypoint_traffic.yaml");

/// Requests for the canary split, and how many fly at once (a lab request takes a few
/// milliseconds, mostly waiting on the two agents and the waypoint).
const SPLIT_REQUESTS: u64 = 1000;
const CONCURRENCY: u64 = 8;

#[test]
fn the_waypoint_routes_retries_times_out_injects_faults_and_denies_as_configured() {
    let lab = TestLab::new("lt");
    lab.up(MESH);
    let (v1, v2) = a_weighted_split_holds_over_a_thousand_requests(&lab);
    the_waypoint_counts_each_request_by_destination(&lab, v1, v2);
    a_header_match_sends_everything_to_the_canary(&lab);
    retries_turn_a_backend_failing_half_its_requests_into_full_success(&lab);
    a_per_try_timeout_gives_504_and_the_backend_saw_each_try(&lab);
    an_injected_delay_holds_the_request_and_an_injected_abort_answers_for_the_backend(&lab);
    l7_deny_by_path_and_by_method_gives_403_and_other_requests_pass(&lab);
    each_answer_the_waypoint_made_itself_is_counted_with_its_flag(&lab);
}

/// `/split` is weighted 90/10 between echo-v1 (pod server) and echo-v2 (pod server-v2). Over
/// 1,000 requests every one is answered, and v2's share lies within five standard deviations of
/// 10%: binomial, sd = sqrt(1000 x 0.1 x 0.9) = 9.5, so 100 +- 47; a correct split falls outside
/// once in about 1.7 million runs, a split that ignored the weights (500) or sent everything to
/// one side never falls inside. Each server answered exactly what the client counted from it.
fn a_weighted_split_holds_over_a_thousand_requests(lab: &TestLab) -> (u64, u64) {
    let tally = lab.tally(
        "client",
        "echo:80",
        "/split",
        (SPLIT_REQUESTS, CONCURRENCY),
        &[],
    );
    let (v1, v2) = (tally.count(200, "server"), tally.count(200, "server-v2"));
    assert_eq!(v1 + v2, SPLIT_REQUESTS, "{tally:?}");
    let sd = (SPLIT_REQUESTS as f64 * 0.1 * 0.9).sqrt();
    let band = (SPLIT_REQUESTS as f64 * 0.1 - 5.0 * sd)..=(SPLIT_REQUESTS as f64 * 0.1 + 5.0 * sd);
    assert!(
        band.contains(&(v2 as f64)),
        "{v2} of {SPLIT_REQUESTS} went to v2, outside {band:?}"
    );
    for (pod, n) in [("server", v1), ("server-v2", v2)] {
        let log = lab.log(&format!("demo-{pod}-echo-8080"));
        assert_eq!(answered(&log, 200, "GET", "/split") as u64, n, "{pod}");
    }
    (v1, v2)
}

/// Istio's request metrics, `reporter="waypoint"`, with the client's identity and the workload
/// each request went to: exactly the split's counts, in the counter and in the duration
/// histogram.
fn the_waypoint_counts_each_request_by_destination(lab: &TestLab, v1: u64, v2: u64) {
    let client = [
        ("reporter", "waypoint"),
        ("source_workload", "client"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/demo/sa/client",
        ),
        ("request_protocol", "http"),
        ("response_code", "200"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let mut expected = Vec::new();
    for (workload, service, n) in [
        ("server", "echo-v1.demo.svc.cluster.local", v1),
        ("server-v2", "echo-v2.demo.svc.cluster.local", v2),
    ] {
        let to = [
            ("destination_workload", workload),
            ("destination_service", service),
        ];
        let labels = [&client[..], &to[..]].concat();
        for family in [
            "istio_requests_total",
            "istio_request_duration_milliseconds_count",
        ] {
            expected.push((family, labels.clone(), n));
        }
    }
    lab.expect_metrics("waypoint-waypoint", WAYPOINT_METRICS, &expected);
}

/// The rule matching `x-canary: yes` (and any path) sends every request with that header to
/// v2, whatever its method; without it, the catch-all rule sends every request to v1. (A longer
/// path match, `/split`, would still win over the header, as Gateway API's precedence says.)
fn a_header_match_sends_everything_to_the_canary(lab: &TestLab) {
    let canary = ["--header", "x-canary=yes"];
    let post = ["--header", "x-canary=yes", "--method", "POST"];
    for (path, args) in [
        ("/hello", &canary[..]),
        ("/items/7", &canary),
        ("/hello", &post),
    ] {
        let tally = lab.tally("client", "echo:80", path, (20, CONCURRENCY), args);
        assert_eq!(tally, Tally::only(200, "server-v2", 20), "{path} {args:?}");
    }
    let tally = lab.tally("client", "echo:80", "/hello", (20, CONCURRENCY), &[]);
    assert_eq!(tally, Tally::only(200, "server", 20));
}

/// Pod flaky answers every second request it gets with 503. Where its route has no retry
/// policy (`/`) the client sees exactly that; under `/retried` (retry on 503, 2 attempts) every
/// request succeeds, although the server failed about half of the tries it answered there:
/// the waypoint retried each of those, and counted them.
fn retries_turn_a_backend_failing_half_its_requests_into_full_success(lab: &TestLab) {
    let retries = || {
        let metrics = lab.metrics("waypoint-waypoint", WAYPOINT_METRICS);
        metric(&metrics, "ambit_waypoint_retries_total", &[])
    };
    // Of any 100 requests in a row the server fails 50, however they interleave.
    let unretried = lab.tally("client", "flaky:80", "/", (100, CONCURRENCY), &[]);
    let mut flaky = Tally::only(200, "flaky", 50);
    flaky.answers.insert((503, "flaky".into()), 50);
    assert_eq!(unretried, flaky, "the backend is flaky");

    let before = retries();
    // One at a time, so each retry is the server's next request, which it answers.
    let retried = lab.tally("client", "flaky:80", "/retried", (100, 1), &[]);
    assert_eq!(retried, Tally::only(200, "flaky", 100));
    let log = lab.log("demo-flaky-echo-8080");
    let succeeded = answered(&log, 200, "GET", "/retried");
    let failed = answered(&log, 503, "GET", "/retried");
    assert_eq!(succeeded, 100, "one success per request");
    let tries = succeeded + failed;
    assert!(
        failed > 0 && tries.abs_diff(2 * failed) <= 1,
        "{failed} of {tries} tries failed: not every second one"
    );
    assert_eq!(retries() - before, failed as u64, "a retry per failed try");
}

/// Pod slow answers after 600 ms. Under `/per-try` a try may take 200 ms and a 504 is retried
/// once: the client gets the waypoint's 504 naming the per-try timeout, and the server got (and
/// later answered, to nobody) both tries. Elsewhere the route allows 5 s, and slow's answer
/// comes through.
fn a_per_try_timeout_gives_504_and_the_backend_saw_each_try(lab: &TestLab) {
    let timed_out = lab.http("client", "slow:80", "/per-try", &[]);
    assert_eq!(timed_out.status, 504, "{}", timed_out.text);
    assert!(
        timed_out.reason.contains("per-try timeout"),
        "{}",
        timed_out.text
    );
    let patient = lab.http("client", "slow:80", "/report", &[]);
    patient.assert_answered(200, "slow");
    // The tries' late answers: due by now, as they started before the patient request.
    eventually("slow answered both tries", Duration::from_secs(10), || {
        let log = lab.log("demo-slow-echo-8080");
        match answered(&log, 200, "GET", "/per-try") {
            2 => Ok(()),
            n => Err(format!("{n} tries in\n{log}")),
        }
    });
}

/// HTTPFault `delay` (500 ms, every request) on `/delayed`: v1 answers, and not before the
/// delay has passed (a lower bound, which a slow machine cannot break). HTTPFault `abort` (503,
/// every request) on `/aborted`: the waypoint answers for the backend, which never sees it.
fn an_injected_delay_holds_the_request_and_an_injected_abort_answers_for_the_backend(
    lab: &TestLab,
) {
    let start = Instant::now();
    let delayed = lab.http("client", "echo:80", "/delayed", &[]);
    let took = start.elapsed();
    delayed.assert_answered(200, "server");
    assert!(
        took >= Duration::from_millis(500),
        "answered after {took:?}"
    );

    let aborted = lab.http("client", "echo:80", "/aborted", &[]);
    aborted.assert_answered(503, "");
    assert!(aborted.reason.contains("fault"), "{}", aborted.text);
    let log = lab.log("demo-server-echo-8080");
    assert!(
        !log.contains(" /aborted"),
        "v1 saw the aborted request:\n{log}"
    );
}

/// Two DENY policies bound to the waypoint: paths `/admin*` and method DELETE. Each denied
/// request gets 403 naming its policy and never reaches a server; other paths (one with
/// `admin` further in) and other methods pass.
fn l7_deny_by_path_and_by_method_gives_403_and_other_requests_pass(lab: &TestLab) {
    for (method, path, policy) in [
        ("GET", "/admin/users", "demo/no-admin"),
        ("POST", "/administrator", "demo/no-admin"),
        ("DELETE", "/items/1", "demo/no-delete"),
    ] {
        let denied = lab.http("client", "echo:80", path, &["--method", method]);
        assert_eq!(denied.status, 403, "{method} {path}: {}", denied.text);
        assert!(denied.reason.contains(policy), "{}", denied.text);
    }
    for (method, path) in [
        ("GET", "/items/1"),
        ("PUT", "/items/1"),
        ("GET", "/public/admin"),
    ] {
        let passed = lab.http("client", "echo:80", path, &["--method", method]);
        passed.assert_answered(200, "server");
    }
    let log = lab.log("demo-server-echo-8080");
    for denied in [" /admin", "DELETE "] {
        assert!(!log.contains(denied), "{denied} reached v1:\n{log}");
    }
}

/// The answers the waypoint made itself are in its request metrics too, each with Envoy's
/// response flag: the policy's 403s (RBAC), the abort (FI), the per-try timeout (UT), and the
/// delayed request (DI, answered by v1).
fn each_answer_the_waypoint_made_itself_is_counted_with_its_flag(lab: &TestLab) {
    let expected: Vec<Expected> = [
        ("403", "RBAC", 3),
        ("503", "FI", 1),
        ("504", "UT", 1),
        ("200", "DI", 1),
    ]
    .into_iter()
    .map(|(code, flag, n)| {
        let labels = vec![
            ("reporter", "waypoint"),
            ("response_code", code),
            ("response_flags", flag),
        ];
        ("istio_requests_total", labels, n)
    })
    .collect();
    lab.expect_metrics("waypoint-waypoint", WAYPOINT_METRICS, &expected);
}
