//! On Kubernetes, the generated root CA is kept in a Secret (`ambit-ca` in the controller's
//! namespace, the plug-in layout's file names as keys), so every restart and every replica signs
//! with the same root. A root that changed on restart would make every workload certificate in the
//! mesh untrusted at once.
//!
//! The first controller to start creates the Secret; one that loses that race (409 Conflict)
//! reads the winner's. The Secret's keys are those of a plug-in CA, so an operator can also put
//! an intermediate there. A CA mounted into `--ca-dir` takes precedence over the Secret.

use std::collections::BTreeMap;
use std::time::Duration;

use ambit_proto::tls::TlsError;
use ambit_proto::tls::authority::CertificateAuthority;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tracing::info;

use super::store::{self, CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};

pub const SECRET_NAME: &str = "ambit-ca";

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("Secret {namespace}/{SECRET_NAME}: {source}")]
    Api {
        namespace: String,
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{SECRET_NAME} has no usable {key}")]
    MissingKey {
        namespace: String,
        key: &'static str,
    },
    #[error("the CA in Secret {namespace}/{SECRET_NAME} is unusable: {source}")]
    Invalid {
        namespace: String,
        source: Box<TlsError>,
    },
}

/// The CA from the Secret in `namespace`, created with a new root if there is none.
pub async fn load_or_create(
    client: kube::Client,
    namespace: &str,
    trust_domain: &str,
    root_lifetime: Duration,
) -> Result<CertificateAuthority, SecretError> {
    let api_error = |source| SecretError::Api {
        namespace: namespace.into(),
        source: Box::new(source),
    };
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    if let Some(secret) = secrets.get_opt(SECRET_NAME).await.map_err(api_error)? {
        info!(namespace, secret = SECRET_NAME, "loaded CA");
        return from_secret(&secret, namespace, trust_domain);
    }
    let invalid = |source| SecretError::Invalid {
        namespace: namespace.into(),
        source: Box::new(source),
    };
    let ca = CertificateAuthority::generate_root(trust_domain, root_lifetime).map_err(invalid)?;
    let data: BTreeMap<String, ByteString> = store::layout_of_root(&ca)
        .into_iter()
        .map(|(key, pem)| (key.to_string(), ByteString(pem.into_bytes())))
        .collect();
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET_NAME.into()),
            namespace: Some(namespace.into()),
            labels: Some([("app.kubernetes.io/managed-by".into(), "ambit".into())].into()),
            ..ObjectMeta::default()
        },
        data: Some(data),
        type_: Some("Opaque".into()),
        ..Secret::default()
    };
    match secrets.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(namespace, secret = SECRET_NAME, "generated a new root CA");
            Ok(ca)
        }
        // Another replica created it first: use that root, so that there is one.
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = secrets.get(SECRET_NAME).await.map_err(api_error)?;
            info!(
                namespace,
                secret = SECRET_NAME,
                "loaded CA created concurrently"
            );
            from_secret(&theirs, namespace, trust_domain)
        }
        Err(e) => Err(api_error(e)),
    }
}

fn from_secret(
    secret: &Secret,
    namespace: &str,
    trust_domain: &str,
) -> Result<CertificateAuthority, SecretError> {
    let value = |key: &str| {
        let bytes = secret.data.as_ref()?.get(key)?;
        String::from_utf8(bytes.0.clone()).ok()
    };
    let required = |key: &'static str| {
        value(key).ok_or_else(|| SecretError::MissingKey {
            namespace: namespace.into(),
            key,
        })
    };
    let (cert, key) = (required(CA_CERT)?, required(CA_KEY)?);
    let (chain, root) = (value(CERT_CHAIN), value(ROOT_CERT));
    store::from_layout(&cert, &key, chain.as_deref(), root.as_deref(), trust_domain).map_err(
        |source| SecretError::Invalid {
            namespace: namespace.into(),
            source: Box::new(source),
        },
    )
}
