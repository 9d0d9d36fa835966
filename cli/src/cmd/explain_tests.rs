use super::*;
use crate::cmd::testing::fixture;

fn run(src: &str, dst: &str) -> Explanation {
    let dir = tempfile::tempdir().unwrap();
    let (state, mesh) = fixture(dir.path());
    explain(&state, &mesh.state, src, dst).unwrap()
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
    let err = explain(&state, &mesh.state, "client", "nosuch").unwrap_err();
    assert!(err.contains("no pod, service or IP"), "{err}");
    let err = explain(&state, &mesh.state, "client", "server").unwrap_err();
    assert!(err.contains("give the port"), "{err}");
    let err = explain(&state, &mesh.state, "nobody", "server:8080").unwrap_err();
    assert!(err.contains("no pod \"nobody\""), "{err}");
}
