//! Splicing two byte streams together, with half-close, byte counts and timeouts.
//!
//! Every data path in Ambit ends here (agent outbound, agent inbound, waypoint opaque TCP). Bytes
//! move as owned chunks ([`Endpoint`]), so an HBONE tunnel hands what it reads from a socket to
//! HTTP/2 without copying it, and writes what HTTP/2 received straight to the socket. Read
//! buffers start small and grow only for connections that fill them (memory per connection is a
//! target of its own).

mod copy;
mod endpoint;

use std::future::poll_fn;
use std::io;
use std::time::Duration;

pub use endpoint::{Endpoint, Io};

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
pub async fn relay<A: Endpoint, B: Endpoint>(a: A, b: B) -> io::Result<Transferred> {
    let mut relay = copy::Relay::new(a, b, None);
    match poll_fn(|cx| relay.poll(cx)).await {
        RelayEnd::Error(e) => Err(e),
        _ => Ok(relay.transferred()),
    }
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
pub async fn relay_with<A: Endpoint, B: Endpoint>(
    a: A,
    b: B,
    timeouts: Timeouts,
    stop: impl Future<Output = String>,
) -> (Transferred, RelayEnd) {
    let mut relay = copy::Relay::new(a, b, Some(timeouts));
    let end = tokio::select! {
        end = poll_fn(|cx| relay.poll(cx)) => end,
        reason = stop => RelayEnd::Stopped(reason),
    };
    (relay.transferred(), end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const LONG: Duration = Duration::from_secs(3600);
    const UNLIMITED: Timeouts = Timeouts {
        idle: LONG,
        half_close: LONG,
    };

    #[tokio::test]
    async fn counts_bytes_and_completes_on_both_eofs() {
        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let relay = tokio::spawn(relay_with(Io(a), Io(b), UNLIMITED, std::future::pending()));
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
        let (_, end) = relay_with(Io(a), Io(b), timeouts, std::future::pending()).await;
        assert!(matches!(end, RelayEnd::Idle), "{end:?}");

        let (mut client, a) = duplex(1024);
        let (b, mut server) = duplex(1024);
        let timeouts = Timeouts {
            idle: LONG,
            half_close: Duration::from_secs(5),
        };
        let task = tokio::spawn(relay_with(Io(a), Io(b), timeouts, std::future::pending()));
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
        let (_, end) = relay_with(Io(a), Io(b), UNLIMITED, async { "policy".to_string() }).await;
        assert!(matches!(end, RelayEnd::Stopped(r) if r == "policy"));
    }

    #[tokio::test]
    async fn a_bulk_transfer_arrives_whole_and_in_order_both_ways() {
        // Larger than the biggest read buffer, through pipes smaller than a read: every chunk
        // is split across sends and buffers are reused or reallocated while chunks are in flight.
        let data: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i * 7 + i / 251) as u8)
            .collect();
        let (mut client, a) = duplex(7 * 1024);
        let (b, mut server) = duplex(5 * 1024);
        let relay = tokio::spawn(relay(Io(a), Io(b)));
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert!(got == data, "forward bytes differ");
        server.write_all(&data[..100_000]).await.unwrap();
        server.shutdown().await.unwrap();
        let back = writer.await.unwrap();
        assert!(back == data[..100_000], "return bytes differ");
        let t = relay.await.unwrap().unwrap();
        assert_eq!((t.a_to_b, t.b_to_a), (data.len() as u64, 100_000));
    }

    #[tokio::test]
    async fn an_error_on_either_side_ends_the_relay_with_it() {
        let (mut client, a) = duplex(1024);
        let (b, server) = duplex(1024);
        let task = tokio::spawn(relay_with(Io(a), Io(b), UNLIMITED, std::future::pending()));
        // The server vanishes; the client's bytes cannot be delivered.
        drop(server);
        client.write_all(b"into the void").await.unwrap();
        let (_, end) = task.await.unwrap();
        assert!(matches!(end, RelayEnd::Error(_)), "{end:?}");
    }
}
