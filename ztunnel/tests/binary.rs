//! The `ambit-ztunnel` binary's start-up contract. (Its data path is tested end to end in
//! tests/, in network namespaces.)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ambit-ztunnel");

#[test]
fn bad_settings_are_all_reported_with_exit_64() {
    let out = Command::new(BIN)
        .args([
            "--node-name",
            "node1",
            "--root-cert",
            "/nonexistent/root.pem",
            "--token-file",
            "/nonexistent/token",
            "--admin-addr",
            "127.0.0.1:15001",
            "--outbound-addr",
            "127.0.0.1:15001",
            "--idle-timeout",
            "0s",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "--root-cert /nonexistent/root.pem",
        "--token-file /nonexistent/token",
        "--outbound-addr and --admin-addr",
        "--idle-timeout must be more than 0",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn an_unparsable_flag_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["--node-name", "n", "--socket-mark", "lots"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--socket-mark"));
}
