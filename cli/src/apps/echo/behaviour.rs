//! How the echo server answers HTTP: at once and with the status asked for, or as a backend with
//! a problem (`--delay`, `--fail-every`), so a test sees what a proxy in front of it does about
//! that: a per-try timeout firing, a retry turning a failure into a success.
//!
//! Failures are every n-th request rather than random: a test that counts what the client got
//! and what the server answered can then expect exact numbers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The `ambit app echo` flags that change its HTTP answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Behaviour {
    /// Every n-th HTTP request the server answers (counted across all its connections, 1-based:
    /// 2 fails the 2nd, 4th, ...) gets `fail_status`, whatever it asked for; 0 fails none.
    pub fail_every: u64,
    pub fail_status: u16,
    /// Held before every HTTP answer.
    pub delay: Duration,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            fail_every: 0,
            // What an overloaded backend answers, and what retry policies retry on.
            fail_status: 503,
            delay: Duration::ZERO,
        }
    }
}

/// One echo server: its name and behaviour, and the count of HTTP requests it has answered.
#[derive(Debug)]
pub struct Server {
    /// Reported as `server=` and in the raw greeting.
    pub name: String,
    behaviour: Behaviour,
    answered: AtomicU64,
}

impl Server {
    pub fn new(name: &str, behaviour: Behaviour) -> Server {
        Server {
            name: name.to_owned(),
            behaviour,
            answered: AtomicU64::new(0),
        }
    }

    /// The status to answer a request with that asked for `asked`, once the delay has passed.
    pub async fn status(&self, asked: u16) -> u16 {
        if !self.behaviour.delay.is_zero() {
            tokio::time::sleep(self.behaviour.delay).await;
        }
        let n = self.answered.fetch_add(1, Ordering::Relaxed) + 1;
        let every = self.behaviour.fail_every;
        if every != 0 && n.is_multiple_of(every) {
            self.behaviour.fail_status
        } else {
            asked
        }
    }
}

#[cfg(test)]
impl Server {
    /// A server that fails every second request with 503, for the tests of what sees it.
    pub(crate) fn flaky(name: &str) -> Server {
        let behaviour = Behaviour {
            fail_every: 2,
            ..Behaviour::default()
        };
        Server::new(name, behaviour)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_nth_answer_fails_whatever_was_asked() {
        let server = Server::flaky("flaky");
        let mut statuses = Vec::new();
        for asked in [200, 200, 418, 404, 200] {
            statuses.push(server.status(asked).await);
        }
        assert_eq!(statuses, [200, 503, 418, 503, 200]);
    }

    #[tokio::test]
    async fn a_plain_server_answers_what_was_asked() {
        let server = Server::new("e", Behaviour::default());
        for asked in [200, 404, 503] {
            assert_eq!(server.status(asked).await, asked);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_server_answers_after_its_delay() {
        let server = Server::new(
            "slow",
            Behaviour {
                delay: Duration::from_secs(2),
                ..Behaviour::default()
            },
        );
        let start = tokio::time::Instant::now();
        assert_eq!(server.status(200).await, 200);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
