//! The `ambit` commands against a real cluster: `install`, `uninstall`, `waypoint`, `check
//! --kubernetes`, and the cluster side of `ztunnel-config` and `explain`. Each is an async
//! function of a `kube::Client`, so tests drive them against a scripted API server and see
//! every request they make.
//!
//! - [`render`]: the manifests of `deploy/base`, embedded in the binary, with `--set` values;
//! - [`resources`]: which API path each kind the commands write lives at;
//! - [`install`]: server-side apply in order, and uninstall in reverse;
//! - [`waypoint`]: the waypoint `Gateway` of a namespace, as `istioctl waypoint` makes it;
//! - [`check`]: is the cluster ready for Ambit, and is Ambit running on every node;
//! - [`agents`]: each node's agent pod and its config dump, through a port-forward;
//! - [`mesh`]: the objects the controller reads, translated, for `explain`.
//!
//! Nothing here touches the local lab (`crate::lab`).

pub mod agents;
pub mod check;
pub mod install;
pub mod mesh;
pub mod render;
pub mod resources;
pub mod waypoint;

/// The namespace everything Ambit runs in (the controller's identity depends on it).
pub const NAMESPACE: &str = "ambit-system";
/// Field manager for server-side apply: the owner of every field the commands set.
pub const FIELD_MANAGER: &str = "ambit";
/// The label on every object `deploy/base` holds; a CRD without it is someone else's.
pub const PART_OF: (&str, &str) = ("app.kubernetes.io/part-of", "ambit");

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("connecting to the cluster: {0} (set KUBECONFIG, or run inside a pod)")]
    Connect(String),
    // Causes are the error chain's to print (`ambit: {err:#}`), not the message's: with both,
    // each was printed twice.
    #[error("{what}")]
    Api {
        what: String,
        source: Box<kube::Error>,
    },
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error(transparent)]
    Resource(#[from] resources::UnknownKind),
    #[error("{0}")]
    Usage(String),
    #[error("{what}: still there after {seconds}s")]
    Timeout { what: String, seconds: u64 },
    /// No agent to ask, or an agent that could not be read (port-forward, HTTP, its answer).
    #[error("{what}: {reason}")]
    Agent { what: String, reason: String },
    #[error(transparent)]
    View(#[from] crate::mesh::ViewError),
}

impl ClusterError {
    pub(crate) fn api(what: impl Into<String>, source: kube::Error) -> Self {
        ClusterError::Api {
            what: what.into(),
            source: Box::new(source),
        }
    }
}

/// A client from KUBECONFIG, `~/.kube/config` or the pod's service account.
pub async fn client() -> Result<kube::Client, ClusterError> {
    kube::Client::try_default()
        .await
        .map_err(|e| ClusterError::Connect(e.to_string()))
}

/// True when the API server answered 404 Not Found.
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `ambit` prints errors (message, then each cause): a cause that the message also
    /// printed would appear twice. (kube's own errors repeat their Status in their chain; that
    /// is theirs, so the API case counts kube's error itself.)
    #[test]
    fn an_errors_cause_is_printed_once() {
        let api = ClusterError::api(
            "listing pods",
            kube::Error::Api(kube::core::Status::failure("the cause", "Forbidden").boxed()),
        );
        let render = ClusterError::from(render::RenderError::Missing("the cause".into()));
        let fetch = agents::FetchError::Request(
            http::Request::builder()
                .uri("\0 the cause")
                .body(())
                .unwrap_err(),
        );
        for (err, cause) in [
            (&api as &dyn std::error::Error, "ApiError"),
            (&render, "the cause"),
            (&fetch, "invalid uri"),
        ] {
            let printed = crate::error_chain(err);
            assert_eq!(printed.matches(cause).count(), 1, "{printed}");
        }
    }
}
