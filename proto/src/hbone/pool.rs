//! HTTP/2 connections to HBONE peers, pooled per (source identity, destination identities,
//! destination address, source address) and shared by many streams.
//!
//! One connection per key serves streams until it reaches the peer's stream limit; only then is a
//! second one opened. New connections for a key are made one at a time (single flight), so a burst
//! of 100 new tunnels to one peer shares one TLS handshake instead of racing 100 of them. A
//! connection with no streams for `idle_timeout` is dropped, which closes it gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use tracing::debug;

use super::HboneError;
use crate::identity::Identity;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub source: Identity,
    /// Sorted, so the same set in another order is the same key.
    pub destinations: Vec<Identity>,
    pub address: SocketAddr,
    pub source_address: Option<std::net::IpAddr>,
}

/// One HTTP/2 connection in the pool.
#[derive(Clone)]
pub(crate) struct Connection {
    pub send: SendRequest<Bytes>,
    active: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    last_idle: Arc<Mutex<Instant>>,
    max_streams: usize,
}

impl Connection {
    /// `closed` is set by the task driving the connection when it ends.
    pub fn new(send: SendRequest<Bytes>, closed: Arc<AtomicBool>, max_streams: usize) -> Self {
        Connection {
            send,
            active: Arc::default(),
            closed,
            last_idle: Arc::new(Mutex::new(Instant::now())),
            max_streams,
        }
    }

    fn usable(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }

    fn has_room(&self) -> bool {
        let limit = self.max_streams.min(self.send.current_max_send_streams());
        self.active.load(Ordering::Acquire) < limit
    }

    fn idle_since(&self) -> Option<Instant> {
        (self.active.load(Ordering::Acquire) == 0).then(|| *self.last_idle.lock().expect("lock"))
    }

    /// Marks the connection unusable for new streams (e.g. after the peer sent GOAWAY).
    pub fn retire(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn lease(&self) -> Lease {
        self.active.fetch_add(1, Ordering::AcqRel);
        Lease { conn: self.clone() }
    }
}

/// A stream's claim on a connection; dropping it frees the slot.
pub(crate) struct Lease {
    pub conn: Connection,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.conn.last_idle.lock().expect("lock") = Instant::now();
        }
    }
}

#[derive(Default)]
struct Slot {
    conns: tokio::sync::Mutex<Vec<Connection>>,
    /// Bumped, with `last_error` set, whenever a connect for this key fails, so requests that
    /// queued behind that attempt fail with it instead of each trying (and timing out) in turn.
    failures: AtomicU64,
    last_error: Mutex<String>,
}

pub(crate) struct Pool {
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    max_streams: usize,
}

impl Pool {
    pub fn new(max_streams: usize, idle_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new(Pool {
            slots: Mutex::default(),
            max_streams,
        });
        // The reaper holds only a weak reference: it ends when the client is dropped.
        let weak = Arc::downgrade(&pool);
        tokio::spawn(reap(weak, idle_timeout));
        pool
    }

    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// A stream slot on a pooled connection for `key`, connecting with `connect` if none has room.
    pub async fn checkout<F, Fut>(&self, key: &PoolKey, connect: F) -> Result<Lease, HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        let slot = self
            .slots
            .lock()
            .expect("lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let failures_before = slot.failures.load(Ordering::Acquire);
        let mut conns = slot.conns.lock().await;
        conns.retain(Connection::usable);
        if let Some(conn) = conns.iter().find(|c| c.has_room()) {
            return Ok(conn.lease());
        }
        if slot.failures.load(Ordering::Acquire) != failures_before {
            let err = slot.last_error.lock().expect("lock").clone();
            return Err(HboneError::PooledConnectFailed(key.address, err));
        }
        match connect().await {
            Ok(conn) => {
                debug!(peer = %key.address, conns = conns.len() + 1, "new pooled HBONE connection");
                let lease = conn.lease();
                conns.push(conn);
                Ok(lease)
            }
            Err(e) => {
                *slot.last_error.lock().expect("lock") = e.to_string();
                slot.failures.fetch_add(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Number of live connections per key, for tests and the admin dump.
    pub fn connection_count(&self) -> usize {
        let slots: Vec<Arc<Slot>> = self.slots.lock().expect("lock").values().cloned().collect();
        slots
            .iter()
            .map(|s| {
                s.conns
                    .try_lock()
                    .map(|c| c.iter().filter(|c| c.usable()).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    fn sweep(&self, idle_timeout: Duration) {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("lock");
        slots.retain(|_, slot| {
            // A slot being connected right now is busy; leave it for the next sweep.
            let Ok(mut conns) = slot.conns.try_lock() else {
                return true;
            };
            conns.retain(|c| {
                c.usable()
                    && c.idle_since()
                        .is_none_or(|idle| now.duration_since(idle) < idle_timeout)
            });
            !conns.is_empty() || Arc::strong_count(slot) > 1
        });
    }
}

async fn reap(pool: Weak<Pool>, idle_timeout: Duration) {
    let mut tick = tokio::time::interval((idle_timeout / 2).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        pool.sweep(idle_timeout);
    }
}
