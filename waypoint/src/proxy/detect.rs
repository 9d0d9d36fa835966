//! Deciding what a tunnel carries from its first bytes: the HTTP/2 connection preface (what
//! gRPC and other prior-knowledge clients send), an HTTP/1.x request line, or anything else
//! (opaque TCP). A client that sends nothing within the deadline (a server-speaks-first
//! protocol) is opaque TCP. The bytes read are replayed to whoever serves the tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use ambit_proto::relay::Endpoint;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use super::Protocol;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line longer than this is not one a client would send; treat it as opaque.
const MAX_REQUEST_LINE: usize = 8 * 1024;

enum Verdict {
    Known(Protocol),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
    if buf.len() >= H2_PREFACE.len() {
        if buf.starts_with(H2_PREFACE) {
            return Verdict::Known(Protocol::Http2);
        }
    } else if H2_PREFACE.starts_with(buf) {
        return Verdict::NeedMore;
    }
    // HTTP/1.x: a method token, a space, a target, " HTTP/1.x", CRLF.
    let method_len = buf.iter().take_while(|b| b.is_ascii_uppercase()).count();
    match buf.get(method_len) {
        None if method_len < 16 => return Verdict::NeedMore,
        Some(b' ') if method_len > 0 => {}
        _ => return Verdict::Known(Protocol::Tcp),
    }
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            let line = &buf[..end];
            let http1 = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
            Verdict::Known(if http1 {
                Protocol::Http1
            } else {
                Protocol::Tcp
            })
        }
        None if buf.len() >= MAX_REQUEST_LINE => Verdict::Known(Protocol::Tcp),
        None => Verdict::NeedMore,
    }
}

/// Reads until the protocol is known; returns it and the stream with the bytes put back.
pub async fn detect<S>(mut stream: S, deadline: Duration) -> io::Result<(Protocol, Prefixed<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let decided = tokio::time::timeout(deadline, async {
        loop {
            if stream.read_buf(&mut buf).await? == 0 {
                // The client finished without saying enough: whatever it sent goes through as-is.
                return Ok::<_, io::Error>(Protocol::Tcp);
            }
            if let Verdict::Known(p) = classify(&buf) {
                return Ok(p);
            }
        }
    })
    .await;
    let protocol = match decided {
        Ok(result) => result?,
        Err(_) => Protocol::Tcp,
    };
    Ok((
        protocol,
        Prefixed {
            prefix: buf.freeze(),
            inner: stream,
        },
    ))
}

/// A stream whose first reads return `prefix`.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// The replayed bytes are the first chunk; the rest is the inner stream's.
impl<S: Endpoint> Endpoint for Prefixed<S> {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if !self.prefix.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.prefix))));
        }
        self.inner.poll_chunk(cx, buf)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        self.inner.poll_send(cx, chunk)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Endpoint::poll_flush(&mut self.inner, cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_finish(cx)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn verdict(bytes: &[u8]) -> Option<Protocol> {
        match classify(bytes) {
            Verdict::Known(p) => Some(p),
            Verdict::NeedMore => None,
        }
    }

    #[test]
    fn request_lines_prefaces_and_the_rest() {
        assert_eq!(
            verdict(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(verdict(b"POST /x HTTP/1.0\r\n"), Some(Protocol::Http1));
        assert_eq!(verdict(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(verdict(b"PRI * HTTP/2"), None, "a partial preface waits");
        assert_eq!(verdict(b"GET /"), None, "a partial request line waits");
        assert_eq!(
            verdict(b"\x16\x03\x01\x02"),
            Some(Protocol::Tcp),
            "TLS is opaque"
        );
        assert_eq!(verdict(b"SSH-2.0-OpenSSH\r\n"), Some(Protocol::Tcp));
        assert_eq!(verdict(b"GET / FOO/1\r\n"), Some(Protocol::Tcp));
    }

    #[tokio::test]
    async fn detected_bytes_are_replayed() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let (p, mut stream) = detect(server, Duration::from_secs(60)).await.unwrap();
        assert_eq!(p, Protocol::Http1);
        drop(client);
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GET / HTTP/1.1\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_is_opaque_tcp() {
        let (_client, server) = tokio::io::duplex(1024);
        let (p, _) = detect(server, Duration::from_secs(1)).await.unwrap();
        assert_eq!(p, Protocol::Tcp);
    }
}
