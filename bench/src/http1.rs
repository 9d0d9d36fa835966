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

/// One keep-alive client connection: on tokio for the closed loop, or a blocking socket
/// ([`Conn::into_blocking`]) for the open loop's paced threads.
pub struct Conn<S = TcpStream> {
    stream: S,
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
        loop {
            if let Some(status) = self.take_response()? {
                return Ok(status);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            self.received(&chunk[..n])?;
        }
    }

    /// The same connection as a blocking socket (it stays in the namespace it was opened in).
    pub fn into_blocking(self) -> io::Result<Conn<std::net::TcpStream>> {
        let stream = self.stream.into_std()?;
        stream.set_nonblocking(false)?;
        Ok(Conn {
            stream,
            request: self.request,
            buf: self.buf,
        })
    }
}

impl Conn<std::net::TcpStream> {
    /// [`Conn::get`], blocking.
    pub fn get_blocking(&mut self) -> io::Result<u16> {
        use std::io::{Read, Write};
        self.stream.write_all(&self.request)?;
        loop {
            if let Some(status) = self.take_response()? {
                return Ok(status);
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk)?;
            self.received(&chunk[..n])?;
        }
    }
}

impl<S> Conn<S> {
    fn received(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(chunk);
        Ok(())
    }

    /// The status of the first response in the buffer once all of it has arrived, removing it.
    fn take_response(&mut self) -> io::Result<Option<u16>> {
        let Some(head_end) = find(&self.buf, b"\r\n\r\n").map(|i| i + 4) else {
            return Ok(None);
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
        if self.buf.len() < head_end + length {
            return Ok(None);
        }
        self.buf.drain(..head_end + length);
        Ok(Some(status))
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

/// Open loop: each connection sends its share of `rate` at fixed times for `length`
/// ([`crate::pace`]: a thread per connection, microsecond timers).
pub fn open_loop(
    conns: &mut [Conn<std::net::TcpStream>],
    rate: u32,
    length: Duration,
) -> io::Result<Outcome> {
    let samples = crate::pace::open_loop(conns, rate, length, Conn::get_blocking)?;
    let errors = samples.iter().filter(|(_, status)| *status != 200).count();
    Ok(Outcome {
        latencies: samples.into_iter().map(|(latency, _)| latency).collect(),
        errors: errors as u64,
    })
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
        // The same connection, blocking, paced from threads (the open loop).
        let mut blocking = vec![conn.into_blocking().unwrap()];
        let paced = tokio::task::spawn_blocking(move || {
            open_loop(&mut blocking, 100, Duration::from_millis(200))
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!((paced.latencies.len(), paced.errors), (20, 0));
    }
}
