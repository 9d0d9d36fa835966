//! Open connections that a policy change may revoke.
//!
//! Istio applies a new AuthorizationPolicy to new connections only; a security team that just
//! denied a client expects its open connections to end too. Every authorized connection registers
//! here with what its decision was based on; after each config change the registry re-evaluates
//! them against the new state and stops the ones now denied.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_proto::{Identity, authz};
use tokio::sync::{oneshot, watch};
use tracing::info;

use crate::state::MeshState;

/// What an authorization decision was made on.
#[derive(Debug, Clone)]
pub struct Authorized {
    /// The destination workload's uid.
    pub destination_uid: String,
    pub source_identity: Option<Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
}

impl Authorized {
    pub fn attributes(&self) -> authz::Attributes<'_> {
        authz::Attributes {
            source_identity: self.source_identity.as_ref(),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
            destination_port: self.destination_port,
            http: None,
        }
    }

    /// The decision under `state`; `None` when the destination is no longer known (a deleted pod's
    /// connections end on their own).
    pub fn decide(&self, state: &MeshState) -> Option<authz::Decision> {
        let workload = state.workloads.get(&self.destination_uid)?;
        Some(state.authorize(workload, &self.attributes()))
    }
}

struct Entry {
    authorized: Authorized,
    stop: Option<oneshot::Sender<String>>,
}

#[derive(Default)]
pub struct Tracker {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

/// Unregisters its connection when dropped.
pub struct Registration {
    id: u64,
    tracker: Arc<Tracker>,
    stop: Option<oneshot::Receiver<String>>,
}

impl Registration {
    /// Resolves with the reason when a policy change revokes the connection.
    pub fn revoked(&mut self) -> impl Future<Output = String> + use<> {
        let rx = self.stop.take();
        async move {
            match rx {
                Some(rx) => match rx.await {
                    Ok(reason) => reason,
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tracker.open.lock().expect("tracker").remove(&self.id);
    }
}

impl Tracker {
    pub fn register(self: &Arc<Self>, authorized: Authorized) -> Registration {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.open.lock().expect("tracker").insert(
            id,
            Entry {
                authorized,
                stop: Some(tx),
            },
        );
        Registration {
            id,
            tracker: self.clone(),
            stop: Some(rx),
        }
    }

    /// Stops every open connection that `state` denies; returns how many.
    pub fn recheck(&self, state: &MeshState) -> usize {
        let mut open = self.open.lock().expect("tracker");
        let mut revoked = 0;
        for entry in open.values_mut() {
            let Some(decision) = entry.authorized.decide(state) else {
                continue;
            };
            if decision.allowed() {
                continue;
            }
            if let Some(stop) = entry.stop.take() {
                info!(
                    src = %entry.authorized.source_ip,
                    dst = %entry.authorized.destination_ip,
                    port = entry.authorized.destination_port,
                    "closing an open connection: {}",
                    decision.explain()
                );
                let _ = stop.send(decision.explain());
                revoked += 1;
            }
        }
        revoked
    }

    pub fn len(&self) -> usize {
        self.open.lock().expect("tracker").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-checks after every config change, for the agent's life.
    pub async fn run(self: Arc<Self>, mut states: watch::Receiver<Arc<MeshState>>) {
        while states.changed().await.is_ok() {
            let state = states.borrow_and_update().clone();
            self.recheck(&state);
        }
    }
}
