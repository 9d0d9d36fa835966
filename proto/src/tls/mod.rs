//! SPIFFE mTLS for HBONE and the control plane.
//!
//! What this module guarantees, and the rest of Ambit relies on:
//! - a client only completes a handshake with a server whose chain leads to one of the mesh's
//!   trust roots AND whose single URI SAN is exactly one of the identities it expected;
//! - a server only completes a handshake with a client that presented a certificate chained to the
//!   roots, carrying a SPIFFE identity of an accepted trust domain, and it hands that identity on;
//! - several roots may be trusted at once, so a root can be rotated without an outage.
//!
//! It owns certificate parsing and rustls configuration; it does not fetch or rotate certificates
//! (the node agent does) and does not decide who may hold which identity (the controller's CA does).

pub mod authority;
mod certificate;
mod verifier;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use certificate::{
    TrustRoots, WorkloadCertificate, control_plane_client_config, identity_of, peer_identity,
};
pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

use crate::identity::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no {0} found in PEM input")]
    EmptyPem(&'static str),
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("certificate carries no SPIFFE URI SAN")]
    NoIdentity,
    #[error("certificate carries {0} URI SANs; a SPIFFE certificate has exactly one")]
    ManyIdentities(usize),
    #[error("certificate identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("peer identity {got} is not one of the expected {expected:?}")]
    UnexpectedIdentity {
        got: Identity,
        expected: Vec<Identity>,
    },
    #[error("peer identity {got} is outside the accepted trust domain {expected}")]
    ForeignTrustDomain { got: Identity, expected: String },
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The crypto provider every Ambit TLS endpoint uses: *ring*, restricted to what Istio's HBONE
/// speaks (TLS 1.3 AES-GCM suites, X25519 with P-256 as a fallback).
///
/// ring's AES-GCM measured ~40% faster than aws-lc-rs's on these machines (bench/README.md).
/// AES-128-GCM is offered first, the fastest AEAD of the two suites; rustls servers honour the
/// client's order, so mesh-internal tunnels use it while Istio peers preferring AES-256 still
/// interoperate.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::{cipher_suite, default_provider, kx_group};
            Arc::new(CryptoProvider {
                cipher_suites: vec![
                    cipher_suite::TLS13_AES_128_GCM_SHA256,
                    cipher_suite::TLS13_AES_256_GCM_SHA384,
                ],
                kx_groups: vec![kx_group::X25519, kx_group::SECP256R1],
                ..default_provider()
            })
        })
        .clone()
}

/// TLS 1.3 only: HBONE peers (Istio's ztunnel included) speak 1.3, and 1.2 would widen what an
/// attacker can negotiate down to.
pub(crate) static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13];
