//! The relay's state machine: both directions and the quiet-period watchdog in one future, so a
//! connection costs one task and no shared counters.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::time::{Instant, Sleep};

use super::endpoint::Endpoint;
use super::{RelayEnd, Timeouts, Transferred};

/// The first read buffer of a direction. Small: most connections carry requests of a few hundred
/// bytes, and memory per connection is a target of its own.
pub(super) const MIN_READ: usize = 4 * 1024;
/// Where doubling stops. A bulk transfer fills each read, so its buffer grows to this within a
/// few reads. Bigger reads measured no faster (bench/README.md), and staying under glibc's mmap
/// threshold (128 KiB) keeps each chunk h2 still holds from costing an mmap, page faults and an
/// munmap.
///
/// Not 64 KiB: into a tunnel each chunk becomes one HTTP/2 DATA frame, sent as one write of its
/// TLS records, and the kernel sends a write as TCP bursts of at most 64 KiB (one GSO/TSO packet,
/// whole segments). A 64 KiB chunk is 65.6 KB of TLS, so every frame went out as a full packet
/// and a 1.9 KB one: twice the packets, ACKs and per-packet kernel work for the same bytes, on
/// both nodes. 60 KiB fits one burst at every common MSS (one-burst constraint below); single-
/// stream throughput through two agents went from 44-47% to 59-60% of the direct path.
pub(super) const MAX_READ: usize = 60 * 1024;

/// The one-burst constraint: a full chunk's DATA frame (9-byte header) in TLS 1.3 records (16 KiB
/// of plaintext each, plus a 5-byte header, the content type byte and a 16-byte tag) fits one
/// kernel send burst (64 KiB less the kernel's header room, in whole segments) at the MSS of
/// overlays, plain Ethernet with and without timestamps, and jumbo frames.
const _: () = {
    const RECORDS: usize = MAX_READ.div_ceil(16 * 1024);
    const ON_THE_WIRE: usize = 9 + MAX_READ + RECORDS * (5 + 1 + 16);
    const BURST: usize = 65536 - 1 - 320;
    let mss = [1400, 1448, 1460, 8948];
    let mut i = 0;
    while i < mss.len() {
        assert!(ON_THE_WIRE <= BURST / mss[i] * mss[i]);
        i += 1;
    }
};

/// Chunks one direction moves before it lets its task yield. An HTTP/2 sink only queues what it
/// is handed; the connection task that encrypts and writes it was woken on this worker and runs
/// only when this task yields, and tokio keeps it in a slot the other worker cannot steal from.
/// Without a turn limit, a bulk sender read up to the stream's whole send buffer (1 MiB, 16
/// reads) before one byte of it was written, and the two stages ran in bursts, one at a time.
const CHUNKS_PER_TURN: u32 = 4;

/// One direction: `from`'s reads go to `to`.
struct Direction {
    /// Where reads land (endpoints that keep their own memory leave it empty).
    buf: BytesMut,
    /// How much the next read may take: doubles while reads fill it, halves when they do not.
    read_size: usize,
    /// Read but not yet sent.
    pending: Option<Bytes>,
    /// Sent since the last flush.
    unflushed: bool,
    read_done: bool,
    finished: bool,
    bytes: u64,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: BytesMut::new(),
            read_size: MIN_READ,
            pending: None,
            unflushed: false,
            read_done: false,
            finished: false,
            bytes: 0,
        }
    }

    /// Ready when this direction has finished (its FIN passed on), or on an error.
    fn poll<F: Endpoint, T: Endpoint>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut F,
        to: &mut T,
    ) -> Poll<io::Result<()>> {
        let mut sent = 0;
        loop {
            if let Some(chunk) = &mut self.pending {
                while !chunk.is_empty() {
                    ready!(to.poll_send(cx, chunk))?;
                }
                self.pending = None;
                self.unflushed = true;
                sent += 1;
                if sent == CHUNKS_PER_TURN {
                    ready!(to.poll_flush(cx))?;
                    self.unflushed = false;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
            if self.read_done {
                if self.unflushed {
                    ready!(to.poll_flush(cx))?;
                    self.unflushed = false;
                }
                if !self.finished {
                    ready!(to.poll_finish(cx))?;
                    self.finished = true;
                }
                return Poll::Ready(Ok(()));
            }
            self.reserve();
            match from.poll_chunk(cx, &mut self.buf) {
                Poll::Pending => {
                    // Nothing more to read now: what was sent must not wait in a buffer.
                    if self.unflushed {
                        ready!(to.poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(None)) => self.read_done = true,
                Poll::Ready(Ok(Some(chunk))) => {
                    self.adapt(chunk.len());
                    self.bytes += chunk.len() as u64;
                    self.pending = Some(chunk);
                }
            }
        }
    }

    /// Makes room for the next read. `reserve` takes back the previous allocation when every
    /// chunk cut from it has been dropped, so a socket-to-socket copy reuses one buffer.
    fn reserve(&mut self) {
        if self.buf.capacity() >= 4 * self.read_size.max(MIN_READ) && self.buf.is_empty() {
            // The connection went quiet after a burst: give the big buffer back.
            self.buf = BytesMut::new();
        }
        if self.buf.capacity() - self.buf.len() < self.read_size {
            self.buf.reserve(self.read_size);
        }
    }

    fn adapt(&mut self, read: usize) {
        if read >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if read < self.read_size / 8 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
    }
}

/// Both directions of a connection between `a` and `b`, with its quiet-period limits.
pub(super) struct Relay<A, B> {
    a: A,
    b: B,
    a_to_b: Direction,
    b_to_a: Direction,
    limits: Option<Watchdog>,
}

impl<A: Endpoint, B: Endpoint> Relay<A, B> {
    pub fn new(a: A, b: B, timeouts: Option<Timeouts>) -> Self {
        Relay {
            a,
            b,
            a_to_b: Direction::new(),
            b_to_a: Direction::new(),
            limits: timeouts.map(Watchdog::new),
        }
    }

    pub fn transferred(&self) -> Transferred {
        Transferred {
            a_to_b: self.a_to_b.bytes,
            b_to_a: self.b_to_a.bytes,
        }
    }

    pub fn poll(&mut self, cx: &mut Context<'_>) -> Poll<RelayEnd> {
        let forward = self.a_to_b.poll(cx, &mut self.a, &mut self.b);
        if let Poll::Ready(Err(e)) = forward {
            return Poll::Ready(RelayEnd::Error(e));
        }
        let back = self.b_to_a.poll(cx, &mut self.b, &mut self.a);
        if let Poll::Ready(Err(e)) = back {
            return Poll::Ready(RelayEnd::Error(e));
        }
        if forward.is_ready() && back.is_ready() {
            return Poll::Ready(RelayEnd::Complete);
        }
        match &mut self.limits {
            Some(watchdog) => watchdog.poll(cx, [&self.a_to_b, &self.b_to_a]),
            None => Poll::Pending,
        }
    }
}

/// Idle and half-close limits, checked on a coarse tick rather than by resetting a timer on every
/// read: the hot path then never reads the clock, and a limit is enforced within a quarter of
/// itself.
struct Watchdog {
    timeouts: Timeouts,
    tick: Duration,
    sleep: Pin<Box<Sleep>>,
    /// Bytes seen at the last tick, and when they last changed.
    seen: u64,
    active_at: Instant,
    /// When each direction's reads were first seen ended.
    ended_at: [Option<Instant>; 2],
}

impl Watchdog {
    fn new(timeouts: Timeouts) -> Self {
        let tick = (timeouts.idle.min(timeouts.half_close) / 4).max(Duration::from_millis(10));
        let now = Instant::now();
        Watchdog {
            timeouts,
            tick,
            sleep: Box::pin(tokio::time::sleep_until(now + tick)),
            seen: 0,
            active_at: now,
            ended_at: [None; 2],
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>, directions: [&Direction; 2]) -> Poll<RelayEnd> {
        while self.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let seen: u64 = directions.iter().map(|d| d.bytes).sum();
            if seen != self.seen {
                self.seen = seen;
                self.active_at = now;
            }
            for (ended, d) in self.ended_at.iter_mut().zip(directions) {
                if d.read_done && ended.is_none() {
                    *ended = Some(now);
                }
            }
            if now - self.active_at >= self.timeouts.idle {
                return Poll::Ready(RelayEnd::Idle);
            }
            if let [Some(t), None] | [None, Some(t)] = self.ended_at
                && now - t >= self.timeouts.half_close
            {
                return Poll::Ready(RelayEnd::HalfClosed);
            }
            self.sleep.as_mut().reset(now + self.tick);
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::relay::Io;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test]
    async fn a_bulk_direction_yields_its_task_after_a_few_chunks() {
        // Far more is readable at once than one turn moves.
        let (mut client, a) = tokio::io::duplex(4 * 1024 * 1024);
        let (b, mut server) = tokio::io::duplex(4 * 1024 * 1024);
        client.write_all(&vec![7u8; 1024 * 1024]).await.unwrap();
        let mut relay = Relay::new(Io(a), Io(b), None);
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = std::task::Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(relay.poll(&mut cx).is_pending());
        let moved = relay.transferred().a_to_b;
        assert!(
            moved > 0 && moved < 1024 * 1024,
            "moved {moved} in one turn"
        );
        assert_eq!(
            counter.0.load(Ordering::Relaxed),
            1,
            "the task is woken to go on"
        );
        // Later turns move the rest.
        while relay.transferred().a_to_b < 1024 * 1024 {
            assert!(relay.poll(&mut cx).is_pending());
        }
        let mut got = vec![0u8; 1024 * 1024];
        server.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
    }

    #[test]
    fn reads_grow_while_they_fill_the_buffer_and_shrink_when_they_do_not() {
        let mut d = Direction::new();
        let mut sizes = vec![d.read_size];
        while d.read_size < MAX_READ {
            d.adapt(d.read_size);
            sizes.push(d.read_size);
        }
        assert_eq!(sizes.first(), Some(&MIN_READ));
        assert_eq!(
            sizes.len(),
            5,
            "4 KiB doubles to MAX_READ in four full reads: {sizes:?}"
        );
        d.adapt(MAX_READ);
        assert_eq!(d.read_size, MAX_READ, "never past the maximum");
        for _ in 0..20 {
            d.adapt(64);
        }
        assert_eq!(d.read_size, MIN_READ, "small reads bring it back down");
        // A quiet connection gives back the big allocation it grew during a burst.
        d.buf = BytesMut::with_capacity(MAX_READ);
        d.reserve();
        assert!(d.buf.capacity() < MAX_READ, "{}", d.buf.capacity());
        assert!(d.buf.capacity() >= MIN_READ);
    }
}
