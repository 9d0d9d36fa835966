//! The benchmark's HTTP servers in the server pods, and what each one answered (the split
//! column checks the 90/10 route from these counts).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ambit_bench::http1;
use ambit_bench::pod::listen_in;
use ambit_tests::mesh::Mesh;
use anyhow::Result;

use super::HTTP;

/// Requests each server pod answered, by pod name.
pub type Served = Vec<(&'static str, Arc<AtomicU64>)>;

/// The HTTP servers of the four server pods, served from one background thread.
pub fn start_backends(mesh: &Mesh) -> Result<Served> {
    let mut listeners = Vec::new();
    let mut served = Served::new();
    for (pod, name) in [
        ("mesh-server-a", "a"),
        ("mesh-server-b", "b"),
        ("direct-server-a", "a"),
        ("direct-server-b", "b"),
    ] {
        let addr = SocketAddr::new([0, 0, 0, 0].into(), HTTP);
        let counter = Arc::new(AtomicU64::new(0));
        served.push((pod, counter.clone()));
        listeners.push((listen_in(&mesh.pod(pod).netns, addr)?, name, counter));
    }
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut tasks = Vec::new();
            for (l, name, counter) in listeners {
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                tasks.push(tokio::spawn(http1::serve(l, name, counter)));
            }
            futures::future::join_all(tasks).await;
        });
    });
    Ok(served)
}

/// Share of the requests answered by the `-a` server of the client's kind since `before`.
pub fn split(served: &Served, client: &str, before: &[u64]) -> String {
    let kind = client.split('-').next().unwrap_or("");
    let now: Vec<u64> = served
        .iter()
        .map(|(_, c)| c.load(Ordering::Relaxed))
        .collect();
    let count = |suffix: &str| -> u64 {
        served
            .iter()
            .zip(now.iter().zip(before))
            .filter(|((pod, _), _)| pod.starts_with(kind) && pod.ends_with(suffix))
            .map(|(_, (n, b))| n - b)
            .sum()
    };
    let (a, b) = (count("-a"), count("-b"));
    if a + b == 0 {
        return "-".into();
    }
    format!(
        "{:.1}/{:.1}",
        100.0 * a as f64 / (a + b) as f64,
        100.0 * b as f64 / (a + b) as f64
    )
}

pub fn counts(served: &Served) -> Vec<u64> {
    served
        .iter()
        .map(|(_, c)| c.load(Ordering::Relaxed))
        .collect()
}
