//! `ambit app echo` and `ambit app connect` as processes over loopback TCP: what the client
//! prints, and the exit status that says how a connection failed. Needs no privileges.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};

use common::{AMBIT, Echo, echo_args};

fn echo(name: &str) -> Echo {
    let listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    Echo::spawn(echo_args(Command::new(AMBIT), listen, name))
}

fn ambit(args: &[&str]) -> Output {
    Command::new(AMBIT).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn connect_prints_the_greeting_and_the_echo() {
    let server = echo("loop");
    let addr = server.addr.to_string();

    let out = ambit(&["app", "connect", &addr]);
    assert!(out.status.success(), "{out:?}");
    let greeting = stdout(&out);
    let accepted = server.next_line();
    let peer = accepted.strip_prefix("accepted ").unwrap();
    assert_eq!(greeting, format!("hello from loop; you are {peer}\n"));

    let out = ambit(&["app", "connect", &addr, "--send", "one\ntwo"]);
    assert!(out.status.success(), "{out:?}");
    let peer = server.next_line().replace("accepted ", "");
    assert_eq!(
        stdout(&out),
        format!("hello from loop; you are {peer}\none\ntwo")
    );
}

#[test]
fn connect_over_http_prints_the_servers_report() {
    let server = echo("web");
    let out = ambit(&[
        "app",
        "connect",
        &server.addr.to_string(),
        "--http",
        "/status/418",
    ]);
    assert!(out.status.success(), "{out:?}");
    let response = stdout(&out);
    let peer = server.next_line().replace("accepted ", "");
    assert!(
        response.starts_with("HTTP/1.1 418 Status\r\n"),
        "{response}"
    );
    assert!(response.contains("\r\nconnection: close\r\n"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    assert_eq!(
        body,
        format!(
            "server=web\nclient={peer}\nrequest=GET /status/418 HTTP/1.1\n\
             header host: {}\nheader user-agent: ambit-connect\nheader connection: close\n\
             body-bytes=0\n",
            server.addr
        )
    );
}

#[test]
fn refusal_timeout_and_reset_have_their_own_exit_status() {
    // Refused: nothing listens on a port that was just free.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = ambit(&["app", "connect", &closed.to_string()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused"));

    // Timed out: the kernel completes the handshake, but nobody ever accepts or answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let out = ambit(&["app", "connect", &addr, "--timeout", "200ms"]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");

    // Reset: the server accepts and aborts (SO_LINGER 0 makes close send RST).
    let resetting = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = resetting.local_addr().unwrap().to_string();
    let aborter = std::thread::spawn(move || {
        let (stream, _) = resetting.accept().unwrap();
        socket2::SockRef::from(&stream)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
    });
    let out = ambit(&["app", "connect", &addr]);
    aborter.join().unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
}

#[test]
fn bad_usage_exits_64() {
    assert_eq!(
        ambit(&["app", "connect", "not-an-address"]).status.code(),
        Some(64)
    );
    let both = [
        "app",
        "connect",
        "127.0.0.1:1",
        "--send",
        "x",
        "--http",
        "/",
    ];
    assert_eq!(ambit(&both).status.code(), Some(64));
    assert_eq!(
        ambit(&["app", "connect", "127.0.0.1:1", "--timeout", "5h"])
            .status
            .code(),
        Some(64)
    );
    assert_eq!(
        ambit(&["app", "echo", "--listen", "nowhere"]).status.code(),
        Some(64)
    );
    assert!(ambit(&["app", "connect", "--help"]).status.success());
}

#[test]
fn echo_reports_a_port_it_cannot_bind() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = ambit(&["app", "echo", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    // The cause once: the message leaves it to the error chain.
    assert_eq!(stderr.matches("in use").count(), 1, "{stderr}");
}
