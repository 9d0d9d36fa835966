//! One side of a relayed connection, as the relay sees it: a source of owned byte chunks and a
//! sink that takes them.
//!
//! Chunks are `Bytes` rather than a borrowed buffer so that a tunnel passes them on without
//! copying: what a socket read lands in is the very buffer h2 frames and rustls encrypts, and
//! what h2 received is written to the socket as it is. A plain `AsyncRead + AsyncWrite` stream
//! takes part through [`Io`], reading into the buffer the relay lends it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

/// A duplex byte stream the relay can move owned chunks through.
pub trait Endpoint: Unpin {
    /// The next bytes the peer sent, or `None` once it finished sending. An endpoint that reads
    /// into memory of its own ignores `buf`; one that needs a buffer reads into `buf`'s spare
    /// capacity (the relay has reserved it) and returns what it read, split off.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>>;

    /// Sends a prefix of `chunk` (at least one byte), advancing `chunk` past it.
    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>>;

    /// Pushes out what was sent, for endpoints that buffer.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Ends the sending direction (TCP FIN, HTTP/2 END_STREAM); the other direction goes on.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

/// Any `AsyncRead + AsyncWrite` stream as an [`Endpoint`] (TCP sockets, TLS streams, a stream
/// with replayed bytes in front).
#[derive(Debug)]
pub struct Io<S>(pub S);

impl<S: AsyncRead + AsyncWrite + Unpin> Endpoint for Io<S> {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        let n = std::task::ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.0),
            cx,
            buf
        ))?;
        Poll::Ready(Ok((n > 0).then(|| buf.split().freeze())))
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        let n = std::task::ready!(Pin::new(&mut self.0).poll_write(cx, chunk))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        chunk.advance(n);
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Sockets are the common case; no wrapper needed at call sites.
impl Endpoint for tokio::net::TcpStream {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        Io(self).poll_chunk(cx, buf)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        Io(self).poll_send(cx, chunk)
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket write is on its way once it returns; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Io(self).poll_finish(cx)
    }
}

impl<E: Endpoint + ?Sized> Endpoint for &mut E {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        (**self).poll_chunk(cx, buf)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        (**self).poll_send(cx, chunk)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_flush(cx)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        (**self).poll_finish(cx)
    }
}
