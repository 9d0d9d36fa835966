//! Certificates for the identities of this node's captured workloads: the shared manager in
//! `ambit_proto::certs`, counted in the agent's metrics.

pub use ambit_proto::certs::{CertError, CertManager, Issued};

impl ambit_proto::certs::FetchObserver for crate::metrics::Metrics {
    fn fetched(&self, ok: bool) {
        self.certificate_fetch(ok);
    }
}
