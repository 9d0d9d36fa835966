//! Open-loop load paced by OS threads, one per connection, each sleeping to an absolute time with
//! a 1 µs timer slack.
//!
//! Why not tokio's timers: they fire on a 1 ms grid, so every sample of every path carried 0-1 ms
//! of timer lateness (uniformly spread), and a p99 difference of 0.2 ms between two paths was a
//! difference of two such noisy tails. A thread blocked in `read` also wakes the moment the answer
//! arrives, with no runtime in between, so what is left in a sample is the path and the kernel.

use std::io;
use std::thread;
use std::time::{Duration, Instant};

/// The open loop's shape, the same flags in every benchmark that runs one.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Load {
    /// Requests per second of the open-loop (fixed-rate) load.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Connections the rate is spread over.
    #[arg(long, default_value_t = 50)]
    pub connections: u32,
}

/// The default timer slack (50 µs) would let the kernel batch our wake-ups that much late.
const TIMER_SLACK_NS: libc::c_ulong = 1_000;

/// Runs `request` on each connection at its share of `rate` requests per second for `length`,
/// connections staggered evenly across one interval so the load is smooth rather than bursts of
/// `conns.len()`. Returns each request's latency counted from its scheduled time (queueing
/// behind a slow answer shows), with the outcome `request` returned for it. The connections are
/// only borrowed, so a benchmark can alternate paths in rounds on the same connections.
pub fn open_loop<C, T>(
    conns: &mut [C],
    rate: u32,
    length: Duration,
    request: fn(&mut C) -> io::Result<T>,
) -> io::Result<Vec<(Duration, T)>>
where
    C: Send,
    T: Send,
{
    if conns.is_empty() || rate == 0 {
        return Err(io::Error::other("open loop: no connections or a rate of 0"));
    }
    let count = conns.len() as f64;
    let interval = Duration::from_secs_f64(count / f64::from(rate));
    // Every thread is started before the first send.
    let start = Instant::now() + Duration::from_millis(50);
    let deadline = start + length;
    let per_conn = (length.as_secs_f64() / interval.as_secs_f64()).ceil() as usize;
    thread::scope(|scope| {
        let threads: Vec<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, conn)| {
                let mut at = start + interval.mul_f64(i as f64 / count);
                scope.spawn(move || {
                    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
                    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, TIMER_SLACK_NS) };
                    let mut samples = Vec::with_capacity(per_conn);
                    while at < deadline {
                        if let Some(wait) = at.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        let outcome = request(conn)?;
                        samples.push((at.elapsed(), outcome));
                        at += interval;
                    }
                    Ok::<_, io::Error>(samples)
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            let samples = t
                .join()
                .map_err(|_| io::Error::other("a load thread panicked"))?;
            all.extend(samples?);
        }
        Ok(all)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn every_connection_sends_its_share_at_the_rate() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let mut s = stream.unwrap();
                thread::spawn(move || {
                    let mut b = [0u8; 8];
                    while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
                });
            }
        });
        let mut conns: Vec<_> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let echoes = |s: &mut TcpStream| -> io::Result<bool> {
            s.write_all(b"12345678")?;
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            Ok(b == *b"12345678")
        };
        let samples = open_loop(&mut conns, 200, Duration::from_secs(1), echoes).unwrap();
        // 200 per second for one second, each connection 50 at 20 ms intervals.
        assert_eq!(samples.len(), 200);
        assert!(samples.iter().all(|(_, echoed)| *echoed));
        // The connections are still there for another round.
        let again = open_loop(&mut conns, 400, Duration::from_millis(500), echoes).unwrap();
        assert_eq!(again.len(), 200);
        assert!(again.iter().all(|(_, echoed)| *echoed));
    }
}
