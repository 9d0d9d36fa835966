//! A mesh certificate authority: signs workload CSRs into short-lived SPIFFE certificates.
//!
//! This is the signing half only. Who may ask for which identity, persistence of the root, and
//! the gRPC service around it belong to the controller. Node agents use [`generate_csr`] so their
//! private keys never leave the node.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use super::certificate::{parse_certs_pem, pem_encode};
use super::{TlsError, TrustRoots, WorkloadCertificate, identity_of};
use crate::identity::Identity;

/// Certificates are back-dated by this much so a peer whose clock is slightly behind accepts them.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("malformed CSR (not PEM, not PKCS#10, or its signature does not match its key): {0}")]
    Malformed(String),
    #[error("CSR must carry exactly one SAN, the URI {expected}; it carries {got:?}")]
    SanMismatch {
        expected: Identity,
        got: Vec<String>,
    },
    #[error("identity {got} is outside this CA's trust domain {expected}")]
    TrustDomain { got: Identity, expected: String },
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A CA key and certificate, and the roots clients must trust for what it signs.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate and any intermediates above it (not the root, unless the CA is the
    /// root): appended to every leaf so peers can build the path to the root.
    chain: Vec<CertificateDer<'static>>,
    roots: TrustRoots,
    trust_domain: String,
    not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// Generates a new self-signed root CA for `trust_domain`, valid for `lifetime`.
    pub fn generate_root(trust_domain: &str, lifetime: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Ambit mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - CLOCK_SKEW;
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let der = cert.der().clone();
        Self::assemble(
            Issuer::new(params, key),
            vec![der.clone()],
            TrustRoots::new(vec![der])?,
            trust_domain,
        )
    }

    /// Loads a CA from PEM: Istio's plug-in layout (`ca-cert.pem`, `ca-key.pem`,
    /// `cert-chain.pem`, `root-cert.pem`) or a persisted self-signed root (chain and root then
    /// being the CA certificate itself).
    pub fn from_pem(
        ca_cert_pem: &str,
        ca_key_pem: &str,
        cert_chain_pem: Option<&str>,
        root_cert_pem: &str,
        trust_domain: &str,
    ) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(ca_key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(ca_cert_pem, key)?;
        let ca_cert = parse_certs_pem(ca_cert_pem)?.remove(0);
        // cert-chain.pem conventionally starts with ca-cert.pem itself; do not repeat it.
        let mut chain = vec![ca_cert.clone()];
        if let Some(pem) = cert_chain_pem {
            chain.extend(parse_certs_pem(pem)?.into_iter().filter(|c| *c != ca_cert));
        }
        let roots = TrustRoots::from_pem(root_cert_pem)?;
        // A CA whose own chain does not lead to the roots would issue certificates nobody accepts;
        // refuse at start rather than fail every handshake later.
        let probe = Self::assemble(issuer, chain, roots, trust_domain)?;
        let test_id = Identity::new(trust_domain, "ambit-system", "ca-self-check")?;
        let leaf = probe.issue(&test_id, Duration::from_secs(60))?;
        let parsed = rustls::server::ParsedCertificate::try_from(&leaf.chain()[0])?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            probe.roots.store(),
            &leaf.chain()[1..],
            rustls::pki_types::UnixTime::now(),
            super::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            TlsError::Certificate(format!(
                "the CA's chain does not lead to root-cert.pem: {e}"
            ))
        })?;
        Ok(probe)
    }

    fn assemble(
        issuer: Issuer<'static, KeyPair>,
        chain: Vec<CertificateDer<'static>>,
        roots: TrustRoots,
        trust_domain: &str,
    ) -> Result<Self, TlsError> {
        use x509_parser::prelude::*;
        let (_, ca) = X509Certificate::from_der(chain[0].as_ref())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if !ca.is_ca() {
            return Err(TlsError::Certificate(
                "the CA certificate is not marked as a CA (basicConstraints)".into(),
            ));
        }
        let not_after = OffsetDateTime::from_unix_timestamp(ca.validity().not_after.timestamp())
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(CertificateAuthority {
            issuer,
            chain,
            roots,
            trust_domain: trust_domain.to_string(),
            not_after,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn roots(&self) -> &TrustRoots {
        &self.roots
    }

    /// The CA certificate, PEM (for persisting a generated root).
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.chain[0])
    }

    /// The CA private key, PEM (for persisting a generated root).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs a CSR for `identity`. The CSR must be validly self-signed and ask for exactly that
    /// URI SAN; everything else in it (subject, extensions) is ignored: the CA decides what a
    /// workload certificate contains. Returns the chain, leaf first.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<Vec<CertificateDer<'static>>, CsrError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CsrError::TrustDomain {
                got: identity.clone(),
                expected: self.trust_domain.clone(),
            });
        }
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        let sans: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if sans != [identity.to_string()] {
            return Err(CsrError::SanMismatch {
                expected: identity.clone(),
                got: sans,
            });
        }
        let params = self.leaf_params(identity, lifetime)?;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(self.with_chain(cert.der().clone()))
    }

    /// Issues a certificate with a freshly generated key: for the controller's own identity and
    /// for tests. Workloads' keys are generated on their node instead ([`generate_csr`]).
    pub fn issue(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<WorkloadCertificate, TlsError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params = self
            .leaf_params(identity, lifetime)
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let chain = self.with_chain(cert.der().clone());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let issued = WorkloadCertificate::new(chain, key, self.roots.clone())?;
        debug_assert_eq!(
            identity_of(&issued.chain()[0]).ok().as_ref(),
            Some(identity)
        );
        Ok(issued)
    }

    /// Signs arbitrary parameters (tests use it to make certificates the verifiers must refuse).
    #[cfg(feature = "testing")]
    pub fn sign_params(
        &self,
        params: CertificateParams,
        key: &KeyPair,
    ) -> Result<CertificateDer<'static>, TlsError> {
        Ok(params.signed_by(key, &self.issuer)?.der().clone())
    }

    fn leaf_params(
        &self,
        identity: &Identity,
        lifetime: Duration,
    ) -> Result<CertificateParams, CsrError> {
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(
            identity
                .to_string()
                .try_into()
                .map_err(|e: rcgen::Error| CsrError::Sign(e))?,
        )];
        // Istio leaves the subject empty; the URI SAN is the identity. rcgen's default subject
        // is a placeholder common name, which peers would show in errors, so clear it.
        params.distinguished_name = DistinguishedName::new();
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = now - CLOCK_SKEW;
        // Never outlive the CA: a leaf valid past its issuer fails path building anyway.
        params.not_after = (now + lifetime).min(self.not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }

    fn with_chain(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = Vec::with_capacity(1 + self.chain.len());
        chain.push(leaf);
        // A self-signed root CA need not be sent: peers already hold it.
        let ca_is_root = self.roots.certificates().contains(&self.chain[0]);
        if !ca_is_root {
            chain.extend(
                self.chain
                    .iter()
                    .filter(|c| !self.roots.certificates().contains(c))
                    .cloned(),
            );
        }
        chain
    }
}

/// A new P-256 key and a CSR for `identity`, both PEM. The key stays with the caller.
pub fn generate_csr(identity: &Identity) -> Result<(String, String), TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into()?)];
    let csr = params.serialize_request(&key)?;
    Ok((csr.pem()?, key.serialize_pem()))
}

/// 128 random bits, top bit clear so the DER integer stays positive.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}
