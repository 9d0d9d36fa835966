//! A waypoint in the lab, configured the way users configure one: Gateway API HTTPRoute (query
//! match, weights), an `HTTPFault` named by an ExtensionRef, a DestinationRule and an L7
//! AuthorizationPolicy, all translated by the controller and applied by the waypoint, checked
//! from a client pod and in the waypoint's access log; and `ambit explain` says what the
//! waypoint does with each of those requests. Needs root, as CI runs it.

mod common;

use common::lab::TestLab;

/// The same objects the unit tests of `explain` translate (`cmd::testing::WAYPOINT_LAB`).
const MESH: &str = include_str!("../src/cmd/testing_waypoint.yaml");

/// `GET <path>` from the client pod to Service echo: the status line and the server's name.
fn get(lab: &TestLab, path: &str) -> (String, String, String) {
    get_with(lab, path, &[])
}

/// [`get`] with request headers (`name=value`).
fn get_with(lab: &TestLab, path: &str, headers: &[&str]) -> (String, String, String) {
    let mut args = vec![
        "exec", "client", "--", "ambit", "app", "connect", "echo:80", "--http", path,
    ];
    for h in headers {
        args.extend(["--header", h]);
    }
    let out = lab.ok(&args);
    let status = out.lines().next().unwrap_or_default().to_owned();
    let server = out
        .lines()
        .find_map(|l| l.strip_prefix("server="))
        .unwrap_or_default()
        .to_owned();
    (status, server, out)
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
    let (status, server, out) = get_with(lab, path, headers);
    let what = format!("GET {path} {headers:?}: explain said\n{explained}\nthe request got\n{out}");
    if let Some(rest) = verdict.split_once("the waypoint answers ").map(|(_, r)| r) {
        let code = rest.split_whitespace().next().unwrap();
        assert!(status.starts_with(&format!("HTTP/1.1 {code}")), "{what}");
    } else {
        assert!(
            verdict.starts_with("Verdict: ALLOWED: the waypoint forwards"),
            "{what}"
        );
        assert!(status.starts_with("HTTP/1.1 200"), "{what}");
        // The server that answered is an endpoint of the backend explain picked.
        let endpoints: Vec<&str> = explained
            .lines()
            .filter_map(|l| l.split_once("endpoint(s) ").map(|(_, e)| e))
            .flat_map(|e| e.split(", "))
            .filter_map(|e| e.split_whitespace().next())
            .collect();
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
        let (status, server, out) = get(&lab, "/hello");
        assert!(status.starts_with("HTTP/1.1 200"), "{out}");
        assert!(server.contains("server") && !server.contains("v2"), "{out}");
        assert!(out.contains("header x-routed-by: httproute"), "{out}");
    }
    // A query-parameter match sends to v2.
    let (status, server, out) = get(&lab, "/hello?version=v2");
    assert!(
        status.starts_with("HTTP/1.1 200") && server.contains("server-v2"),
        "{out}"
    );
    // The HTTPFault the rule names aborts every request with its status.
    let (status, _, out) = get(&lab, "/teapot");
    assert!(status.starts_with("HTTP/1.1 418"), "{out}");
    // L7 policy at the waypoint: 403 with the policy named.
    let (status, _, out) = get(&lab, "/secret/keys");
    assert!(status.starts_with("HTTP/1.1 403"), "{out}");

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
    let log = std::fs::read_to_string(lab.root().join("logs/demo-waypoint-waypoint-waypoint.log"))
        .unwrap_or_default();
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, server, out) = get(&lab, "/teapot");
        if server.contains("server-v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new route never applied: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Only via the waypoint: the pod dialled directly (bypassing the waypoint's L7 policy) is
    // refused by its node agent, while the service, through the waypoint, still answers.
    lab.ok(&["label", "namespace", "demo", "ambit.dev/waypoint-only=true"]);
    let pods = lab.ok(&["get", "pods"]);
    let server_ip = pods
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.get(1) == Some(&"server"))
        .map(|cols| cols[3].to_owned())
        .unwrap_or_else(|| panic!("no server pod in {pods}"));
    let direct = format!("{server_ip}:8080");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = lab.run(&[
            "exec", "client", "--", "ambit", "app", "connect", &direct, "--http", "/secret",
        ]);
        if !out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bypass was never refused: {out:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (status, _, out) = get(&lab, "/hello");
    assert!(status.starts_with("HTTP/1.1 200"), "{out}");
}
