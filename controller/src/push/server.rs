//! The `ConfigDiscoveryService` gRPC service: one task per client stream, opened only for an
//! authenticated node agent or waypoint.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_proto::api::{self, DeltaDiscoveryRequest};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::interest::{AllowedCache, Interest};
use super::resources::{Generation, TYPES};
use super::subscription::{Delta, Subscription};
use super::wire::{ConfigDiscoveryService, DeltaResponse, ResponseStream};
use crate::auth::{Authenticator, Refusals};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabel {
    pub type_url: String,
}

/// The push metrics (a sub-registry of the controller's).
#[derive(Clone)]
pub struct PushMetrics {
    pub connected: Gauge,
    pub pushes: Family<TypeLabel, Counter>,
    pub nacks: Family<TypeLabel, Counter>,
    /// Seconds from a config change to a client's ACK of it.
    pub push_latency: Histogram,
    /// Streams refused before anything was sent: no or a bad token, or a mismatched node.
    pub refused: Refusals,
}

impl PushMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = PushMetrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            refused: Refusals::register(
                registry,
                "config stream",
                "xds_refused",
                "Config streams refused, by reason",
            ),
        };
        registry.register(
            "xds_connected_clients",
            "Connected config clients",
            m.connected.clone(),
        );
        registry.register("xds_pushes", "Config responses sent", m.pushes.clone());
        registry.register(
            "xds_nacks",
            "Config responses rejected by clients",
            m.nacks.clone(),
        );
        registry.register(
            "xds_push_latency_seconds",
            "From a config change to a client acknowledging it",
            m.push_latency.clone(),
        );
        m
    }
}

/// What one connected client holds, for the debug dump.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClientDump {
    pub node: String,
    pub role: String,
    /// type URL -> resource name -> version the client ACKed.
    pub held: BTreeMap<String, BTreeMap<String, String>>,
    pub nacks: u64,
    pub last_nack: Option<String>,
}

/// Each type's subscription of one client. Shared with the debug dump, which reads it only when
/// asked: summarising 10k held versions per client on every push would cost more than the push.
type Subscriptions = Arc<Mutex<HashMap<&'static str, Subscription>>>;

/// Every connected client, for the debug dump.
type Dumps = Arc<Mutex<BTreeMap<u64, (String, String, Subscriptions)>>>;

#[derive(Clone)]
pub struct ConfigServer {
    generations: watch::Receiver<Arc<Generation>>,
    auth: Arc<dyn Authenticator>,
    metrics: PushMetrics,
    dumps: Dumps,
    next_stream: Arc<AtomicU64>,
}

impl ConfigServer {
    /// Serves `generations` to the callers `auth` accepts (the CA's authenticator: one
    /// credential for both services).
    pub fn new(
        generations: watch::Receiver<Arc<Generation>>,
        auth: Arc<dyn Authenticator>,
        metrics: PushMetrics,
    ) -> Self {
        ConfigServer {
            generations,
            auth,
            metrics,
            dumps: Dumps::default(),
            next_stream: Arc::default(),
        }
    }

    /// The gRPC service, for `tonic::transport::Server::add_service`.
    pub fn service(&self) -> ConfigDiscoveryService {
        ConfigDiscoveryService(self.clone())
    }

    /// What every connected client was sent and ACKed.
    pub fn dump(&self) -> Vec<ClientDump> {
        let clients: Vec<_> = self.dumps.lock().expect("lock").values().cloned().collect();
        clients
            .into_iter()
            .map(|(node, role, subscriptions)| {
                let subscriptions = subscriptions.lock().expect("lock");
                ClientDump {
                    node,
                    role,
                    held: subscriptions
                        .iter()
                        .map(|(t, s)| (t.to_string(), s.held()))
                        .collect(),
                    nacks: subscriptions.values().map(|s| s.nacks).sum(),
                    last_nack: subscriptions.values().find_map(|s| s.last_nack.clone()),
                }
            })
            .collect()
    }

    /// Serves one client stream: `DeltaConfig`.
    pub async fn delta_config(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        // Authenticated before the first message is even read: a stranger is told nothing.
        let caller = (self.auth.caller(request.metadata()).await)
            .map_err(|e| self.metrics.refused.unauthenticated(e))?;
        let mut inbound = request.into_inner();
        // The first message names the client; nothing is sent before it.
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let interest = Interest::of(caller, first.node.as_ref())
            .map_err(|e| self.metrics.refused.refuse(e.reason(), e.status()))?;
        let node = first.node.clone().unwrap_or_default();
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let subscriptions = Subscriptions::default();
        self.dumps.lock().expect("lock").insert(
            id,
            (
                node.id.clone(),
                interest.caller().to_string(),
                subscriptions.clone(),
            ),
        );
        // Room for one response per type: there is never more than that in flight.
        let (tx, rx) = mpsc::channel(TYPES.len());
        let stream = ClientStream {
            id,
            node,
            interest,
            subscriptions,
            allowed: AllowedCache::default(),
            generations: self.generations.clone(),
            metrics: self.metrics.clone(),
            dumps: self.dumps.clone(),
            nonce: 0,
            tx,
        };
        let span = info_span!("xds_client", id, node = %stream.node.id);
        tokio::spawn(stream.run(first, inbound).instrument(span));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

struct ClientStream {
    id: u64,
    node: api::Node,
    interest: Interest,
    subscriptions: Subscriptions,
    /// The client's filters (authorizations, routes, backend policies), kept while their inputs
    /// are unchanged.
    allowed: AllowedCache,
    generations: watch::Receiver<Arc<Generation>>,
    metrics: PushMetrics,
    dumps: Dumps,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaResponse, Status>>,
}

impl ClientStream {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) {
        self.metrics.connected.inc();
        info!(caller = %self.interest.caller(), "config client connected");
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take()
                && let Err(status) = self.handle(req)
            {
                let _ = self.tx.send(Err(status)).await;
                break;
            }
            if self.push().await.is_err() {
                break; // the client is gone
            }
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break,
                    Err(e) => {
                        debug!("config stream ended: {e}");
                        break;
                    }
                },
                changed = self.generations.changed() => if changed.is_err() { break },
            }
        }
        self.metrics.connected.dec();
        self.dumps.lock().expect("lock").remove(&self.id);
        info!("config client disconnected");
    }

    fn handle(&mut self, req: DeltaDiscoveryRequest) -> Result<(), Status> {
        let type_url = TYPES
            .iter()
            .find(|t| **t == req.type_url)
            .copied()
            .ok_or_else(|| {
                Status::invalid_argument(format!("unknown type_url {:?}", req.type_url))
            })?;
        let mut subscriptions = self.subscriptions.lock().expect("lock");
        let first_for_type = !subscriptions.contains_key(type_url);
        let sub = subscriptions.entry(type_url).or_default();
        if !req.response_nonce.is_empty() {
            match sub.answered(&req.response_nonce, req.error_detail.as_ref()) {
                Some(generation) => {
                    let current = self.generations.borrow();
                    if generation == current.number {
                        self.metrics
                            .push_latency
                            .observe(current.since.elapsed().as_secs_f64());
                    }
                }
                None => {
                    if let Some(e) = &req.error_detail {
                        self.metrics
                            .nacks
                            .get_or_create(&TypeLabel {
                                type_url: type_url.into(),
                            })
                            .inc();
                        warn!(type_url, nonce = %req.response_nonce, "client rejected config (NACK): {}", e.message);
                    }
                }
            }
        }
        sub.subscribe(
            &req.resource_names_subscribe,
            &req.resource_names_unsubscribe,
            first_for_type.then_some(&req.initial_resource_versions),
        );
        Ok(())
    }

    /// Sends each type's delta against the newest generation, where nothing is in flight.
    async fn push(&mut self) -> Result<(), ()> {
        let generation = self.generations.borrow_and_update().clone();
        for response in self.responses(&generation) {
            self.tx.send(Ok(response)).await.map_err(drop)?;
        }
        Ok(())
    }

    /// The responses owed for `generation`, recorded as in flight.
    fn responses(&mut self, generation: &Generation) -> Vec<DeltaResponse> {
        let mut subscriptions = self.subscriptions.lock().expect("lock");
        let mut responses = Vec::new();
        for type_url in TYPES {
            let Some(sub) = subscriptions.get_mut(type_url) else {
                continue;
            };
            if sub.in_flight.is_some() || sub.rejected == Some(generation.number) {
                continue;
            }
            let allowed = self
                .interest
                .allowed(type_url, generation, &mut self.allowed);
            let delta: Delta = sub.delta(generation, type_url, allowed.as_ref());
            if delta.is_empty() && !sub.owes_initial {
                sub.caught_up(generation.number, allowed);
                continue;
            }
            self.nonce += 1;
            let nonce = format!("{}-{}", generation.number, self.nonce);
            sub.sent(nonce.clone(), generation.number, &delta, allowed);
            self.metrics
                .pushes
                .get_or_create(&TypeLabel {
                    type_url: type_url.into(),
                })
                .inc();
            debug!(
                type_url,
                updated = delta.resources.len(),
                removed = delta.removed.len(),
                "push"
            );
            responses.push(DeltaResponse {
                system_version_info: generation.number.to_string(),
                resources: delta.resources,
                type_url: type_url.to_string(),
                removed_resources: delta.removed,
                nonce,
            });
        }
        responses
    }
}
