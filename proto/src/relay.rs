//! Splicing two byte streams together, with half-close, byte counts and timeouts.
//!
//! Every data path in Ambit ends here (agent outbound, agent inbound, waypoint opaque TCP), so the
//! buffer size is chosen once: 64 KiB per direction. Bigger buffers measured no faster on loopback
//! (bench/README.md) and memory per connection is a target of its own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub const RELAY_BUFFER: usize = 64 * 1024;

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transferred {
    /// From `a` to `b`.
    pub a_to_b: u64,
    /// From `b` to `a`.
    pub b_to_a: u64,
}

/// Copies both ways until both directions have ended. When one side's reads end, the other side's
/// writes are shut down (FIN / END_STREAM) while the opposite direction keeps flowing.
pub async fn relay<A, B>(a: &mut A, b: &mut B) -> std::io::Result<Transferred>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (a_to_b, b_to_a) =
        tokio::io::copy_bidirectional_with_sizes(a, b, RELAY_BUFFER, RELAY_BUFFER).await?;
    Ok(Transferred { a_to_b, b_to_a })
}

/// Limits on a relayed connection's quiet periods.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// No byte either way for this long: the connection is closed.
    pub idle: Duration,
    /// One side finished sending this long ago and the other still has not: closed. A peer that
    /// vanished without a FIN would otherwise hold the connection (and its memory) forever.
    pub half_close: Duration,
}

/// Why a relay ended.
#[derive(Debug)]
pub enum RelayEnd {
    /// Both directions finished.
    Complete,
    Idle,
    HalfClosed,
    /// `stop` resolved first (a policy now denies the connection, or the agent is draining).
    Stopped(String),
    Error(io::Error),
}

/// [`relay`], bounded by `timeouts` and by `stop`. Byte counts are reported however it ends.
pub async fn relay_with<A, B>(
    a: A,
    b: B,
    timeouts: Timeouts,
    stop: impl Future<Output = String>,
) -> (Transferred, RelayEnd)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity::new());
    let mut a = Tracked {
        inner: a,
        activity: activity.clone(),
        side: 0,
    };
    let mut b = Tracked {
        inner: b,
        activity: activity.clone(),
        side: 1,
    };
    let end = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, RELAY_BUFFER, RELAY_BUFFER) => match r {
            Ok(_) => RelayEnd::Complete,
            Err(e) => RelayEnd::Error(e),
        },
        end = watchdog(&activity, timeouts) => end,
        reason = stop => RelayEnd::Stopped(reason),
    };
    let transferred = Transferred {
        a_to_b: activity.read[0].load(Ordering::Relaxed),
        b_to_a: activity.read[1].load(Ordering::Relaxed),
    };
    (transferred, end)
}

struct Activity {
    start: Instant,
    /// Milliseconds since `start` of the last successful read.
    last: AtomicU64,
    /// Bytes read from each side.
    read: [AtomicU64; 2],
    /// Milliseconds since `start` (+1, so 0 means "not yet") when each side's reads ended.
    eof: [AtomicU64; 2],
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            last: AtomicU64::new(0),
            read: Default::default(),
            eof: Default::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

async fn watchdog(activity: &Activity, timeouts: Timeouts) -> RelayEnd {
    let tick = (timeouts.idle.min(timeouts.half_close) / 4).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(tick).await;
        let now = activity.now_ms();
        if now.saturating_sub(activity.last.load(Ordering::Relaxed))
            >= timeouts.idle.as_millis() as u64
        {
            return RelayEnd::Idle;
        }
        let ended: Vec<u64> = activity
            .eof
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .filter(|e| *e > 0)
            .collect();
        if ended.len() == 1 && now + 1 - ended[0] >= timeouts.half_close.as_millis() as u64 {
            return RelayEnd::HalfClosed;
        }
    }
}

/// A stream that records its reads into the shared [`Activity`].
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    side: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            let n = (buf.filled().len() - before) as u64;
            let activity = &self.activity;
            let now = activity.now_ms();
            if n == 0 {
                activity.eof[self.side].store(now + 1, Ordering::Relaxed);
            } else {
                activity.read[self.side].fetch_add(n, Ordering::Relaxed);
            }
            activity.last.store(now, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn counts_bytes_and_completes_on_both_eofs() {
        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let relay = tokio::spawn(relay_with(
            a,
            b,
            Timeouts {
                idle: LONG,
                half_close: LONG,
            },
            std::future::pending(),
        ));
        client.write_all(b"hello").await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        server.write_all(b"bye!!!").await.unwrap();
        server.shutdown().await.unwrap();
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.unwrap();
        let (t, end) = relay.await.unwrap();
        assert!(matches!(end, RelayEnd::Complete), "{end:?}");
        assert_eq!((t.a_to_b, t.b_to_a), (5, 6));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_and_half_closed_connections_are_closed() {
        let (_client, a) = duplex(1024);
        let (b, _server) = duplex(1024);
        let timeouts = Timeouts {
            idle: Duration::from_secs(30),
            half_close: LONG,
        };
        let (_, end) = relay_with(a, b, timeouts, std::future::pending()).await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");

        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let timeouts = Timeouts {
            idle: LONG,
            half_close: Duration::from_secs(5),
        };
        let task = tokio::spawn(relay_with(a, b, timeouts, std::future::pending()));
        client.shutdown().await.unwrap();
        // The server keeps its side open and silent, but keeps the connection active.
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        let (_, end) = task.await.unwrap();
        assert!(matches!(end, RelayEnd::HalfClosed), "{end:?}");
    }

    #[tokio::test]
    async fn stop_ends_the_relay_with_its_reason() {
        let (_client, a) = duplex(1024);
        let (b, _server) = duplex(1024);
        let timeouts = Timeouts {
            idle: LONG,
            half_close: LONG,
        };
        let (_, end) = relay_with(a, b, timeouts, async { "policy".to_string() }).await;
        assert!(matches!(end, RelayEnd::Stopped(r) if r == "policy"));
    }
}
