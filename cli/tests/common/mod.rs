//! Helpers shared by the `ambit` binary's integration tests: running `ambit app echo` and
//! reading its event lines, a lab of a test's own ([`lab`]) and the traffic it carries
//! ([`traffic`]), and waiting for something to become true ([`eventually`]).

// Each test binary compiles its own copy and uses a different part of it.
#![allow(dead_code)]

pub mod lab;
pub mod traffic;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Upper bound for an event line a test waits for; only a broken run comes near it.
pub const LINE_DEADLINE: Duration = Duration::from_secs(20);

pub const AMBIT: &str = env!("CARGO_BIN_EXE_ambit");

/// Retries `check` every 100 ms until it returns `Ok`; panics with its last error once
/// `deadline` has passed. Deadlines are generous bounds for a loaded CI machine, not
/// performance assertions.
pub fn eventually<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if start.elapsed() > deadline => {
                panic!("{what}: still not so after {deadline:?}: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A running `ambit app echo`, killed on drop.
pub struct Echo {
    child: Child,
    lines: Receiver<String>,
    /// The address it listens on, as it reported it.
    pub addr: SocketAddr,
}

impl Echo {
    /// Runs `command` (an `ambit app echo ...` invocation) and waits for its `listening on` line.
    pub fn spawn(mut command: Command) -> Echo {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ambit app echo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (send, lines) = mpsc::channel();
        // Drains stdout for the server's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut echo = Echo {
            child,
            lines,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let first = echo.next_line();
        let addr = first
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("expected `listening on ...`, got {first:?}"));
        echo.addr = addr.parse().expect("a socket address");
        echo
    }

    /// The next line the server printed.
    pub fn next_line(&self) -> String {
        self.lines
            .recv_timeout(LINE_DEADLINE)
            .expect("the echo server printed no line")
    }

    /// Waits for the server process to end and tells whether a signal killed it.
    pub fn wait_killed(&mut self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.wait().expect("wait for the echo server");
        status.signal().is_some()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // It may be gone already (a test's cleanup killed it); then both calls are harmless.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ambit app echo --listen <listen> --name <name>` on `command` (a bare `ambit` or one wrapped
/// in `ip netns exec`).
pub fn echo_args(mut command: Command, listen: SocketAddr, name: &str) -> Command {
    command.args([
        "app",
        "echo",
        "--listen",
        &listen.to_string(),
        "--name",
        name,
    ]);
    command
}
