//! The client half of config discovery: subscribe, apply, ACK/NACK, reconnect, resume.
//!
//! Node agents and waypoints both hold a [`ConfigClient`]. It keeps one delta stream to the
//! controller open; when the stream breaks it reconnects with exponential back-off (with jitter,
//! so a controller restart is not met by every node at the same instant) and sends what it holds
//! as `initial_resource_versions`, so the controller sends only the difference. Whatever was
//! applied stays applied while the controller is away: the data plane keeps serving on its last
//! good config.
//!
//! Every stream carries the client's bearer token, read from its file for each new stream, so a
//! rotated token is picked up at the next reconnect. A refused stream (no valid token yet, or a
//! token of another node) is retried like any other failure: the client serves its last config
//! and the error is in its status.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use rand::Rng;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{debug, info, warn};

use crate::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use crate::api::{self, DeltaDiscoveryRequest, DeltaDiscoveryResponse};
use crate::grpc::{self, TokenError};

/// Receives config. Called for every response, in order, from one task.
pub trait ConfigHandler: Send + Sync + 'static {
    /// Applies `resources` (added or changed) and `removed` (names) of `type_url` as one change.
    /// An `Err` NACKs the response with that message; the handler must then keep what it had.
    fn apply(
        &self,
        type_url: &str,
        resources: Vec<api::Resource>,
        removed: Vec<String>,
    ) -> Result<(), String>;
}

impl<T: ConfigHandler> ConfigHandler for std::sync::Arc<T> {
    fn apply(
        &self,
        type_url: &str,
        resources: Vec<api::Resource>,
        removed: Vec<String>,
    ) -> Result<(), String> {
        (**self).apply(type_url, resources, removed)
    }
}

/// Where the client stands; readable at any time (readiness, admin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStatus {
    /// A stream is open.
    pub connected: bool,
    /// Every subscribed type has been applied at least once since start.
    pub synced: bool,
    pub connects: u64,
    pub nacks: u64,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub node: api::Node,
    pub types: Vec<String>,
    /// The bearer token that proves `node` (the same one the CA takes).
    pub token_file: PathBuf,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl ClientSettings {
    pub fn new(node: api::Node, types: &[&str], token_file: PathBuf) -> Self {
        ClientSettings {
            node,
            types: types.iter().map(|t| t.to_string()).collect(),
            token_file,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum XdsError {
    #[error("connecting: {0}")]
    Connect(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// Refused, most often: the code says why (Unauthenticated, PermissionDenied).
    #[error("opening the stream: {:?}: {}", .0.code(), .0.message())]
    Open(tonic::Status),
    #[error("stream broke: {:?}: {}", .0.code(), .0.message())]
    Stream(tonic::Status),
    #[error("the controller closed the stream")]
    Closed,
    #[error("unexpected type {0:?} in a response")]
    UnknownType(String),
}

pub struct ConfigClient<H> {
    settings: ClientSettings,
    handler: H,
    /// name -> version per type: what has been applied, sent on reconnect.
    held: HashMap<String, HashMap<String, String>>,
    status: watch::Sender<ClientStatus>,
}

impl<H: ConfigHandler> ConfigClient<H> {
    pub fn new(settings: ClientSettings, handler: H) -> Self {
        ConfigClient {
            settings,
            handler,
            held: HashMap::new(),
            status: watch::Sender::new(ClientStatus::default()),
        }
    }

    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.subscribe()
    }

    /// Runs until `shutdown` resolves. `connect` opens a channel to the controller; it is called
    /// again after every failure, after a back-off.
    pub async fn run<C, F>(mut self, connect: C, shutdown: impl Future<Output = ()>)
    where
        C: Fn() -> F,
        F: Future<Output = Result<Channel, String>>,
    {
        tokio::pin!(shutdown);
        let mut backoff = self.settings.initial_backoff;
        loop {
            let attempt = async {
                let channel = connect().await.map_err(XdsError::Connect)?;
                self.stream(channel, &mut backoff).await
            };
            let result = tokio::select! {
                r = attempt => r,
                _ = &mut shutdown => return,
            };
            let err = match result {
                Ok(()) => XdsError::Closed,
                Err(e) => e,
            };
            self.status.send_modify(|s| {
                s.connected = false;
                s.last_error = Some(err.to_string());
            });
            let delay = jittered(backoff);
            warn!("config stream to the controller: {err}; retrying in {delay:?}");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = &mut shutdown => return,
            }
            backoff = (backoff * 2).min(self.settings.max_backoff);
        }
    }

    /// One stream's life. Resets `backoff` once the controller answered.
    async fn stream(&mut self, channel: Channel, backoff: &mut Duration) -> Result<(), XdsError> {
        let (tx, rx) = mpsc::channel(self.settings.types.len() * 2);
        for (i, type_url) in self.settings.types.iter().enumerate() {
            let request = DeltaDiscoveryRequest {
                node: (i == 0).then(|| self.settings.node.clone()),
                type_url: type_url.clone(),
                resource_names_subscribe: vec!["*".into()],
                initial_resource_versions: self.held.get(type_url).cloned().unwrap_or_default(),
                ..Default::default()
            };
            // The channel has room for every first request.
            let _ = tx.try_send(request);
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        grpc::authorize(&mut request, &self.settings.token_file)?;
        let mut responses = ConfigDiscoveryServiceClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .delta_config(request)
            .await
            .map_err(XdsError::Open)?
            .into_inner();
        self.status.send_modify(|s| {
            s.connected = true;
            s.connects += 1;
        });
        info!("config stream to the controller open");
        let mut synced: Vec<String> = Vec::new();
        loop {
            let response = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(XdsError::Closed),
                Err(status) => return Err(XdsError::Stream(status)),
            };
            *backoff = self.settings.initial_backoff;
            if !self.settings.types.contains(&response.type_url) {
                return Err(XdsError::UnknownType(response.type_url));
            }
            let reply = self.apply(response, &mut synced);
            if tx.send(reply).await.is_err() {
                return Err(XdsError::Closed);
            }
        }
    }

    /// Hands one response to the handler and builds its ACK or NACK.
    fn apply(
        &mut self,
        response: DeltaDiscoveryResponse,
        synced: &mut Vec<String>,
    ) -> DeltaDiscoveryRequest {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = response;
        let versions: Vec<(String, String)> = resources
            .iter()
            .map(|r| (r.name.clone(), r.version.clone()))
            .collect();
        let count = (versions.len(), removed_resources.len());
        let result = self
            .handler
            .apply(&type_url, resources, removed_resources.clone());
        let error_detail = match result {
            Ok(()) => {
                let held = self.held.entry(type_url.clone()).or_default();
                held.extend(versions);
                for name in &removed_resources {
                    held.remove(name);
                }
                debug!(%type_url, updated = count.0, removed = count.1, "config applied");
                if !synced.contains(&type_url) {
                    synced.push(type_url.clone());
                }
                let all = self.settings.types.iter().all(|t| synced.contains(t));
                self.status.send_modify(|s| s.synced |= all);
                None
            }
            Err(message) => {
                warn!(%type_url, "rejecting config from the controller: {message}");
                self.status.send_modify(|s| {
                    s.nacks += 1;
                    s.last_error = Some(message.clone());
                });
                // INVALID_ARGUMENT in google.rpc.Code numbering.
                Some(api::ErrorDetail { code: 3, message })
            }
        };
        DeltaDiscoveryRequest {
            type_url,
            response_nonce: nonce,
            error_detail,
            ..Default::default()
        }
    }
}

/// `base` ± 25%, so clients that lost the controller together do not return together.
fn jittered(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.75..1.25);
    base.mul_f64(factor)
}
