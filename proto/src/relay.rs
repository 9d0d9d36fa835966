//! Splicing two byte streams together, with half-close and byte counts.
//!
//! Every data path in Ambit ends here (agent outbound, agent inbound, waypoint opaque TCP), so the
//! buffer size is chosen once: 64 KiB per direction. Bigger buffers measured no faster on loopback
//! (bench/README.md) and memory per connection is a target of its own.

use tokio::io::{AsyncRead, AsyncWrite};

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
