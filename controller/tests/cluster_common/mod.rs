//! What the real-cluster tests (`cluster.rs`, `cluster_install.rs`) share: how long they wait
//! and how they wait for the cluster to get somewhere.
#![allow(dead_code)]

use std::time::Duration;

/// Generous: the first pod on a node may wait for an image pull.
pub const PATIENCE: Duration = Duration::from_secs(180);

/// Polls `get` until `done` holds for what it returns.
pub async fn until<T, F, Fut>(what: &str, mut get: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let poll = async {
        loop {
            if let Some(value) = get().await
                && done(&value)
            {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(PATIENCE, poll)
        .await
        .unwrap_or_else(|_| panic!("never happened: {what}"))
}
