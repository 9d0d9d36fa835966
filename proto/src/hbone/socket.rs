//! The TCP socket under an HBONE connection's TLS, read in large gulps.
//!
//! rustls asks its transport for at most 4 KiB per read and grows its buffer by that much each
//! time, so a 16 KiB record costs four `recv` calls. Reading the socket in one large read and
//! serving rustls from memory turns those into one syscall per many records, for the price of a
//! copy of ciphertext that is about to be decrypted anyway.
//!
//! The sending side has the mirror problem: rustls takes at most its buffer limit (64 KiB) of
//! plaintext per write, and a 64 KiB DATA frame is 9 bytes more than that, so every frame went
//! out as one `writev` of four full records and a second one of a 9-byte record: half the
//! sends, segments and ACKs of a bulk transfer carried nothing. [`widen_send_buffer`] lets a
//! whole frame be encrypted and written at once.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes taken from the socket per read: a connection carrying small requests keeps a small
/// buffer, a bulk transfer grows it to the maximum within a few reads.
const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 64 * 1024;

/// Ciphertext rustls may hold for the socket: room for a whole maximum-size DATA frame and its
/// header (two of them), so a frame never splits across writes. It drains in the same write
/// whenever the socket takes it; a stalled peer holds at most this much per connection.
const TLS_SEND_BUFFER: usize = 128 * 1024;

/// Applies [`TLS_SEND_BUFFER`] to an HBONE connection's TLS session (client or server side).
pub(super) fn widen_send_buffer<D>(tls: &mut rustls::ConnectionCommon<D>) {
    tls.set_buffer_limit(Some(TLS_SEND_BUFFER));
}

pub struct BufferedSocket {
    inner: TcpStream,
    buf: BytesMut,
    read_size: usize,
}

impl BufferedSocket {
    pub fn new(inner: TcpStream) -> Self {
        BufferedSocket {
            inner,
            buf: BytesMut::new(),
            read_size: MIN_READ,
        }
    }
}

impl AsyncRead for BufferedSocket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            if out.remaining() >= this.read_size {
                // A big read needs no staging.
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if this.buf.capacity() > 2 * this.read_size {
                // Quiet after a burst: give the big buffer back.
                this.buf = BytesMut::new();
            }
            // Once everything read before was consumed, this takes the same memory back.
            this.buf.reserve(this.read_size);
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.buf
            ))?;
            if n == 0 {
                return Poll::Ready(Ok(()));
            }
            if n >= this.read_size {
                this.read_size = (this.read_size * 2).min(MAX_READ);
            } else if n < this.read_size / 4 {
                this.read_size = (this.read_size / 2).max(MIN_READ);
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BufferedSocket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
