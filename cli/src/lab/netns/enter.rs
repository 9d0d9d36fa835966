//! Running code and commands inside a named network namespace.
//!
//! `setns(2)` moves only the calling thread, so [`in_netns`] spends a fresh thread on it and never
//! moves a caller's (or a runtime's) thread. Sockets keep the namespace they were created in, so
//! a socket made on that thread lives in the namespace for its whole life, wherever it is used.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::process::Command;

use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::NetnsError;

/// Where `ip netns add` bind-mounts named namespaces.
pub(crate) const NETNS_DIR: &str = "/run/netns";

enum Failure {
    Enter(io::Error),
    Run(io::Error),
}

/// Runs `f` on a new OS thread that has entered network namespace `name` (`setns(2)` on
/// `/run/netns/<name>`) and returns what `f` returns.
///
/// Sockets `f` creates belong to that namespace and stay there after the thread ends, so this is
/// how a test binds a listener or connects a client "inside a pod" while driving it from its own
/// threads. For tokio, create a std socket here, `set_nonblocking(true)` it and hand it to
/// `tokio::net::TcpStream::from_std` (or `TcpListener::from_std`) on the runtime.
///
/// ```no_run
/// # use ambit_cli::lab::netns::in_netns;
/// let stream = in_netns("lab-web-1", || std::net::TcpStream::connect("10.244.2.2:8080"))?;
/// # Ok::<(), ambit_cli::lab::netns::NetnsError>(())
/// ```
pub fn in_netns<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Result<T, NetnsError> {
    let enter_error = |source| NetnsError::Enter {
        netns: name.to_owned(),
        source,
    };
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(enter_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a namespace name",
        )));
    }
    let handle = File::open(format!("{NETNS_DIR}/{name}")).map_err(enter_error)?;
    let thread = std::thread::Builder::new()
        .name(format!("netns {name}"))
        .spawn(move || {
            move_into_link_name_space(handle.as_fd(), Some(LinkNameSpaceType::Network))
                .map_err(|errno| Failure::Enter(errno.into()))?;
            drop(handle);
            f().map_err(Failure::Run)
        })
        .map_err(enter_error)?;
    match thread.join() {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(Failure::Enter(source))) => Err(enter_error(source)),
        Ok(Err(Failure::Run(source))) => Err(NetnsError::InNetns {
            netns: name.to_owned(),
            source,
        }),
        Err(_) => Err(NetnsError::Panicked {
            netns: name.to_owned(),
        }),
    }
}

/// A [`Command`] that runs `program` inside network namespace `name` (through
/// `ip netns exec <name> <program>`, which execs `program` in place: the child's pid is the
/// program's, so `Child::kill` reaches it). Add arguments, stdio and environment as usual.
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", name]).arg(program);
    command
}
