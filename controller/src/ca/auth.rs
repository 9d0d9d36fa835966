//! Who is calling: node agents and waypoints authenticate with a bearer token.
//!
//! Standalone, the controller writes one random token per node and per waypoint into its data
//! directory (mode 0600); whoever can read `tokens/node-<name>.token` is that node's agent, which
//! is the same trust a kubelet's credentials give on a real node ([`TokenFiles`]). On Kubernetes
//! the token is the caller's ServiceAccount token, checked with a TokenReview
//! ([`super::token_review::TokenReviewer`]).
//!
//! Every refusal is an [`AuthError`], which names its gRPC status and its metric label.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Caller {
    NodeAgent { node: String },
    Waypoint { namespace: String, name: String },
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
    /// Authenticated, but as an account that may not obtain certificates.
    #[error(
        "{user} may not obtain certificates: only the node agent ({node_agent}) and waypoints may"
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
    /// The `reason` label of the CA's denial counter.
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
    /// or a pod that may not have certificates; Unavailable when the API server could not be
    /// asked.
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
}

/// The bearer token of a gRPC request.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str, AuthError> {
    metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

/// Tokens kept as files in a directory. Lookups are by the token's SHA-256, so the map holds no
/// secret and comparing does not leak a prefix through timing.
pub struct TokenFiles {
    dir: PathBuf,
    known: RwLock<HashMap<[u8; 32], Caller>>,
}

impl TokenFiles {
    /// Opens (creating, mode 0700) the token directory and loads the tokens already in it.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        set_mode(&dir, 0o700)?;
        let files = TokenFiles {
            dir,
            known: RwLock::default(),
        };
        Ok(files)
    }

    pub fn path(&self, caller: &Caller) -> PathBuf {
        self.dir.join(match caller {
            Caller::NodeAgent { node } => format!("node-{node}.token"),
            Caller::Waypoint { namespace, name } => format!("waypoint-{namespace}.{name}.token"),
        })
    }

    /// Makes sure every caller has a token file, creating the missing ones.
    pub fn ensure<'a>(&self, callers: impl IntoIterator<Item = &'a Caller>) -> std::io::Result<()> {
        for caller in callers {
            let path = self.path(caller);
            let token = match std::fs::read_to_string(&path) {
                Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
                _ => {
                    let bytes: [u8; 32] = rand::random();
                    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
                    write_private(&path, token.as_bytes())?;
                    token
                }
            };
            self.known
                .write()
                .expect("lock")
                .insert(Sha256::digest(token.as_bytes()).into(), caller.clone());
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Authenticator for TokenFiles {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.known
            .read()
            .expect("lock")
            .get(&digest)
            .cloned()
            .ok_or(AuthError::Unknown)
    }
}

/// Writes `data` to `path` atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        set_mode(&tmp, 0o600)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(tmp, path)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
