//! Certificates as the mesh holds them: a workload's chain and key, and the trust roots.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::verifier::{SpiffeClientVerifier, SpiffeServerVerifier};
use super::{PROTOCOL_VERSIONS, TlsError, provider};
use crate::identity::Identity;

/// The set of roots the mesh trusts. More than one during a root rotation.
#[derive(Clone)]
pub struct TrustRoots {
    store: Arc<RootCertStore>,
    certs: Arc<[CertificateDer<'static>]>,
}

impl TrustRoots {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Result<Self, TlsError> {
        if certs.is_empty() {
            return Err(TlsError::EmptyPem("root certificate"));
        }
        let mut store = RootCertStore::empty();
        for cert in &certs {
            store.add(cert.clone())?;
        }
        Ok(TrustRoots {
            store: Arc::new(store),
            certs: certs.into(),
        })
    }

    /// Parses every certificate in a PEM bundle.
    pub fn from_pem(pem: &str) -> Result<Self, TlsError> {
        Self::new(parse_certs_pem(pem)?)
    }

    /// Roots made of several PEM bundles (one per root during a rotation).
    pub fn from_pems<'a>(pems: impl IntoIterator<Item = &'a str>) -> Result<Self, TlsError> {
        let mut certs = Vec::new();
        for pem in pems {
            certs.extend(parse_certs_pem(pem)?);
        }
        Self::new(certs)
    }

    pub fn store(&self) -> &Arc<RootCertStore> {
        &self.store
    }

    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn to_pem(&self) -> Vec<String> {
        self.certs.iter().map(|c| der_to_pem(c)).collect()
    }
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustRoots({} roots)", self.certs.len())
    }
}

/// A workload's certificate chain, private key and the roots it trusts, ready to build rustls
/// configurations from. The private key is parsed once, here.
#[derive(Clone)]
pub struct WorkloadCertificate {
    identity: Identity,
    key: Arc<CertifiedKey>,
    roots: TrustRoots,
    not_before: SystemTime,
    not_after: SystemTime,
    /// When this holder got the certificate (see `refresh_at`).
    received: SystemTime,
}

impl WorkloadCertificate {
    /// `chain` is leaf first. Fails if the key does not match the leaf or the leaf has no valid
    /// SPIFFE identity.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: TrustRoots,
    ) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::EmptyPem("certificate"))?;
        let identity = identity_of(leaf)?;
        let (not_before, not_after) = validity(leaf)?;
        let key = CertifiedKey::from_der(chain, key, &provider())?;
        Ok(WorkloadCertificate {
            identity,
            key: Arc::new(key),
            roots,
            not_before,
            not_after,
            received: SystemTime::now(),
        })
    }

    pub fn from_pem(chain_pem: &str, key_pem: &str, roots: TrustRoots) -> Result<Self, TlsError> {
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?
            .ok_or(TlsError::EmptyPem("private key"))?;
        Self::new(parse_certs_pem(chain_pem)?, key, roots)
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The same certificate and key trusting another set of roots: how a holder takes up a root
    /// rotation (old and new roots trusted side by side) without a new certificate.
    pub fn with_roots(&self, roots: TrustRoots) -> Self {
        WorkloadCertificate {
            roots,
            ..self.clone()
        }
    }

    pub fn roots(&self) -> &TrustRoots {
        &self.roots
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.key.cert
    }

    pub fn chain_pem(&self) -> Vec<String> {
        self.chain().iter().map(|c| der_to_pem(c)).collect()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The point after which the certificate should be replaced: half its remaining life when it
    /// was received, so a failed renewal has the other half to be retried in. Counted from
    /// receipt, not from `not_before`: CAs back-date `not_before` for clock skew, which would make
    /// a short-lived certificate look due at once.
    pub fn refresh_at(&self) -> SystemTime {
        let start = self.received.max(self.not_before);
        let life = self
            .not_after
            .duration_since(start)
            .unwrap_or(Duration::ZERO);
        start + life / 2
    }

    /// A client config that presents this certificate and accepts only a server proving one of
    /// `expected`. No SNI is sent (HBONE servers pick their certificate by destination IP) and
    /// no session is resumed (a resumed session would skip the identity check on reconnect).
    pub fn client_config(&self, expected: &[Identity]) -> ClientConfig {
        let verifier = SpiffeServerVerifier::new(self.roots.store().clone(), expected.to_vec());
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("provider supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(SingleKey(self.key.clone())));
        config.enable_sni = false;
        config.resumption = rustls::client::Resumption::disabled();
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    }

    /// A server config that presents this certificate and requires a client certificate chained
    /// to the roots with an identity in this certificate's trust domain.
    pub fn server_config(&self) -> Result<ServerConfig, TlsError> {
        let webpki =
            WebPkiClientVerifier::builder_with_provider(self.roots.store().clone(), provider())
                .build()
                .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let verifier = SpiffeClientVerifier::new(webpki, self.identity.trust_domain());
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(Arc::new(SingleKey(self.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        // Tunnels are long-lived and clients never resume; tickets would only cost CPU.
        config.send_tls13_tickets = 0;
        Ok(config)
    }
}

impl WorkloadCertificate {
    /// A server config for the control plane: the same certificate, but no client certificate
    /// asked for, because agents reach the CA before they hold any certificate. Callers are
    /// authenticated by bearer token instead.
    pub fn control_plane_server_config(&self) -> ServerConfig {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(PROTOCOL_VERSIONS)
            .expect("provider supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleKey(self.key.clone())));
        config.alpn_protocols = vec![b"h2".to_vec()];
        config
    }
}

/// A client config for reaching the control plane: verifies the server's chain against `roots`
/// and its identity against `expected`, presents no certificate.
pub fn control_plane_client_config(roots: &TrustRoots, expected: &Identity) -> ClientConfig {
    let verifier = SpiffeServerVerifier::new(roots.store().clone(), vec![expected.clone()]);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .expect("provider supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.enable_sni = false;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

impl fmt::Debug for WorkloadCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCertificate")
            .field("identity", &self.identity)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// Serves one certificate whatever the handshake asks for.
#[derive(Debug)]
struct SingleKey(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for SingleKey {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for SingleKey {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The SPIFFE identity of a certificate: its one URI SAN, which must parse as an [`Identity`].
/// DNS and IP SANs are ignored, as Istio does.
pub fn identity_of(cert: &CertificateDer<'_>) -> Result<Identity, TlsError> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .ok_or(TlsError::NoIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoIdentity),
        [uri] => Ok(uri.parse()?),
        many => Err(TlsError::ManyIdentities(many.len())),
    }
}

/// The identity a peer proved during a completed handshake.
pub fn peer_identity(conn: &rustls::CommonState) -> Result<Identity, TlsError> {
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    identity_of(leaf)
}

fn validity(cert: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), TlsError> {
    use x509_parser::prelude::*;
    let (_, x509) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let to_system = |t: ASN1Time| {
        let secs = t.timestamp().max(0) as u64;
        UNIX_EPOCH + Duration::from_secs(secs)
    };
    Ok((
        to_system(x509.validity().not_before),
        to_system(x509.validity().not_after),
    ))
}

pub(crate) fn parse_certs_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::EmptyPem("certificate"));
    }
    Ok(certs)
}

pub(crate) fn der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der))
}
