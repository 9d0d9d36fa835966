//! The `ConfigDiscoveryService` gRPC service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ambit_proto::api::config_discovery_service_server::ConfigDiscoveryService;
use ambit_proto::api::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse, type_url};
use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use super::interest::Interest;
use super::resources::{Generation, TYPES};
use super::subscription::{Delta, Subscription};

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
}

impl PushMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = PushMetrics {
            connected: Gauge::default(),
            pushes: Family::default(),
            nacks: Family::default(),
            push_latency: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
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

type Dumps = Arc<Mutex<BTreeMap<u64, ClientDump>>>;

#[derive(Clone)]
pub struct ConfigServer {
    generations: watch::Receiver<Arc<Generation>>,
    metrics: PushMetrics,
    dumps: Dumps,
    next_stream: Arc<AtomicU64>,
}

impl ConfigServer {
    pub fn new(generations: watch::Receiver<Arc<Generation>>, metrics: PushMetrics) -> Self {
        ConfigServer {
            generations,
            metrics,
            dumps: Dumps::default(),
            next_stream: Arc::default(),
        }
    }

    /// What every connected client was sent and ACKed.
    pub fn dump(&self) -> Vec<ClientDump> {
        self.dumps.lock().expect("lock").values().cloned().collect()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscoveryService for ConfigServer {
    type DeltaConfigStream = ResponseStream;

    async fn delta_config(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaConfigStream>, Status> {
        let mut inbound = request.into_inner();
        // The first message names the client; nothing is sent before it.
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("stream closed before the first request"))?;
        let node = first
            .node
            .clone()
            .ok_or_else(|| Status::invalid_argument("the first request must carry node"))?;
        let interest = Interest::from_node(&node)?;
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        // Room for one response per type: there is never more than that in flight.
        let (tx, rx) = mpsc::channel(TYPES.len());
        let stream = ClientStream {
            id,
            node,
            interest,
            subscriptions: HashMap::new(),
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
    subscriptions: HashMap<&'static str, Subscription>,
    generations: watch::Receiver<Arc<Generation>>,
    metrics: PushMetrics,
    dumps: Dumps,
    nonce: u64,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
}

impl ClientStream {
    async fn run(
        mut self,
        first: DeltaDiscoveryRequest,
        mut inbound: Streaming<DeltaDiscoveryRequest>,
    ) {
        self.metrics.connected.inc();
        info!(role = ?self.interest, "config client connected");
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
            self.update_dump();
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
        let first_for_type = !self.subscriptions.contains_key(type_url);
        let sub = self.subscriptions.entry(type_url).or_default();
        if !req.response_nonce.is_empty() {
            match sub.answered(&req.response_nonce, req.error_detail.as_ref()) {
                Some(generation) => {
                    let generation_since = self.generations.borrow().since;
                    if generation == self.generations.borrow().number {
                        self.metrics
                            .push_latency
                            .observe(generation_since.elapsed().as_secs_f64());
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
        let mut authorizations: Option<BTreeSet<String>> = None;
        for type_url in TYPES {
            let Some(sub) = self.subscriptions.get(type_url) else {
                continue;
            };
            if sub.in_flight.is_some() || sub.rejected == Some(generation.number) {
                continue;
            }
            let allowed = (type_url == type_url::AUTHORIZATION).then(|| {
                authorizations
                    .get_or_insert_with(|| self.interest.authorizations(&generation))
                    .clone()
            });
            let delta: Delta = sub.delta(&generation, type_url, allowed.as_ref());
            if delta.is_empty() && !sub.owes_initial {
                continue;
            }
            self.nonce += 1;
            let nonce = format!("{}-{}", generation.number, self.nonce);
            let response = DeltaDiscoveryResponse {
                system_version_info: generation.number.to_string(),
                resources: delta.resources.iter().map(|r| (**r).clone()).collect(),
                type_url: type_url.to_string(),
                removed_resources: delta.removed.clone(),
                nonce: nonce.clone(),
            };
            self.subscriptions.get_mut(type_url).expect("present").sent(
                nonce,
                generation.number,
                &delta,
            );
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
            self.tx.send(Ok(response)).await.map_err(drop)?;
        }
        Ok(())
    }

    fn update_dump(&self) {
        let dump = ClientDump {
            node: self.node.id.clone(),
            role: match &self.interest {
                Interest::NodeAgent { node } => format!("node-agent {node}"),
                Interest::Waypoint { namespace, name } => format!("waypoint {namespace}/{name}"),
            },
            held: self
                .subscriptions
                .iter()
                .map(|(t, s)| (t.to_string(), s.held()))
                .collect(),
            nacks: self.subscriptions.values().map(|s| s.nacks).sum(),
            last_nack: self
                .subscriptions
                .values()
                .find_map(|s| s.last_nack.clone()),
        };
        self.dumps.lock().expect("lock").insert(self.id, dump);
    }
}
