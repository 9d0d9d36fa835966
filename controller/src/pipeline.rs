//! Source -> translate -> publish: turns each new [`ClusterState`] into the next [`Generation`].
//!
//! Watch channels on both sides make bursts coalesce: while one translation runs, any number of
//! state changes collapse into the newest, which is translated next.
//!
//! Scale: the first state is translated in full; every later one incrementally. The pipeline keeps
//! the state it last translated (a copy that shares every object, see `model/state.rs`, and is
//! updated by the changes alone), finds the objects that differ by pointer comparison, re-translates what those can affect
//! ([`Translator::update`]) and encodes only the resources that came out different. One pod
//! change at 10k pods is a pass over ~12k pointers, one pod's translation and one resource's
//! encoding.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;
use tracing::debug;

use crate::model::ClusterState;
use crate::push::Generation;
use crate::translate::{Settings, Translator};

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
    let mut translator = Translator::new(settings);
    let mut translated: Option<ClusterState> = None;
    loop {
        let since = Instant::now();
        // Under the borrow the source waits; it is held for one diff and one incremental
        // translation, not for publishing.
        let changes = {
            let state = states.borrow_and_update();
            match &mut translated {
                None => {
                    translated = Some(state.clone());
                    translator.rebuild(&state)
                }
                Some(before) => {
                    let changed = state.changes_since(before);
                    // Brought up to date by the changes alone: copying 12k entries (and dropping
                    // the old copy) on every change was a visible part of a change's cost.
                    for change in &changed {
                        match &change.after {
                            Some(object) => before.insert(object.clone()),
                            None => before.remove(&change.key),
                        };
                    }
                    translator.update(&state, &changed)
                }
            }
        };
        let first = generations.borrow().number == 0;
        if first || !changes.is_empty() {
            let next = generations.borrow().apply(&changes, since);
            let snapshot = translator.snapshot();
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
