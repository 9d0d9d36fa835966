//! Certificates from the controller's CA for the identities a proxy serves: a node agent's
//! captured workloads, a waypoint's own identity. Shared so both renew, retry and rotate alike.
//!
//! A certificate is fetched when it is first wanted (prefetch), or on first use if a connection
//! gets there first; concurrent requests for one identity share one CSR (single flight). Each is
//! renewed at half its life. A renewal replaces the certificate for *new* handshakes only: an
//! open TLS connection keeps the keys it negotiated, so rotation never disturbs traffic. A failed
//! renewal keeps the old certificate and is retried with back-off until it expires.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::ServerConfig;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::api::CreateCertificateRequest;
use crate::api::certificate_service_client::CertificateServiceClient;
use crate::tls::{self, TrustRoots, WorkloadCertificate};
use crate::{Identity, grpc};

/// Told the outcome of every request to the CA (each binary counts them in its own metrics).
pub trait FetchObserver: Send + Sync + 'static {
    fn fetched(&self, ok: bool);
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum CertError {
    #[error("the CA token: {0}")]
    Token(#[from] grpc::TokenError),
    #[error("connecting to the CA: {0}")]
    Connect(String),
    #[error("the CA refused {identity}: {status}")]
    Refused { identity: Identity, status: String },
    #[error("building a certificate: {0}")]
    Tls(String),
}

/// A certificate and the server config built from it (built once, used per handshake).
#[derive(Clone)]
pub struct Issued {
    pub cert: Arc<WorkloadCertificate>,
    pub server_config: Arc<ServerConfig>,
}

/// One identity's certificate. `issued` is readable at any time (readiness, the dump, the
/// fast path of every handshake); `renewal` serialises fetches, so concurrent first uses share one
/// CSR and a renewal never hides the certificate it is replacing.
#[derive(Default)]
struct Slot {
    issued: Mutex<Option<Issued>>,
    renewal: tokio::sync::Mutex<Renewal>,
}

#[derive(Default)]
struct Renewal {
    /// When the next attempt is due after a failure.
    retry_at: Option<SystemTime>,
    failures: u32,
}

impl Slot {
    fn current(&self) -> Option<Issued> {
        self.issued.lock().expect("slot").clone()
    }

    fn valid(&self) -> Option<Issued> {
        self.current()
            .filter(|i| i.cert.not_after() > SystemTime::now())
    }

    fn store(&self, issued: Issued) {
        *self.issued.lock().expect("slot") = Some(issued);
    }
}

pub struct CertManager {
    controller: SocketAddr,
    controller_identity: Identity,
    roots: TrustRoots,
    token_file: PathBuf,
    channel: tokio::sync::Mutex<Option<Channel>>,
    slots: Mutex<HashMap<Identity, Arc<Slot>>>,
    metrics: Arc<dyn FetchObserver>,
}

impl CertManager {
    pub fn new(
        controller: SocketAddr,
        controller_identity: Identity,
        roots: TrustRoots,
        token_file: PathBuf,
        metrics: Arc<dyn FetchObserver>,
    ) -> Arc<Self> {
        Arc::new(CertManager {
            controller,
            controller_identity,
            roots,
            token_file,
            channel: tokio::sync::Mutex::new(None),
            slots: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// The certificate for `identity`, fetching it if there is none yet or it expired.
    pub async fn get(&self, identity: &Identity) -> Result<Issued, CertError> {
        let slot = self.slot(identity);
        if let Some(issued) = slot.valid() {
            return Ok(issued);
        }
        let _renewal = slot.renewal.lock().await;
        // Whoever held the lock before may have fetched it already.
        if let Some(issued) = slot.valid() {
            return Ok(issued);
        }
        let issued = self.fetch(identity).await?;
        slot.store(issued.clone());
        Ok(issued)
    }

    /// A certificate already held (no fetch): for the admin dump and readiness.
    pub fn held(&self) -> Vec<(Identity, Option<Arc<WorkloadCertificate>>)> {
        let slots: Vec<_> = self
            .slots
            .lock()
            .expect("slots")
            .iter()
            .map(|(id, s)| (id.clone(), s.clone()))
            .collect();
        let mut out: Vec<_> = slots
            .into_iter()
            .map(|(id, s)| (id, s.current().map(|i| i.cert)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Keeps certificates for exactly `wanted`: fetches the new ones in the background and forgets
    /// the ones no longer needed (open connections keep theirs until they close).
    pub fn set_wanted(self: &Arc<Self>, wanted: &[Identity]) {
        let mut slots = self.slots.lock().expect("slots");
        slots.retain(|id, _| wanted.contains(id));
        for id in wanted {
            if !slots.contains_key(id) {
                slots.insert(id.clone(), Arc::default());
                let me = self.clone();
                let id = id.clone();
                tokio::spawn(async move {
                    if let Err(e) = me.get(&id).await {
                        warn!(identity = %id, "fetching certificate: {e}");
                    }
                });
            }
        }
    }

    /// Whether every wanted identity holds a valid certificate.
    pub fn all_ready(&self) -> bool {
        self.held().iter().all(|(_, c)| c.is_some())
    }

    /// Renews what is due; runs for the proxy's life.
    pub async fn rotate(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let slots: Vec<_> = self
                .slots
                .lock()
                .expect("slots")
                .iter()
                .map(|(id, s)| (id.clone(), s.clone()))
                .collect();
            for (identity, slot) in slots {
                let now = SystemTime::now();
                let due = match slot.current() {
                    Some(i) => i.cert.refresh_at() <= now,
                    None => true,
                };
                if !due {
                    continue;
                }
                let Ok(mut renewal) = slot.renewal.try_lock() else {
                    continue; // a fetch is already running
                };
                if renewal.retry_at.is_some_and(|t| t > now) {
                    continue;
                }
                match self.fetch(&identity).await {
                    Ok(issued) => {
                        info!(%identity, not_after = ?issued.cert.not_after(), "certificate renewed");
                        slot.store(issued);
                        *renewal = Renewal::default();
                    }
                    Err(e) => {
                        renewal.failures += 1;
                        let backoff = Duration::from_secs(1 << renewal.failures.min(6));
                        renewal.retry_at = Some(now + backoff);
                        warn!(%identity, "renewing certificate failed (retry in {backoff:?}): {e}");
                    }
                }
            }
        }
    }

    fn slot(&self, identity: &Identity) -> Arc<Slot> {
        self.slots
            .lock()
            .expect("slots")
            .entry(identity.clone())
            .or_default()
            .clone()
    }

    async fn fetch(&self, identity: &Identity) -> Result<Issued, CertError> {
        let result = self.request(identity).await;
        self.metrics.fetched(result.is_ok());
        if result.is_err() {
            // The channel may be what broke; the next attempt reconnects.
            *self.channel.lock().await = None;
        }
        result
    }

    async fn request(&self, identity: &Identity) -> Result<Issued, CertError> {
        let (csr, key) =
            tls::authority::generate_csr(identity).map_err(|e| CertError::Tls(e.to_string()))?;
        let channel = self.channel().await?;
        let mut request = tonic::Request::new(CreateCertificateRequest {
            csr,
            identity: identity.to_string(),
            validity_seconds: 0,
        });
        grpc::authorize(&mut request, &self.token_file)?;
        let response = CertificateServiceClient::new(channel)
            .create_certificate(request)
            .await
            .map_err(|status| CertError::Refused {
                identity: identity.clone(),
                status: format!("{:?}: {}", status.code(), status.message()),
            })?
            .into_inner();
        let roots = TrustRoots::from_pems(response.trust_roots.iter().map(String::as_str))
            .map_err(|e| CertError::Tls(e.to_string()))?;
        let cert = WorkloadCertificate::from_pem(&response.cert_chain.concat(), &key, roots)
            .map_err(|e| CertError::Tls(e.to_string()))?;
        if cert.identity() != identity {
            return Err(CertError::Tls(format!(
                "the CA issued {} instead of {identity}",
                cert.identity()
            )));
        }
        let server_config = cert
            .server_config()
            .map_err(|e| CertError::Tls(e.to_string()))?;
        Ok(Issued {
            cert: Arc::new(cert),
            server_config: Arc::new(server_config),
        })
    }

    async fn channel(&self) -> Result<Channel, CertError> {
        let mut guard = self.channel.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let channel = grpc::connect(self.controller, &self.roots, &self.controller_identity)
            .await
            .map_err(|e| CertError::Connect(e.to_string()))?;
        *guard = Some(channel.clone());
        Ok(channel)
    }
}
