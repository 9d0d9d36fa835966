use super::*;
use crate::cmd::testing::fixture;

fn run(src: &str, dst: &str) -> Explanation {
    let dir = tempfile::tempdir().unwrap();
    let (state, mesh) = fixture(dir.path());
    explain(
        &Placement::from_lab(&state),
        &mesh,
        src,
        dst,
        &Request::default(),
    )
    .unwrap()
}

#[test]
fn a_deny_policy_is_named_with_its_rule() {
    let e = run("client", "echo");
    assert_eq!(e.verdict, Verdict::Denied);
    let text = e.lines.join("\n");
    assert!(text.contains("HBONE tunnel"), "{text}");
    assert!(
        text.contains("denied by DENY policy demo/deny-client (rule 1)"),
        "{text}"
    );
}

#[test]
fn plaintext_from_outside_the_mesh_is_checked_by_the_destination_agent() {
    let e = run("legacy/outsider", "echo.demo:80");
    // The DENY names the client's identity; a plaintext client has none.
    assert_eq!(e.verdict, Verdict::Allowed);
    let text = e.lines.join("\n");
    assert!(text.contains("not captured"), "{text}");
    assert!(text.contains("kube-proxy"), "{text}");
    assert!(text.contains("inbound, port 15006"), "{text}");
}

#[test]
fn a_destination_outside_the_mesh_is_passed_through() {
    let e = run("client", "outsider:8080");
    assert_eq!(e.verdict, Verdict::Allowed);
    assert!(
        e.lines
            .join("\n")
            .contains("passes it through as plain TCP")
    );
}

#[test]
fn unknown_names_and_missing_ports_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (state, mesh) = fixture(dir.path());
    let pods = Placement::from_lab(&state);
    let explain = |src, dst| explain(&pods, &mesh, src, dst, &Request::default());
    let err = explain("client", "nosuch").unwrap_err();
    assert!(err.contains("no pod, service or IP"), "{err}");
    let err = explain("client", "server").unwrap_err();
    assert!(err.contains("give the port"), "{err}");
    let err = explain("nobody", "server:8080").unwrap_err();
    assert!(err.contains("no pod \"nobody\" in the lab"), "{err}");
}

/// `explain client echo:80` with `request` on the waypoint lab.
fn at_waypoint(method: &str, path: &str, headers: &[&str]) -> Explanation {
    let dir = tempfile::tempdir().unwrap();
    let (state, mesh) = crate::cmd::testing::waypoint_fixture(dir.path());
    let headers: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let request = Request::new(method, path, &headers).unwrap();
    explain(
        &Placement::from_lab(&state),
        &mesh,
        "client",
        "echo:80",
        &request,
    )
    .unwrap()
}

#[test]
fn the_waypoints_l7_policy_answers_403_and_names_the_rule() {
    let e = at_waypoint("GET", "/secret/keys", &[]);
    assert_eq!(e.verdict, Verdict::WaypointAnswers(403));
    let text = e.lines.join("\n");
    assert!(
        text.contains("uses waypoint demo/waypoint-waypoint"),
        "{text}"
    );
    assert!(
        text.contains(
            "L7 policy: policies bound to the waypoint or to service demo/echo: demo/no-secrets"
        ),
        "{text}"
    );
    assert!(
        text.contains("denied by DENY policy demo/no-secrets (rule 1)"),
        "{text}"
    );
    assert!(
        text.contains("Verdict: DENIED: the waypoint answers 403 Forbidden to GET /secret/keys"),
        "{text}"
    );
}

#[test]
fn an_allowed_request_follows_the_first_matching_rule_to_its_backend() {
    let e = at_waypoint("GET", "/hello", &[]);
    assert_eq!(
        e.verdict,
        Verdict::WaypointForwards(vec!["service demo/echo-v1".into()])
    );
    let text = e.lines.join("\n");
    assert!(text.contains("allowed: no authorization policy"), "{text}");
    assert!(text.contains("demo/echo rule 4 (any path)"), "{text}");
    assert!(
        text.contains("request headers: set x-routed-by: httproute"),
        "{text}"
    );
    assert!(
        text.contains("demo/server (10.244.2.2:8080), balanced by least request"),
        "{text}"
    );
    // The last hop: the endpoint's agent sees the waypoint as the client.
    assert!(
        text.contains("proving spiffe://cluster.local/ns/demo/sa/waypoint"),
        "{text}"
    );
}

#[test]
fn query_and_header_matches_pick_the_canary() {
    let v2 = Verdict::WaypointForwards(vec!["service demo/echo-v2".into()]);
    assert_eq!(at_waypoint("GET", "/hello?version=v2", &[]).verdict, v2);
    let e = at_waypoint("GET", "/hello", &["x-canary=yes"]);
    assert_eq!(e.verdict, v2);
    assert!(
        e.lines
            .join("\n")
            .contains("demo/echo rule 1 (any path, header x-canary)"),
        "{:#?}",
        e.lines
    );
    // Any other value of the header does not match.
    let e = at_waypoint("GET", "/hello", &["x-canary=no"]);
    assert_eq!(
        e.verdict,
        Verdict::WaypointForwards(vec!["service demo/echo-v1".into()])
    );
}

#[test]
fn an_injected_fault_and_a_weighted_split_are_explained() {
    let e = at_waypoint("GET", "/teapot", &[]);
    assert_eq!(e.verdict, Verdict::WaypointAnswers(418));
    assert!(
        e.lines.join("\n").contains(
            "ANSWERED BY THE WAYPOINT: the waypoint answers 418 I'm a teapot to GET /teapot"
        ),
        "{:#?}",
        e.lines
    );
    let e = at_waypoint("POST", "/split/x", &[]);
    assert_eq!(
        e.verdict,
        Verdict::WaypointForwards(vec![
            "service demo/echo-v1 (90%)".into(),
            "service demo/echo-v2 (10%)".into()
        ])
    );
}

#[test]
fn request_attributes_are_checked() {
    assert!(Request::new("GET", "hello", &[]).is_err());
    assert!(Request::new("GET", "/", &["novalue".into()]).is_err());
    let r = Request::new("post", "/a?b=c", &["Host=echo.demo".into()]).unwrap();
    assert_eq!(r.method, http::Method::POST);
    assert_eq!((r.path.as_str(), r.query.as_deref()), ("/a", Some("b=c")));
    assert_eq!(r.host("echo:80"), "echo.demo");
}
