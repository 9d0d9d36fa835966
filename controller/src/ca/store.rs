//! The CA's key material on disk, in the layout Istio users already have.
//!
//! A directory holding `ca-cert.pem` and `ca-key.pem` (plus `root-cert.pem` and, for an
//! intermediate, `cert-chain.pem`) is used as it is: a plug-in CA. An empty directory gets a new
//! self-signed root written in the same layout on first start, and that root is reused on every
//! start after.

use std::path::Path;
use std::time::Duration;

use ambit_proto::tls::TlsError;
use ambit_proto::tls::authority::CertificateAuthority;
use tracing::info;

use super::auth::write_private;

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

/// Loads the CA from `dir`, or generates and persists a root there if it holds none.
pub fn load_or_generate(
    dir: &Path,
    trust_domain: &str,
    root_lifetime: Duration,
) -> Result<CertificateAuthority, StoreError> {
    let file = |name: &str| dir.join(name);
    let read = |name: &str| {
        std::fs::read_to_string(file(name)).map_err(|source| StoreError::Read {
            file: file(name).display().to_string(),
            source,
        })
    };
    let invalid = |source| StoreError::Invalid {
        dir: dir.display().to_string(),
        source: Box::new(source),
    };
    if file("ca-cert.pem").exists() || file("ca-key.pem").exists() {
        let cert = read("ca-cert.pem")?;
        let key = read("ca-key.pem")?;
        let chain = file("cert-chain.pem")
            .exists()
            .then(|| read("cert-chain.pem"))
            .transpose()?;
        // Without root-cert.pem the CA certificate is its own root (a persisted generated root).
        let root = if file("root-cert.pem").exists() {
            read("root-cert.pem")?
        } else {
            cert.clone()
        };
        let ca = CertificateAuthority::from_pem(&cert, &key, chain.as_deref(), &root, trust_domain)
            .map_err(invalid)?;
        info!(dir = %dir.display(), "loaded CA");
        return Ok(ca);
    }
    let ca = CertificateAuthority::generate_root(trust_domain, root_lifetime).map_err(invalid)?;
    let write = |name: &str, data: &str| {
        write_private(&file(name), data.as_bytes()).map_err(|source| StoreError::Write {
            dir: dir.display().to_string(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| StoreError::Write {
        dir: dir.display().to_string(),
        source,
    })?;
    write("ca-key.pem", &ca.key_pem())?;
    write("ca-cert.pem", &ca.cert_pem())?;
    write("root-cert.pem", &ca.cert_pem())?;
    info!(dir = %dir.display(), "generated a new root CA");
    Ok(ca)
}
