//! Test and benchmark helpers (feature `testing`): a throwaway mesh CA, and an HBONE handler that
//! dials the CONNECT authority directly, i.e. an HBONE server with no policy in front.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::hbone::{Handler, InboundRequest, IncomingTunnel};
use crate::identity::Identity;
use crate::net::Dialer;
use crate::relay::relay;
use crate::tls::authority::CertificateAuthority;
use crate::tls::{TlsError, WorkloadCertificate};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// A fresh root CA for `cluster.local`.
pub fn ca() -> CertificateAuthority {
    CertificateAuthority::generate_root(TRUST_DOMAIN, Duration::from_secs(24 * 3600))
        .expect("generate test CA")
}

pub fn identity(ns: &str, sa: &str) -> Identity {
    Identity::new(TRUST_DOMAIN, ns, sa).expect("valid test identity")
}

/// A certificate for `spiffe://cluster.local/ns/<ns>/sa/<sa>`, valid for an hour.
pub fn cert(ca: &CertificateAuthority, ns: &str, sa: &str) -> Arc<WorkloadCertificate> {
    Arc::new(
        ca.issue(&identity(ns, sa), Duration::from_secs(3600))
            .expect("issue test certificate"),
    )
}

/// A leaf signed by `ca` with arbitrary SANs and validity, for testing what verifiers refuse.
/// Returns the chain and key, unparsed, because [`WorkloadCertificate`] would refuse them.
pub fn raw_leaf(
    ca: &CertificateAuthority,
    sans: Vec<SanType>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans;
    params.not_before = not_before;
    params.not_after = not_after;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = ca.sign_params(params, &key)?;
    Ok((
        vec![cert],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// Dials the tunnel's authority and relays; answers 503 naming the error when the dial fails.
#[derive(Debug, Clone, Default)]
pub struct DialAuthority {
    pub dialer: Dialer,
}

impl Handler for DialAuthority {
    async fn handle(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        dial_and_relay(&self.dialer, req.authority, tunnel).await;
    }
}

async fn dial_and_relay(dialer: &Dialer, authority: SocketAddr, tunnel: IncomingTunnel) {
    match dialer.connect(authority).await {
        Err(e) => tunnel.refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("upstream connect failed: {e}"),
        ),
        Ok(upstream) => {
            if let Ok(stream) = tunnel.accept() {
                let _ = relay(stream, upstream).await;
            }
        }
    }
}
