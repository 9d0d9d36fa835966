//! One HBONE tunnel as a byte stream.
//!
//! Both halves of the HTTP/2 stream live in one value until it is dropped: h2 resets a stream
//! whose receiving half is dropped, which would cut the other direction of a half-closed tunnel.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::relay::Endpoint;

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

impl H2Stream {
    /// The next DATA the peer sent (after anything a partial read left), or `None` at its end.
    fn poll_received(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        while !self.recv_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    // Returning window as soon as the bytes are ours keeps at most one frame per
                    // stream held here, beyond what flow control already allows.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Ok(Some(data)));
                }
                // A peer that closes its side with RST_STREAM(NO_ERROR) has finished cleanly.
                Some(Err(e)) if e.reason() == Some(Reason::NO_ERROR) => self.recv_done = true,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => self.recv_done = true,
            }
        }
        Poll::Ready(Ok(None))
    }

    /// Waits until flow control lets at least one of `want` bytes go; returns how many may.
    fn poll_capacity_for(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.send_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        loop {
            let available = self.send.capacity();
            if available > 0 {
                return Poll::Ready(Ok(available.min(want)));
            }
            self.send.reserve_capacity(want.min(MAX_WRITE));
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// Queues as much of `chunk` as flow control allows, without copying: h2 frames the very
    /// buffer.
    fn poll_queue(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<usize>> {
        let n = ready!(self.poll_capacity_for(cx, chunk.len()))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn finish(&mut self) -> io::Result<()> {
        if !self.send_done {
            self.send_done = true;
            self.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Ok(())
    }
}

impl Endpoint for H2Stream {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_received(cx)
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, chunk: &mut Bytes) -> Poll<io::Result<()>> {
        ready!(self.poll_queue(cx, chunk))?;
        Poll::Ready(Ok(()))
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection task writes queued frames as soon as it can; there is nothing to push.
        Poll::Ready(Ok(()))
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}

/// For byte-stream users (hyper in the waypoint, tests); the relay uses [`Endpoint`].
impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut data) = ready!(self.poll_received(cx))? {
            let n = data.len().min(buf.remaining());
            buf.put_slice(&data[..n]);
            data.advance(n);
            self.pending = data;
        }
        Poll::Ready(Ok(()))
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
        // Only what flow control takes now is copied, so a refused write copies nothing.
        let n = ready!(self.poll_capacity_for(cx, buf.len()))?;
        let mut chunk = Bytes::copy_from_slice(&buf[..n]);
        ready!(self.poll_queue(cx, &mut chunk))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.finish())
    }
}
