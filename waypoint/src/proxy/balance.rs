//! Picking an endpoint and protecting backends: load balancing (round robin, least requests,
//! random), outlier detection (eject after consecutive failures, for longer each time) and
//! circuit breaking (request, pending-request and connection limits per service).
//!
//! State outlives connections (one [`Backends`] per waypoint) and is keyed by service and by
//! endpoint address, so every client's requests count towards the same limits and ejections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_proto::api::{self, LoadBalancer};
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use super::respond::ProxyError;
use crate::state::Endpoint;

const DEFAULT_EJECTION: Duration = Duration::from_secs(30);
const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

/// A limit that follows the policy: rebuilt when the configured size changes.
#[derive(Default)]
struct Limit(Mutex<Option<(u32, Arc<Semaphore>)>>);

impl Limit {
    fn get(&self, size: u32) -> Arc<Semaphore> {
        let mut slot = self.0.lock().expect("limit");
        match &*slot {
            Some((n, s)) if *n == size => s.clone(),
            _ => {
                let s = Arc::new(Semaphore::new(size as usize));
                *slot = Some((size, s.clone()));
                s
            }
        }
    }
}

#[derive(Default)]
pub struct ServiceState {
    next: AtomicUsize,
    requests: Limit,
    pending: AtomicUsize,
    connections: Limit,
}

#[derive(Default)]
pub struct EndpointState {
    /// Requests in flight (least-request balancing).
    pub active: AtomicUsize,
    consecutive_5xx: AtomicU32,
    consecutive_gateway: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
    ejections: AtomicU32,
}

impl EndpointState {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until
            .lock()
            .expect("ejection")
            .is_some_and(|t| t > now)
    }
}

/// How one attempt ended, for outlier detection.
#[derive(Debug, Clone, Copy)]
pub enum Outcome {
    Status(u16),
    /// Connect failure, reset or timeout: counted as a gateway error, as Envoy does.
    LocalFailure,
}

#[derive(Default)]
pub struct Backends {
    services: Mutex<HashMap<String, Arc<ServiceState>>>,
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointState>>>,
}

impl Backends {
    pub fn service(&self, key: &str) -> Arc<ServiceState> {
        let mut services = self.services.lock().expect("services");
        if let Some(s) = services.get(key) {
            return s.clone();
        }
        services.entry(key.to_string()).or_default().clone()
    }

    pub fn endpoint(&self, addr: SocketAddr) -> Arc<EndpointState> {
        let mut endpoints = self.endpoints.lock().expect("endpoints");
        if endpoints.len() > 4096 {
            // Endpoints come and go with pods; forget idle, healthy ones rather than grow.
            let now = Instant::now();
            endpoints.retain(|_, e| Arc::strong_count(e) > 1 || e.ejected(now));
        }
        endpoints.entry(addr).or_default().clone()
    }

    /// Picks an endpoint, avoiding ejected ones and those in `exclude` (already tried by this
    /// request) while others remain; when every endpoint is ejected all are used (Envoy's panic
    /// mode: better a likely failure than a certain one).
    pub fn pick(
        &self,
        service: &ServiceState,
        endpoints: &[Endpoint],
        lb: LoadBalancer,
        exclude: &[SocketAddr],
    ) -> Option<(Endpoint, Arc<EndpointState>)> {
        let now = Instant::now();
        let states: Vec<(&Endpoint, Arc<EndpointState>)> = endpoints
            .iter()
            .map(|e| (e, self.endpoint(e.addr)))
            .collect();
        let usable: Vec<&(&Endpoint, Arc<EndpointState>)> = {
            let fresh: Vec<_> = states
                .iter()
                .filter(|(e, s)| !s.ejected(now) && !exclude.contains(&e.addr))
                .collect();
            if !fresh.is_empty() {
                fresh
            } else {
                let healthy: Vec<_> = states.iter().filter(|(_, s)| !s.ejected(now)).collect();
                if healthy.is_empty() {
                    states.iter().collect()
                } else {
                    healthy
                }
            }
        };
        if usable.is_empty() {
            return None;
        }
        let i = match lb {
            LoadBalancer::Random => rand::rng().random_range(0..usable.len()),
            LoadBalancer::LeastRequest if usable.len() > 1 => {
                // Power of two choices: nearly as good as scanning all, without a hot spot.
                let mut rng = rand::rng();
                let a = rng.random_range(0..usable.len());
                let b = rng.random_range(0..usable.len());
                let load = |i: usize| usable[i].1.active.load(Ordering::Relaxed);
                if load(b) < load(a) { b } else { a }
            }
            _ => service.next.fetch_add(1, Ordering::Relaxed) % usable.len(),
        };
        let (e, s) = usable[i];
        Some(((*e).clone(), s.clone()))
    }

    /// Records an attempt's outcome; ejects the endpoint when it reached a threshold, unless
    /// that would eject more than the allowed share of `endpoints`. Returns whether it ejected.
    pub fn report(
        &self,
        endpoint: &Endpoint,
        state: &EndpointState,
        outcome: Outcome,
        policy: Option<&api::OutlierDetection>,
        endpoints: &[Endpoint],
    ) -> bool {
        let (is_5xx, is_gateway) = match outcome {
            Outcome::Status(s) => (s >= 500, matches!(s, 502..=504)),
            Outcome::LocalFailure => (true, true),
        };
        let bump = |counter: &AtomicU32, hit: bool| {
            if hit {
                counter.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                counter.store(0, Ordering::Relaxed);
                0
            }
        };
        let n5xx = bump(&state.consecutive_5xx, is_5xx);
        let ngw = bump(&state.consecutive_gateway, is_gateway);
        let Some(policy) = policy else {
            return false;
        };
        let tripped = (policy.consecutive_5xx > 0 && n5xx >= policy.consecutive_5xx)
            || (policy.consecutive_gateway_errors > 0 && ngw >= policy.consecutive_gateway_errors);
        if !tripped {
            return false;
        }
        let now = Instant::now();
        let ejected = endpoints
            .iter()
            .filter(|e| self.endpoint(e.addr).ejected(now))
            .count();
        let percent = match policy.max_ejection_percent {
            0 => DEFAULT_MAX_EJECTION_PERCENT,
            p => p.min(100),
        } as usize;
        // At least one endpoint may always be ejected, or small services never would be.
        let allowed = (endpoints.len() * percent / 100).max(1);
        if ejected >= allowed || state.ejected(now) {
            return false;
        }
        let times = state.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let base = match policy.base_ejection_ms {
            0 => DEFAULT_EJECTION,
            ms => Duration::from_millis(ms),
        };
        let duration = base * times.min(10);
        *state.ejected_until.lock().expect("ejection") = Some(now + duration);
        state.consecutive_5xx.store(0, Ordering::Relaxed);
        state.consecutive_gateway.store(0, Ordering::Relaxed);
        info!(endpoint = %endpoint.addr, ?duration, "outlier detection ejected an endpoint");
        true
    }
}

/// A request's place under the service's request limit; released on drop.
pub struct RequestSlot {
    _permit: Option<OwnedSemaphorePermit>,
}

/// Admits a request under `pool`'s request limit: waits when the limit is reached, unless the
/// queue of waiting requests is full, then fails at once (backpressure, not unbounded queues).
pub async fn admit(
    service: &ServiceState,
    pool: Option<&api::ConnectionPool>,
) -> Result<RequestSlot, ProxyError> {
    let Some(pool) = pool.filter(|p| p.max_requests > 0) else {
        return Ok(RequestSlot { _permit: None });
    };
    let limit = service.requests.get(pool.max_requests);
    if let Ok(permit) = limit.clone().try_acquire_owned() {
        return Ok(RequestSlot {
            _permit: Some(permit),
        });
    }
    let waiting = service.pending.fetch_add(1, Ordering::AcqRel);
    let result = if pool.max_pending_requests > 0 && waiting >= pool.max_pending_requests as usize {
        Err(ProxyError::Overflow(format!(
            "{} requests in flight and {waiting} waiting",
            pool.max_requests
        )))
    } else {
        Ok(RequestSlot {
            _permit: Some(limit.acquire_owned().await.expect("never closed")),
        })
    };
    service.pending.fetch_sub(1, Ordering::AcqRel);
    result
}

/// A new upstream connection's place under the service's connection limit, held for the
/// connection's life. `None` when there is no limit.
pub fn connection_slot(
    service: &ServiceState,
    pool: Option<&api::ConnectionPool>,
) -> Result<Option<OwnedSemaphorePermit>, ProxyError> {
    let Some(pool) = pool.filter(|p| p.max_connections > 0) else {
        return Ok(None);
    };
    service
        .connections
        .get(pool.max_connections)
        .try_acquire_owned()
        .map(Some)
        .map_err(|_| {
            ProxyError::Overflow(format!(
                "{} upstream connections already open",
                pool.max_connections
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_proto::mesh::Store;

    fn endpoints(n: u8) -> Vec<Endpoint> {
        let store = Store::new("cluster.local");
        let resources = (1..=n)
            .map(|i| api::Resource {
                name: format!("w{i}"),
                version: "1".into(),
                kind: Some(api::resource::Kind::Workload(api::Workload {
                    uid: format!("w{i}"),
                    name: format!("w{i}"),
                    namespace: "ns".into(),
                    service_account: "sa".into(),
                    addresses: vec![format!("10.0.0.{i}")],
                    ..Default::default()
                })),
            })
            .collect();
        store
            .apply(ambit_proto::api::type_url::WORKLOAD, resources, vec![])
            .unwrap();
        let state = store.current();
        state
            .workloads
            .values()
            .map(|w| Endpoint {
                workload: w.clone(),
                addr: SocketAddr::new(w.addresses[0], 80),
            })
            .collect()
    }

    #[test]
    fn consecutive_errors_eject_within_the_allowed_share() {
        let backends = Backends::default();
        let eps = endpoints(4);
        let policy = api::OutlierDetection {
            consecutive_5xx: 2,
            max_ejection_percent: 25,
            ..Default::default()
        };
        let fail = |e: &Endpoint| {
            let s = backends.endpoint(e.addr);
            backends.report(e, &s, Outcome::Status(500), Some(&policy), &eps)
        };
        assert!(!fail(&eps[0]));
        assert!(fail(&eps[0]), "second consecutive 5xx ejects");
        fail(&eps[1]);
        assert!(!fail(&eps[1]), "25% of 4 is one endpoint");
        let service = ServiceState::default();
        for _ in 0..20 {
            let (picked, _) = backends
                .pick(&service, &eps, LoadBalancer::RoundRobin, &[])
                .unwrap();
            assert_ne!(picked.addr, eps[0].addr);
        }
    }

    #[tokio::test]
    async fn pending_requests_beyond_the_queue_overflow() {
        let service = ServiceState::default();
        let pool = api::ConnectionPool {
            max_requests: 1,
            max_pending_requests: 1,
            ..Default::default()
        };
        let held = admit(&service, Some(&pool)).await.unwrap();
        let svc = Arc::new(service);
        let waiter = {
            let svc = svc.clone();
            tokio::spawn(async move { admit(&svc, Some(&pool)).await.map(|_| ()) })
        };
        while svc.pending.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(
            admit(&svc, Some(&pool)).await,
            Err(ProxyError::Overflow(_))
        ));
        drop(held);
        waiter.await.unwrap().unwrap();
    }
}
