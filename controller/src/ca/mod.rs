//! The mesh CA as a gRPC service: authenticate the caller, check it may hold the identity it asks
//! for, sign its CSR.
//!
//! A node agent may obtain the identity of any workload currently scheduled on its node, and
//! nothing else; a waypoint only its own (`ns/<gateway namespace>/sa/<gateway name>`). "Currently
//! scheduled" is read from the newest published config, so a pod deleted or moved stops being
//! signable at once.

pub mod secret;
pub mod store;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use ambit_proto::Identity;
use ambit_proto::api::certificate_service_server::CertificateService;
use ambit_proto::api::{CreateCertificateRequest, CreateCertificateResponse};
use ambit_proto::tls::authority::CertificateAuthority;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::{Authenticator, Caller, Refusals};
use crate::push::Generation;

#[derive(Clone)]
pub struct CaMetrics {
    pub issued: Counter,
    pub denied: Refusals,
}

impl CaMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let issued = Counter::default();
        registry.register(
            "ca_certificates_issued",
            "Workload certificates signed",
            issued.clone(),
        );
        let denied = Refusals::register(
            registry,
            "certificate request",
            "ca_certificates_denied",
            "Certificate requests refused, by reason",
        );
        CaMetrics { issued, denied }
    }
}

pub struct CaService {
    authority: Arc<CertificateAuthority>,
    auth: Arc<dyn Authenticator>,
    generations: watch::Receiver<Arc<Generation>>,
    /// The lifetime given by default, and the most a caller may ask for.
    ttl: Duration,
    metrics: CaMetrics,
}

impl CaService {
    pub fn new(
        authority: Arc<CertificateAuthority>,
        auth: Arc<dyn Authenticator>,
        generations: watch::Receiver<Arc<Generation>>,
        default_ttl: Duration,
        metrics: CaMetrics,
    ) -> Self {
        CaService {
            authority,
            auth,
            generations,
            ttl: default_ttl,
            metrics,
        }
    }

    fn may_hold(&self, caller: &Caller, id: &Identity) -> bool {
        match caller {
            Caller::Waypoint { namespace, name } => {
                id.namespace() == namespace && id.service_account() == name
            }
            Caller::NodeAgent { node } => self.generations.borrow().workloads_on(node).any(|w| {
                w.namespace == id.namespace()
                    && w.service_account == id.service_account()
                    && w.trust_domain == id.trust_domain()
            }),
        }
    }
}

#[tonic::async_trait]
impl CertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let caller = (self.auth.caller(request.metadata()).await)
            .map_err(|e| self.metrics.denied.unauthenticated(e))?;
        let req = request.into_inner();
        let identity = Identity::from_str(&req.identity).map_err(|e| {
            self.metrics
                .denied
                .refuse("bad_request", Status::invalid_argument(e.to_string()))
        })?;
        if !self.may_hold(&caller, &identity) {
            return Err(self.metrics.denied.refuse(
                "not_authorized",
                Status::permission_denied(format!(
                    "{caller} may not obtain {identity}: no such workload is scheduled on its node"
                )),
            ));
        }
        let ttl = match req.validity_seconds {
            s if s > 0 => Duration::from_secs(s as u64).min(self.ttl),
            _ => self.ttl,
        };
        let chain = self
            .authority
            .sign_csr(&req.csr, &identity, ttl)
            .map_err(|e| {
                self.metrics
                    .denied
                    .refuse("bad_csr", Status::invalid_argument(e.to_string()))
            })?;
        self.metrics.issued.inc();
        info!(%identity, %caller, ttl_secs = ttl.as_secs(), "certificate issued");
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: chain.iter().map(|c| pem_cert(c)).collect(),
            trust_roots: self.authority.roots().to_pem(),
        }))
    }
}

fn pem_cert(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der))
}
