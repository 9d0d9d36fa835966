//! Reading the admin endpoints of the lab's processes. They listen on localhost inside their
//! node's namespace, so the request is made from a socket created there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::netns::in_netns;

/// The controller's admin address (in node 1's namespace).
pub const CONTROLLER_ADMIN: &str = "127.0.0.1:15014";
/// The controller's config and CA address: node 1's address on the lan.
pub const CONTROLLER_GRPC: &str = "192.168.100.1:15012";
/// Each agent's local admin address (in its node's namespace).
pub const AGENT_ADMIN: &str = "127.0.0.1:15000";
/// Each agent's public metrics address.
pub const AGENT_METRICS: &str = "127.0.0.1:15020";

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("GET {path} on {addr} in {netns}: {reason}")]
    Request {
        netns: String,
        addr: SocketAddr,
        path: String,
        reason: String,
    },
}

/// An HTTP/1.0 GET from inside `netns`; the status and body.
pub fn get(netns: &str, addr: &str, path: &str) -> Result<(u16, String), AdminError> {
    let addr: SocketAddr = addr.parse().expect("admin addresses are constants");
    let fail = |reason: String| AdminError::Request {
        netns: netns.to_owned(),
        addr,
        path: path.to_owned(),
        reason,
    };
    let stream = in_netns(netns, move || TcpStream::connect_timeout(&addr, TIMEOUT))
        .map_err(|e| fail(e.to_string()))?;
    let mut stream = stream;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| write!(stream, "GET {path} HTTP/1.0\r\nhost: {addr}\r\n\r\n"))
        .map_err(|e| fail(e.to_string()))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| fail(e.to_string()))?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("not an HTTP response: {head:?}")))?;
    Ok((status, body.to_owned()))
}
