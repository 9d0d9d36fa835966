//! A waypoint in the lab, configured the way users configure one: Gateway API HTTPRoute (query
//! match, weights), an `HTTPFault` named by an ExtensionRef, a DestinationRule and an L7
//! AuthorizationPolicy, all translated by the controller and applied by the waypoint, checked
//! from a client pod and in the waypoint's access log; and `ambit explain` says what the
//! waypoint does with each of those requests. Needs root, as CI runs it.

mod common;

use std::time::Duration;

use common::eventually;
use common::lab::TestLab;
use common::traffic::Response;

/// The same objects the unit tests of `explain` translate (`cmd::testing::WAYPOINT_LAB`).
const MESH: &str = include_str!("../src/cmd/testing_waypoint.yaml");

/// `GET <path>` from the client pod to Service echo.
fn get(lab: &TestLab, path: &str) -> Response {
    get_with(lab, path, &[])
}

/// [`get`] with request headers (`name=value`).
fn get_with(lab: &TestLab, path: &str, headers: &[&str]) -> Response {
    let args: Vec<&str> = headers.iter().flat_map(|h| ["--header", h]).collect();
    lab.http("client", "echo:80", path, &args)
}

/// `ambit explain client echo:80` for `GET <path>` with `headers`, against what the request
/// gets: the status the waypoint answers itself, or a 200 from one of the endpoints explain
/// names for the backend it picks.
fn explain_agrees(lab: &TestLab, path: &str, headers: &[&str]) {
    let mut args = vec!["explain", "client", "echo:80", "--path", path];
    for h in headers {
        args.extend(["--header", h]);
    }
    let explained = lab.ok(&args);
    let verdict = explained
        .lines()
        .find(|l| l.starts_with("Verdict: "))
        .unwrap_or_else(|| panic!("no verdict in:\n{explained}"));
    let got = get_with(lab, path, headers);
    let what = format!(
        "GET {path} {headers:?}: explain said\n{explained}\nthe request got\n{}",
        got.text
    );
    if let Some(rest) = verdict.split_once("the waypoint answers ").map(|(_, r)| r) {
        let code = rest.split_whitespace().next().unwrap();
        assert_eq!(got.status.to_string(), code, "{what}");
    } else {
        assert!(
            verdict.starts_with("Verdict: ALLOWED: the waypoint forwards"),
            "{what}"
        );
        assert_eq!(got.status, 200, "{what}");
        // The server that answered is an endpoint of the backend explain picked.
        let endpoints: Vec<&str> = explained
            .lines()
            .filter_map(|l| l.split_once("endpoint(s) ").map(|(_, e)| e))
            .flat_map(|e| e.split(", "))
            .filter_map(|e| e.split_whitespace().next())
            .collect();
        let server = &got.server;
        assert!(
            endpoints.iter().any(|e| *e == format!("demo/{server}")),
            "{server} is not among {endpoints:?}: {what}"
        );
    }
}

#[test]
fn the_controller_configures_the_waypoint_from_httproute_faults_and_policies() {
    let lab = TestLab::new("lr");
    lab.up(MESH);

    // The catch-all rule: v1 only, with the header the route adds.
    for _ in 0..5 {
        let got = get(&lab, "/hello");
        got.assert_answered(200, "server");
        assert!(
            got.text.contains("header x-routed-by: httproute"),
            "{}",
            got.text
        );
    }
    // A query-parameter match sends to v2.
    let got = get(&lab, "/hello?version=v2");
    got.assert_answered(200, "server-v2");
    // The HTTPFault the rule names aborts every request with its status.
    let got = get(&lab, "/teapot");
    assert_eq!(got.status, 418, "{}", got.text);
    // L7 policy at the waypoint: 403 with the policy named.
    let got = get(&lab, "/secret/keys");
    assert_eq!(got.status, 403, "{}", got.text);
    assert!(got.reason.contains("demo/no-secrets"), "{}", got.text);

    // explain says what the waypoint does with each request, and the waypoint does it.
    for (path, headers) in [
        ("/secret/keys", &[][..]),
        ("/hello", &[]),
        ("/hello?version=v2", &[]),
        ("/hello", &["x-canary=yes"]),
        ("/teapot", &[]),
    ] {
        explain_agrees(&lab, path, headers);
    }

    // The waypoint saw and logged each of them.
    let log = lab.log("demo-waypoint-waypoint-waypoint");
    for needle in [
        "path=/teapot",
        "status=418",
        "path=/secret/keys",
        "status=403",
    ] {
        assert!(
            log.contains(needle),
            "{needle} not in the waypoint's log:\n{log}"
        );
    }

    // The route changes while the lab runs: the waypoint follows (v2 for everything).
    let file = lab.dir.path().join("route.yaml");
    std::fs::write(
        &file,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: echo, namespace: demo}\n\
         spec: {parentRefs: [{group: '', kind: Service, name: echo}], rules: [{backendRefs: [{name: echo-v2, port: 80}]}]}\n",
    )
    .unwrap();
    lab.ok(&["apply", "-f", file.to_str().unwrap()]);
    eventually("the new route applies", Duration::from_secs(30), || {
        let got = get(&lab, "/teapot");
        (got.server == "server-v2").then_some(()).ok_or(got.text)
    });

    // Only via the waypoint: the pod dialled directly (bypassing the waypoint's L7 policy) is
    // refused by its node agent, while the service, through the waypoint, still answers.
    lab.ok(&["label", "namespace", "demo", "ambit.dev/waypoint-only=true"]);
    let direct = format!("{}:8080", lab.pod_ip("server"));
    eventually("the bypass is refused", Duration::from_secs(30), || {
        let out = lab.run(&[
            "exec", "client", "--", "ambit", "app", "connect", &direct, "--http", "/secret",
        ]);
        (!out.status.success())
            .then_some(())
            .ok_or_else(|| format!("{out:?}"))
    });
    let got = get(&lab, "/hello");
    assert_eq!(got.status, 200, "{}", got.text);
}
