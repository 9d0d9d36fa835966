//! `ambit app connect`: a one-shot TCP client, run inside a lab pod to see what the pod reaches.
//! It prints what the server sends and tells refusal, timeout and reset apart by exit status, so
//! a test can assert *how* a connection failed (a policy's reset, a black hole's timeout).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What to send after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These bytes, then a half-close; everything the server sends until it closes is printed.
    Raw(Vec<u8>),
    /// `GET <path> HTTP/1.1` with `connection: close` and these extra headers (name, value);
    /// the whole response is printed.
    HttpGet {
        path: String,
        headers: Vec<(String, String)>,
    },
}

#[derive(Debug, Clone)]
pub struct ConnectConfig {
    pub addr: SocketAddr,
    /// Without a payload, only the server's first line (its greeting) is read.
    pub payload: Option<Payload>,
    /// For the whole exchange: connect, send, and read.
    pub timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection to {0} refused")]
    Refused(SocketAddr),
    #[error("no complete answer from {addr} within {timeout:?}")]
    TimedOut { addr: SocketAddr, timeout: Duration },
    #[error("connection to {0} reset")]
    Reset(SocketAddr),
    #[error("{0} closed the connection without sending anything")]
    Empty(SocketAddr),
    #[error("connection to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
}

impl ConnectError {
    /// The process exit status for this failure (documented in `ambit app connect --help`).
    pub fn exit_code(&self) -> u8 {
        match self {
            ConnectError::Refused(_) => 3,
            ConnectError::TimedOut { .. } => 4,
            ConnectError::Reset(_) => 5,
            ConnectError::Empty(_) | ConnectError::Io { .. } => 1,
        }
    }

    fn from_io(addr: SocketAddr, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused(addr),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => {
                ConnectError::Reset(addr)
            }
            _ => ConnectError::Io { addr, source },
        }
    }
}

/// Checks the shape of a `host:port` target at parse time, so a typo is bad usage (exit 64)
/// rather than a failed lookup.
pub fn parse_target(target: &str) -> Result<String, String> {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(target.to_owned())
        }
        _ => Err(format!("{target:?} is not ip:port or name:port")),
    }
}

/// `ip:port`, or `name:port` looked up like any program would (in a lab pod, through the pod's
/// `/etc/hosts`, where the lab writes service names).
pub async fn resolve(target: &str) -> Result<SocketAddr, ResolveError> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    let fail = |reason: String| ResolveError {
        target: target.to_owned(),
        reason,
    };
    let mut addrs = tokio::net::lookup_host(target)
        .await
        .map_err(|e| fail(e.to_string()))?;
    addrs.next().ok_or_else(|| fail("no address".into()))
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {target:?} (want ip:port or name:port): {reason}")]
pub struct ResolveError {
    target: String,
    reason: String,
}

/// Connects, sends the payload, and copies what the server sends to `out` as it arrives (so
/// output received before a failure is not lost).
pub async fn run<W: AsyncWrite + Unpin>(
    config: &ConnectConfig,
    out: &mut W,
) -> Result<(), ConnectError> {
    let addr = config.addr;
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        exchange(stream, config, out).await
    };
    match tokio::time::timeout(config.timeout, exchange).await {
        Err(_elapsed) => Err(ConnectError::TimedOut {
            addr,
            timeout: config.timeout,
        }),
        Ok(Err(source)) => Err(ConnectError::from_io(addr, source)),
        Ok(Ok(0)) => Err(ConnectError::Empty(addr)),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Returns how many bytes the server sent.
async fn exchange<W: AsyncWrite + Unpin>(
    stream: TcpStream,
    config: &ConnectConfig,
    out: &mut W,
) -> io::Result<u64> {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let received = match &config.payload {
        None => {
            let mut line = Vec::new();
            reader.read_until(b'\n', &mut line).await?;
            out.write_all(&line).await?;
            line.len() as u64
        }
        Some(Payload::Raw(bytes)) => {
            writer.write_all(bytes).await?;
            writer.shutdown().await?;
            tokio::io::copy(&mut reader, out).await?
        }
        Some(Payload::HttpGet { path, headers }) => {
            // No half-close: some HTTP servers take a client's FIN as an abort.
            let extra: String = headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}\r\n"))
                .collect();
            let request = format!(
                "GET {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: ambit-connect\r\n{extra}\
                 connection: close\r\n\r\n",
                config.addr
            );
            writer.write_all(request.as_bytes()).await?;
            tokio::io::copy(&mut reader, out).await?
        }
    };
    out.flush().await?;
    Ok(received)
}

/// Parses a `name=value` header for `--header`.
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value))
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':') =>
        {
            Ok((name.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{text:?}: write a header as name=value")),
    }
}

/// Parses `250ms`, `5s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 250ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err(format!("unknown unit {unit:?} in {text:?}: use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn headers() {
        assert_eq!(
            parse_header("x-canary=yes"),
            Ok(("x-canary".into(), "yes".into()))
        );
        assert!(parse_header("x-canary").is_err());
        assert!(parse_header("=yes").is_err());
    }
}
