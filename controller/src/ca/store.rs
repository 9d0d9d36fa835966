//! The CA's key material on disk, in the layout Istio users already have.
//!
//! A directory holding `ca-cert.pem` and `ca-key.pem` (plus `root-cert.pem` and, for an
//! intermediate, `cert-chain.pem`) is used as it is: a plug-in CA. An empty directory gets a new
//! self-signed root written in the same layout on first start, and that root is reused on every
//! start after. On Kubernetes a generated root lives in a Secret of the same layout instead
//! (`secret.rs`).

use std::path::Path;
use std::time::Duration;

use ambit_proto::tls::TlsError;
use ambit_proto::tls::authority::CertificateAuthority;
use tracing::info;

use crate::auth::files::write_private;

/// The files of the plug-in layout.
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("writing the new root CA to {dir}: {source}")]
    Write { dir: String, source: std::io::Error },
    #[error("the CA in {dir} is unusable: {source}")]
    Invalid { dir: String, source: Box<TlsError> },
}

/// A CA from the plug-in layout's contents. Without a root certificate the CA certificate is its
/// own root (a generated root, persisted).
pub fn from_layout(
    cert: &str,
    key: &str,
    chain: Option<&str>,
    root: Option<&str>,
    trust_domain: &str,
) -> Result<CertificateAuthority, TlsError> {
    CertificateAuthority::from_pem(cert, key, chain, root.unwrap_or(cert), trust_domain)
}

/// A generated root in the plug-in layout: (file, content).
pub fn layout_of_root(ca: &CertificateAuthority) -> [(&'static str, String); 3] {
    [
        (CA_KEY, ca.key_pem()),
        (CA_CERT, ca.cert_pem()),
        (ROOT_CERT, ca.cert_pem()),
    ]
}

/// The plug-in CA in `dir`, if it holds one.
pub fn load(dir: &Path, trust_domain: &str) -> Result<Option<CertificateAuthority>, StoreError> {
    let file = |name: &str| dir.join(name);
    if !file(CA_CERT).exists() && !file(CA_KEY).exists() {
        return Ok(None);
    }
    let read = |name: &str| {
        std::fs::read_to_string(file(name)).map_err(|source| StoreError::Read {
            file: file(name).display().to_string(),
            source,
        })
    };
    let optional = |name: &str| file(name).exists().then(|| read(name)).transpose();
    let (cert, key) = (read(CA_CERT)?, read(CA_KEY)?);
    let (chain, root) = (optional(CERT_CHAIN)?, optional(ROOT_CERT)?);
    let ca = from_layout(&cert, &key, chain.as_deref(), root.as_deref(), trust_domain).map_err(
        |source| StoreError::Invalid {
            dir: dir.display().to_string(),
            source: Box::new(source),
        },
    )?;
    info!(dir = %dir.display(), "loaded CA");
    Ok(Some(ca))
}

/// Loads the CA from `dir`, or generates and persists a root there if it holds none.
pub fn load_or_generate(
    dir: &Path,
    trust_domain: &str,
    root_lifetime: Duration,
) -> Result<CertificateAuthority, StoreError> {
    if let Some(ca) = load(dir, trust_domain)? {
        return Ok(ca);
    }
    let ca =
        CertificateAuthority::generate_root(trust_domain, root_lifetime).map_err(|source| {
            StoreError::Invalid {
                dir: dir.display().to_string(),
                source: Box::new(source),
            }
        })?;
    let failed = |source| StoreError::Write {
        dir: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(failed)?;
    for (name, pem) in layout_of_root(&ca) {
        write_private(&dir.join(name), pem.as_bytes()).map_err(failed)?;
    }
    info!(dir = %dir.display(), "generated a new root CA");
    Ok(ca)
}
