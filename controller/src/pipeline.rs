//! Source -> translate -> publish: turns each new [`ClusterState`] into the next [`Generation`].
//!
//! Watch channels on both sides make bursts coalesce: while one translation runs, any number of
//! state changes collapse into the newest, which is translated next.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::debug;

use crate::model::ClusterState;
use crate::push::Generation;
use crate::translate::{Settings, translate};

/// Waits until the source has delivered its first complete state (`source_ready`), then publishes
/// a generation for it and for every change after it, until the state sender is dropped.
/// Identical translations publish nothing.
///
/// Waiting matters: a generation translated from the empty initial state would make the
/// controller look ready and tell agents the mesh is empty.
pub async fn run(
    mut states: watch::Receiver<ClusterState>,
    mut source_ready: watch::Receiver<bool>,
    settings: Settings,
    generations: watch::Sender<Arc<Generation>>,
) {
    if source_ready.wait_for(|ready| *ready).await.is_err() {
        return;
    }
    loop {
        let since = Instant::now();
        // Translating under the borrow avoids copying 10k pods; the source waits at most one
        // translation to publish its next state.
        let snapshot = {
            let state = states.borrow_and_update();
            translate(&state, &settings)
        };
        let next = generations.borrow().next(&snapshot, since);
        if next.number == 1 || !next.is_unchanged() {
            debug!(
                generation = next.number,
                workloads = snapshot.workloads.len(),
                services = snapshot.services.len(),
                authorizations = snapshot.authorizations.len(),
                "config published"
            );
            generations.send_replace(Arc::new(next));
        }
        if states.changed().await.is_err() {
            return;
        }
    }
}
