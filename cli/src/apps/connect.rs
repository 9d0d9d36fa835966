//! `ambit app connect`: a one-shot TCP client, run inside a lab pod to see what the pod reaches.
//! It prints what the server sends and tells refusal, timeout and reset apart by exit status, so
//! a test can assert *how* a connection failed (a policy's reset, a black hole's timeout).
//! Repeated (`--repeat`), it tallies the answers instead: which status from which server, how
//! many times, which is what a traffic split or a retry policy is judged by.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What to send after connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// These bytes, then a half-close; everything the server sends until it closes is printed.
    Raw(Vec<u8>),
    /// `<method> <path> HTTP/1.1` with `connection: close` and these extra headers (name,
    /// value); the whole response is printed.
    Http {
        method: String,
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
    #[error("connection to {addr}")]
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
        Some(Payload::Http {
            method,
            path,
            headers,
        }) => {
            // No half-close: some HTTP servers take a client's FIN as an abort.
            let extra: String = headers
                .iter()
                .map(|(name, value)| format!("{name}: {value}\r\n"))
                .collect();
            let request = format!(
                "{method} {path} HTTP/1.1\r\nhost: {}\r\nuser-agent: ambit-connect\r\n{extra}\
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

/// Runs the exchange `count` times, each on a connection of its own, `concurrency` at a time,
/// and writes a tally of the outcomes to `out`: one line per distinct outcome, `count=<n>
/// status=<code> server=<name>` (`server=-` when the body names none, as when a proxy answered
/// itself) or `count=<n> error="<why>"`. Fails with a failure's error once all are done.
pub async fn run_repeated<W: AsyncWrite + Unpin>(
    config: &ConnectConfig,
    count: u64,
    concurrency: u64,
    out: &mut W,
) -> Result<(), ConnectError> {
    let remaining = Arc::new(AtomicU64::new(count));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (config, remaining) = (config.clone(), Arc::clone(&remaining));
        workers.spawn(async move {
            let mut tally: BTreeMap<String, u64> = BTreeMap::new();
            let mut failure = None;
            // Each worker takes the next request until none is left.
            while remaining
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok()
            {
                let mut response = Vec::new();
                let outcome = match run(&config, &mut response).await {
                    Ok(()) => outcome(&response),
                    Err(err) => {
                        let outcome = format!("error={:?}", crate::error_chain(&err));
                        failure.get_or_insert(err);
                        outcome
                    }
                };
                *tally.entry(outcome).or_default() += 1;
            }
            (tally, failure)
        });
    }
    let mut tally: BTreeMap<String, u64> = BTreeMap::new();
    let mut first_failure = None;
    while let Some(done) = workers.join_next().await {
        let (part, failure) = done.expect("a worker never panics");
        for (outcome, n) in part {
            *tally.entry(outcome).or_default() += n;
        }
        if first_failure.is_none() {
            first_failure = failure;
        }
    }
    let mut text = String::new();
    for (outcome, n) in &tally {
        text.push_str(&format!("count={n} {outcome}\n"));
    }
    out.write_all(text.as_bytes())
        .await
        .and(out.flush().await)
        .map_err(|source| ConnectError::Io {
            addr: config.addr,
            source,
        })?;
    first_failure.map_or(Ok(()), Err)
}

/// `status=<code> server=<name>` for one response (the echo server's body names itself in a
/// `server=` line).
fn outcome(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let status = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .unwrap_or("?");
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    let server = body
        .lines()
        .find_map(|line| line.strip_prefix("server="))
        .unwrap_or("-");
    format!("status={status} server={server}")
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
    fn an_outcome_is_the_status_and_the_server_that_answered() {
        let echo = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 20\r\n\r\n\
                     server=flaky\nclient=10.244.1.2:1\n";
        assert_eq!(outcome(echo), "status=503 server=flaky");
        let proxy = b"HTTP/1.1 403 Forbidden\r\nx-ambit-reason: denied\r\n\r\nRBAC: denied\n";
        assert_eq!(outcome(proxy), "status=403 server=-");
        assert_eq!(outcome(b""), "status=? server=-");
    }

    #[tokio::test]
    async fn repeated_requests_are_tallied_by_status_and_server() {
        use crate::apps::echo::{self, Server};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(echo::serve(listener, Arc::new(Server::flaky("e"))));
        let config = ConnectConfig {
            addr,
            payload: Some(Payload::Http {
                method: "POST".into(),
                path: "/x".into(),
                headers: Vec::new(),
            }),
            timeout: Duration::from_secs(5),
        };
        let mut out = Vec::new();
        // Of any 10 requests in a row the server fails 5, however the 3 workers interleave.
        run_repeated(&config, 10, 3, &mut out).await.unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "count=5 status=200 server=e\ncount=5 status=503 server=e\n"
        );

        // Nothing listens any more: every attempt fails, and the failure is the result.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let config = ConnectConfig {
            addr: closed.local_addr().unwrap(),
            ..config
        };
        drop(closed);
        let mut out = Vec::new();
        let err = run_repeated(&config, 2, 1, &mut out).await.unwrap_err();
        assert_eq!(err.exit_code(), 3);
        let tally = String::from_utf8(out).unwrap();
        assert!(
            tally.starts_with("count=2 error=\"connection to "),
            "{tally}"
        );
    }

    /// A sample app's failure names its cause once, printed with its chain as `ambit` does.
    #[test]
    fn an_errors_cause_is_printed_once() {
        let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let cause = || io::Error::other("the cause");
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(ConnectError::Io {
                addr,
                source: cause(),
            }),
            Box::new(crate::apps::BindError {
                addr,
                source: cause(),
            }),
            Box::new(crate::apps::grpc::GrpcError::Output(cause())),
        ];
        for err in &errors {
            let text = crate::error_chain(err.as_ref());
            assert_eq!(text.matches("the cause").count(), 1, "{text}");
        }
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
