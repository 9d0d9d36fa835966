//! Who is calling: every client of the controller's gRPC services (the config stream and the CA)
//! is a node agent or a waypoint, and proves it with a bearer token. One piece serves both
//! services, so a caller refused by one is refused by the other for the same reason.
//!
//! Standalone, the controller writes one random token per node and per waypoint into its data
//! directory ([`files::TokenFiles`]); whoever can read `tokens/node-<name>.token` is that node's
//! agent, which is the same trust a kubelet's credentials give on a real node. On Kubernetes the
//! token is the caller's ServiceAccount token, checked with a TokenReview
//! ([`token_review::TokenReviewer`]).
//!
//! Every refusal is an [`AuthError`], which names its gRPC status and its metric label; each
//! service counts refusals in its own metric.

pub mod files;
pub mod token_review;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::metadata::MetadataMap;
use tracing::warn;

pub use files::TokenFiles;

/// An authenticated client. What it may do follows from this alone, never from what its requests
/// say about themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    NodeAgent { node: String },
    Waypoint { namespace: String, name: String },
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::NodeAgent { node } => write!(f, "node-agent {node}"),
            Caller::Waypoint { namespace, name } => write!(f, "waypoint {namespace}/{name}"),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("the token is not known to this controller")]
    Unknown,
    /// The API server says the token is not valid (expired, revoked, forged, wrong audience).
    #[error("the Kubernetes API server rejected the token: {0}")]
    Rejected(String),
    /// Authenticated, but as an account that is neither a node agent nor a waypoint.
    #[error(
        "{user} may not use the controller: only the node agent ({node_agent}) and waypoints may"
    )]
    NotAllowed { user: String, node_agent: String },
    /// Not a pod-bound token, so there is no node to read.
    #[error("the token is not bound to a pod; use a projected ServiceAccount token")]
    NotBound,
    #[error("the token's pod {pod} is not known to the controller (deleted, or not seen yet)")]
    UnknownPod { pod: String },
    #[error(
        "the token was issued for pod {pod} with uid {claimed}, but that pod now has uid {actual}"
    )]
    PodUidMismatch {
        pod: String,
        claimed: String,
        actual: String,
    },
    #[error("the token's pod {pod} runs as {actual}, not as {user}")]
    WrongPodAccount {
        pod: String,
        user: String,
        actual: String,
    },
    #[error("the token's pod {pod} is not scheduled on a node")]
    Unscheduled { pod: String },
    /// The API server could not be asked: not the caller's fault, and worth a retry.
    #[error("TokenReview failed: {0}")]
    ReviewFailed(String),
}

impl AuthError {
    /// The `reason` label of a service's refusal counter.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing | AuthError::Unknown | AuthError::Rejected(_) => "unauthenticated",
            AuthError::NotAllowed { .. } => "wrong_service_account",
            AuthError::NotBound => "unbound_token",
            AuthError::UnknownPod { .. } => "unknown_pod",
            AuthError::PodUidMismatch { .. } | AuthError::WrongPodAccount { .. } => "pod_mismatch",
            AuthError::Unscheduled { .. } => "unscheduled_pod",
            AuthError::ReviewFailed(_) => "token_review_failed",
        }
    }

    /// Unauthenticated when the token proves nothing; PermissionDenied when it proves an account
    /// or a pod that may not use the controller; Unavailable when the API server could not be
    /// asked (the client retries, as after any outage).
    pub fn status(&self) -> tonic::Status {
        let message = self.to_string();
        match self {
            AuthError::Missing | AuthError::Unknown | AuthError::Rejected(_) => {
                tonic::Status::unauthenticated(message)
            }
            AuthError::ReviewFailed(_) => tonic::Status::unavailable(message),
            _ => tonic::Status::permission_denied(message),
        }
    }
}

#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError>;

    /// The caller of a gRPC request, from its bearer token.
    async fn caller(&self, metadata: &MetadataMap) -> Result<Caller, AuthError> {
        self.authenticate(bearer(metadata)?).await
    }
}

/// The bearer token of a gRPC request.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// One service's refused requests, counted by reason and logged.
#[derive(Clone)]
pub struct Refusals {
    /// What was refused, for the log: "certificate request", "config stream".
    what: &'static str,
    counter: Family<ReasonLabel, Counter>,
}

impl Refusals {
    pub fn register(
        registry: &mut Registry,
        what: &'static str,
        name: &str,
        help: &str,
    ) -> Refusals {
        let counter = Family::default();
        registry.register(name, help, counter.clone());
        Refusals { what, counter }
    }

    /// Counts one refusal under `reason` and hands back `status`, to be returned to the caller.
    pub fn refuse(&self, reason: &'static str, status: tonic::Status) -> tonic::Status {
        self.counter.get_or_create(&ReasonLabel { reason }).inc();
        warn!(reason, "{} refused: {}", self.what, status.message());
        status
    }

    /// [`Refusals::refuse`] for a caller that failed authentication.
    pub fn unauthenticated(&self, e: AuthError) -> tonic::Status {
        self.refuse(e.reason(), e.status())
    }
}
