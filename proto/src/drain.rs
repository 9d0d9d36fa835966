//! Graceful shutdown: stop accepting, let open connections finish up to a deadline, then stop.
//!
//! A [`Trigger`] and any number of [`Watch`]es. Every server and every connection holds a `Watch`;
//! `Trigger::drain` signals them all, then waits until every `Watch` is dropped or the deadline
//! passes. What happens to connections still open at the deadline is the caller's choice (the
//! binaries exit, which closes them).

use std::time::Duration;

use tokio::sync::watch;

/// A new trigger and the first watch on it.
pub fn channel() -> (Trigger, Watch) {
    let (tx, rx) = watch::channel(false);
    (Trigger { tx }, Watch { rx })
}

pub struct Trigger {
    tx: watch::Sender<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every watch was dropped before the deadline.
    Complete,
    /// The deadline passed with this many watches still held.
    DeadlineExceeded { remaining: usize },
}

impl Trigger {
    /// Signals every watch and waits for all of them to be dropped, at most `deadline`.
    pub async fn drain(self, deadline: Duration) -> DrainOutcome {
        self.tx.send_replace(true);
        match tokio::time::timeout(deadline, self.tx.closed()).await {
            Ok(()) => DrainOutcome::Complete,
            Err(_) => DrainOutcome::DeadlineExceeded {
                remaining: self.tx.receiver_count(),
            },
        }
    }
}

/// Held by whatever must finish before shutdown completes. Cloning registers one more holder.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
}

impl Watch {
    /// Resolves once draining has started (at once if it already has).
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        // An error means the trigger was dropped without draining: treat that as a drain too.
        let _ = rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_holders_then_completes() {
        let (trigger, watch) = channel();
        let held = watch.clone();
        let holder = tokio::spawn(async move {
            held.signaled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(held);
        });
        drop(watch);
        assert_eq!(
            trigger.drain(Duration::from_secs(5)).await,
            DrainOutcome::Complete
        );
        holder.await.unwrap();
    }

    #[tokio::test]
    async fn reports_holders_left_at_the_deadline() {
        let (trigger, watch) = channel();
        let outcome = trigger.drain(Duration::from_millis(10)).await;
        assert_eq!(outcome, DrainOutcome::DeadlineExceeded { remaining: 1 });
        assert!(watch.is_draining());
    }
}
