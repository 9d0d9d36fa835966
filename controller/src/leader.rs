//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go's `leaderelection`
//! does it, so that only one replica writes to the cluster (the waypoint reconciler) while every
//! replica serves config and certificates.
//!
//! The rules, and why:
//! - a holder is presumed gone only after its record stayed unchanged for a whole lease duration
//!   *as measured on this replica's clock* (client-go's "observed time"), so clock skew between
//!   replicas never hands the lease over early;
//! - every write is a replace carrying the resourceVersion read, so two replicas that both saw an
//!   expired lease cannot both take it: the second gets 409 Conflict;
//! - a leader that cannot renew within the renew deadline stops leading at once, before the lease
//!   expires for the others (deadline < duration), so two replicas never reconcile together;
//! - on shutdown the leader releases the lease (no holder, 1s duration) so another replica takes
//!   over within a retry period instead of a lease duration.
//!
//! This module owns the Lease and the `leading` flag; it does not know what leading is for.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

/// The Lease's name in the controller's namespace.
pub const LEASE_NAME: &str = "ambit-controller";

#[derive(Debug, Clone)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (its pod name).
    pub identity: String,
    /// How long a holder's claim lasts without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it stops leading.
    pub renew_deadline: Duration,
    /// The pause between attempts to acquire or renew.
    pub retry_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        source: Box<kube::Error>,
    },
}

/// `ambit_controller_leader`: 1 while this replica leads.
#[derive(Clone, Debug, Default)]
pub struct LeaderMetrics {
    leader: Gauge,
}

impl LeaderMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = LeaderMetrics::default();
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (and so reconciles), else 0",
            m.leader.clone(),
        );
        m
    }
}

/// Campaigns for the Lease until `shutdown` resolves, publishing on `leading` whether this
/// replica leads; releases the Lease on shutdown if it holds it.
pub async fn run(
    api: Api<Lease>,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
    metrics: LeaderMetrics,
    shutdown: impl Future<Output = ()>,
) {
    let mut elector = Elector {
        api,
        config,
        observed: None,
    };
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = elector.acquire() => {}
        }
        info!(identity = %elector.config.identity, "became the leader");
        metrics.leader.set(1);
        leading.send_replace(true);
        let released = tokio::select! {
            () = &mut shutdown => true,
            () = elector.keep() => false,
        };
        // Stop reconciling before anything else: the lease may be someone else's already.
        leading.send_replace(false);
        metrics.leader.set(0);
        if released {
            elector.release().await;
            return;
        }
        warn!(identity = %elector.config.identity, "lost leadership; reconciling stopped");
    }
}

struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    /// The last record read and when it was first seen unchanged, on this replica's clock.
    observed: Option<(LeaseSpec, Instant)>,
}

impl Elector {
    /// Returns once this replica holds the Lease.
    async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => warn!("acquiring the leader lease: {e}"),
            }
            tokio::time::sleep(jittered(self.config.retry_period)).await;
        }
    }

    /// Renews every retry period; returns when leadership is lost: another holder took the
    /// Lease, or no renewal succeeded within the renew deadline.
    async fn keep(&mut self) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(self.config.retry_period).await;
            let left = self.config.renew_deadline.saturating_sub(renewed.elapsed());
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(true)) => renewed = Instant::now(),
                Ok(Ok(false)) => return,
                Ok(Err(e)) => warn!("renewing the leader lease: {e}"),
                Err(_) => {}
            }
            if renewed.elapsed() >= self.config.renew_deadline {
                warn!(deadline = ?self.config.renew_deadline, "no renewal within the renew deadline");
                return;
            }
        }
    }

    /// One attempt; true if this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaderError> {
        let now = MicroTime(Timestamp::now());
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.lease_name)
            .await
            .map_err(|e| self.error(e))?
        else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.lease_name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.claim(LeaseSpec::default(), &now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created.spec.unwrap_or_default());
                    Ok(true)
                }
                // Another replica created it first.
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(e) => Err(self.error(e)),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let unchanged_since = self.observe(spec.clone());
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        if let Some(holder) = holder
            && holder != self.config.identity
        {
            let duration = spec
                .lease_duration_seconds
                .map_or(self.config.lease_duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or(0))
                });
            if unchanged_since.elapsed() < duration {
                return Ok(false);
            }
            info!(
                previous = holder,
                "the leader lease expired; taking it over"
            );
        }
        lease.spec = Some(self.claim(spec, &now));
        // The resourceVersion read goes with the write: a concurrent taker gets 409.
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(replaced) => {
                self.observe(replaced.spec.unwrap_or_default());
                Ok(true)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }

    /// `spec` held (or kept) by this replica from `now`.
    fn claim(&self, mut spec: LeaseSpec, now: &MicroTime) -> LeaseSpec {
        let ours = spec.holder_identity.as_deref() == Some(self.config.identity.as_str());
        if !ours {
            spec.acquire_time = Some(now.clone());
            if spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty())
            {
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.holder_identity = Some(self.config.identity.clone());
        }
        spec.lease_transitions.get_or_insert(0);
        spec.lease_duration_seconds = Some(seconds(self.config.lease_duration));
        spec.renew_time = Some(now.clone());
        spec
    }

    /// Records `spec` as read; returns since when it has been seen unchanged.
    fn observe(&mut self, spec: LeaseSpec) -> Instant {
        match &self.observed {
            Some((seen, since)) if *seen == spec => *since,
            _ => {
                let now = Instant::now();
                self.observed = Some((spec, now));
                now
            }
        }
    }

    /// Gives the Lease up if this replica still holds it, so the next leader need not wait out
    /// the lease duration.
    async fn release(&mut self) {
        let release = async {
            let Some(mut lease) = self.api.get_opt(&self.config.lease_name).await? else {
                return Ok(());
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            let now = MicroTime(Timestamp::now());
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            spec.renew_time = Some(now.clone());
            spec.acquire_time = Some(now);
            lease.spec = Some(spec);
            self.api
                .replace(&self.config.lease_name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(self.config.renew_deadline, release).await {
            Ok(Ok(())) => info!("released the leader lease"),
            Ok(Err(e)) => warn!("releasing the leader lease: {}", self.error(e)),
            Err(_) => warn!("releasing the leader lease timed out"),
        }
    }

    fn error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            namespace: self.config.namespace.clone(),
            name: self.config.lease_name.clone(),
            source: Box::new(source),
        }
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Up to 20% longer (client-go's jitter factor 1.2), so replicas started together do not keep
/// asking in lock-step.
fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 + rand::random::<f64>() * 0.2)
}
