//! One HBONE tunnel as a byte stream.
//!
//! Both halves of the HTTP/2 stream live in one value until it is dropped: h2 resets a stream
//! whose receiving half is dropped, which would cut the other direction of a half-closed tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one write asks flow control for; bigger writes are split. Matches the send buffer so
/// a writer never queues more than the connection will take.
const MAX_WRITE: usize = 64 * 1024;

/// A tunnel: reads are the peer's bytes, writes go to the peer, `shutdown` sends END_STREAM
/// (a TCP half-close), and dropping it without `shutdown` resets the stream (an abort).
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet read.
    pending: Bytes,
    recv_done: bool,
    send_done: bool,
    /// Released on drop: e.g. the pool's count of streams on the connection.
    _guard: Option<Box<dyn Send + Sync>>,
}

impl H2Stream {
    pub(crate) fn new(
        send: SendStream<Bytes>,
        recv: RecvStream,
        guard: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        H2Stream {
            send,
            recv,
            pending: Bytes::new(),
            recv_done: false,
            send_done: false,
            _guard: guard,
        }
    }
}

fn to_io(err: h2::Error) -> io::Error {
    if err.is_io() {
        return err.into_io().expect("is_io");
    }
    let kind = match err.reason() {
        Some(Reason::CANCEL) | Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, err)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.recv_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Returning window as soon as the bytes are in our buffer keeps at most one
                    // frame per stream buffered here, beyond what flow control already allows.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                // A peer that closes its side with RST_STREAM(NO_ERROR) has finished cleanly.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.recv_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => self.recv_done = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.send_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let available = self.send.capacity();
            if available > 0 {
                let n = available.min(buf.len());
                self.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(to_io)?;
                return Poll::Ready(Ok(n));
            }
            self.send.reserve_capacity(buf.len().min(MAX_WRITE));
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames as soon as it can; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.send_done {
            self.send_done = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
