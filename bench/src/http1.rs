//! A minimal HTTP/1.1 load generator and backend, so that what is measured is the proxy in
//! between and not a client library: keep-alive connections, `GET` without a body, responses
//! framed by `Content-Length`.
//!
//! Two load shapes: closed loop (each connection sends its next request when the previous
//! answer arrives: the most the path can carry) and open loop (requests at fixed times whatever
//! happens; latency counted from the scheduled time, so queueing shows).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// One keep-alive client connection.
pub struct Conn {
    stream: TcpStream,
    request: Vec<u8>,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr, host: &str) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            request: format!("GET /bench HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one request and reads its whole answer; returns the status.
    pub async fn get(&mut self) -> io::Result<u16> {
        self.stream.write_all(&self.request).await?;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(io::Error::other)?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line: {head:?}")))?;
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .ok_or_else(|| io::Error::other(format!("no content-length: {head:?}")))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        self.buf.drain(..head_end + length);
        Ok(status)
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What a load run saw.
#[derive(Default)]
pub struct Outcome {
    pub latencies: Vec<Duration>,
    /// Answers other than 200.
    pub errors: u64,
}

impl Outcome {
    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
    }
}

/// Closed loop over `conns` connections for `secs`.
pub async fn closed_loop(
    target: SocketAddr,
    host: String,
    conns: u32,
    secs: u64,
) -> io::Result<Outcome> {
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(target, &host).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for mut conn in opened {
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                let status = conn.get().await?;
                out.latencies.push(sent.elapsed());
                out.errors += u64::from(status != 200);
            }
            Ok::<_, io::Error>(out)
        }));
    }
    join(tasks).await
}

/// Open loop: each of `conns` connections sends its share of `rate` at fixed times for `secs`.
pub async fn open_loop(
    target: SocketAddr,
    host: String,
    conns: u32,
    rate: u32,
    secs: u64,
) -> io::Result<Outcome> {
    let interval = Duration::from_secs_f64(f64::from(conns) / f64::from(rate));
    let mut opened = Vec::new();
    for _ in 0..conns {
        opened.push(Conn::open(target, &host).await?);
    }
    let start = Instant::now() + Duration::from_millis(200);
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, mut conn) in opened.into_iter().enumerate() {
        // Staggered evenly across one interval, so the rate is smooth, not bursts of `conns`.
        let mut at = start + interval.mul_f64(i as f64 / f64::from(conns));
        tasks.push(tokio::spawn(async move {
            let mut out = Outcome::default();
            while at < deadline {
                tokio::time::sleep_until(at).await;
                let status = conn.get().await?;
                out.latencies.push(at.elapsed());
                out.errors += u64::from(status != 200);
                at += interval;
            }
            Ok::<_, io::Error>(out)
        }));
    }
    join(tasks).await
}

async fn join(tasks: Vec<tokio::task::JoinHandle<io::Result<Outcome>>>) -> io::Result<Outcome> {
    let mut all = Outcome::default();
    for t in tasks {
        all.merge(t.await.map_err(io::Error::other)??);
    }
    Ok(all)
}

/// A backend: answers every request with 200 and a short body naming itself, counting them in
/// `served`. Requests are assumed bodiless (the load above sends `GET`s; proxies pass them on as
/// such).
pub async fn serve(listener: TcpListener, name: &'static str, served: Arc<AtomicU64>) {
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nx-backend: {name}\r\n\r\n{name}",
        name.len()
    );
    let response: &'static [u8] = response.into_bytes().leak();
    while let Ok((mut stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let served = served.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(4096);
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = find(&buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    served.fetch_add(1, Ordering::Relaxed);
                    if stream.write_all(response).await.is_err() {
                        return;
                    }
                }
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_client_and_server_speak_keep_alive_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        tokio::spawn(serve(listener, "a", served.clone()));
        let mut conn = Conn::open(addr, "web").await.unwrap();
        for _ in 0..3 {
            assert_eq!(conn.get().await.unwrap(), 200);
        }
        let out = closed_loop(addr, "web".into(), 2, 1).await.unwrap();
        assert!(!out.latencies.is_empty());
        assert_eq!(out.errors, 0);
        assert_eq!(
            served.load(Ordering::Relaxed),
            3 + out.latencies.len() as u64
        );
    }
}
