//! Acting as a pod: connections made from inside a pod's network namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ambit_cli::lab::netns::in_netns;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A TCP connection from inside `netns` (the socket lives there; the calling thread does not
/// move).
pub fn connect(netns: &str, to: SocketAddr) -> Result<TcpStream, String> {
    let stream = in_netns(netns, move || TcpStream::connect_timeout(&to, TIMEOUT))
        .map_err(|e| format!("connecting from {netns} to {to}: {e}"))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Reads one line (the echo server's greeting).
pub fn read_line(stream: &TcpStream) -> Result<String, String> {
    let mut line = String::new();
    let n = BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| format!("reading: {e}"))?;
    if n == 0 || !line.ends_with('\n') {
        return Err(format!("connection closed (got {line:?})"));
    }
    Ok(line.trim_end().to_string())
}

/// Connects and returns the echo server's greeting ("hello from <name>; you are <ip:port>").
pub fn hello(netns: &str, to: SocketAddr) -> Result<String, String> {
    let stream = connect(netns, to)?;
    read_line(&stream)
}

/// Sends `payload` on an open echo connection and checks it comes back.
pub fn echo(stream: &mut TcpStream, payload: &[u8]) -> Result<(), String> {
    stream
        .write_all(payload)
        .map_err(|e| format!("writing: {e}"))?;
    let mut back = vec![0u8; payload.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    if back != payload {
        return Err("the echo differs from what was sent".into());
    }
    Ok(())
}

/// Whether the peer has closed `stream` (EOF or reset) within the read timeout.
pub fn is_closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A plain HTTP/1.0 GET from inside `netns`; returns the status and body.
pub fn http_get(netns: &str, to: SocketAddr, path: &str) -> Result<(u16, String), String> {
    http(netns, to, "GET", path)
}

/// A plain HTTP/1.0 request without a body from inside `netns`; returns the status and body.
pub fn http(
    netns: &str,
    to: SocketAddr,
    method: &str,
    path: &str,
) -> Result<(u16, String), String> {
    let mut stream = connect(netns, to)?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nhost: {to}\r\ncontent-length: 0\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("reading the response: {e}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {head:?}"))?;
    Ok((status, body.to_string()))
}
