//! Snapshot tests of the tables: a fixed lab (placement by hand), translated by the controller's
//! code exactly as `ambit get` does.

use super::*;
use crate::cmd::testing::fixture;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn pods_table() {
    let dir = tempdir();
    let (state, mesh) = fixture(dir.path());
    assert_eq!(
        pods(&state, &mesh.state),
        "\
NAMESPACE   NAME       NODE    IP           MESH                 STATUS
demo        client     node1   10.244.1.2   ambient (captured)   Idle
demo        server     node2   10.244.2.2   ambient (captured)   Idle
legacy      outsider   node1   10.244.1.3   -                    Idle
"
    );
}

#[test]
fn services_table() {
    let dir = tempdir();
    let (_, mesh) = fixture(dir.path());
    assert_eq!(
        services(&mesh.state),
        "\
NAMESPACE   NAME   VIP          PORTS      ENDPOINTS         WAYPOINT
demo        echo   10.96.0.10   80->8080   10.244.2.2:8080   -
"
    );
}

#[test]
fn policies_table() {
    let dir = tempdir();
    let (_, mesh) = fixture(dir.path());
    assert_eq!(
        policies(&mesh.state),
        "\
NAMESPACE   NAME          ACTION   RULES   APPLIES TO
demo        deny-client   DENY     1       demo/server
"
    );
}

#[test]
fn nodes_table() {
    let dir = tempdir();
    let (state, _) = fixture(dir.path());
    assert_eq!(
        nodes(&state, |n| format!("agent {n}")),
        "\
NODE    ADDRESS         POD CIDR        PODS   AGENT
node1   192.168.100.1   10.244.1.0/24   2      agent 1
node2   192.168.100.2   10.244.2.0/24   1      agent 2
"
    );
}

#[test]
fn exited_processes_are_named_with_their_last_log_line() {
    let dir = tempdir();
    let (mut state, _) = fixture(dir.path());
    assert_eq!(exited(&state), "", "nothing runs, nothing exited");
    let log = dir.path().join("demo-server-echo-8080.log");
    std::fs::write(
        &log,
        "starting\nambit: cannot listen on 0.0.0.0:8080: Address already in use (os error 98)\n",
    )
    .unwrap();
    // A pid no process has (above the kernel's maximum), so it is not alive.
    let gone = crate::lab::procs::Proc {
        pid: u32::MAX,
        start_time: 1,
        log: log.clone(),
    };
    state
        .pods
        .get_mut("demo/server")
        .unwrap()
        .processes
        .push(gone);
    assert_eq!(
        exited(&state),
        format!(
            "\
Exited (started again by the next apply, delete or label):
  demo/server: demo-server-echo-8080 exited: ambit: cannot listen on 0.0.0.0:8080: Address already in use (os error 98)
    log: {}
",
            log.display()
        )
    );
}
