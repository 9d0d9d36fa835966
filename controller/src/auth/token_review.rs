//! Kubernetes authentication for the config stream and the CA, as Istio does it.
//!
//! A caller presents its ServiceAccount token. The controller asks the API server about it
//! (`authentication.k8s.io/v1` TokenReview, with the configured audiences), then:
//! - the node agent's ServiceAccount (by default `<controller-namespace>/ambit-ztunnel`) is a node
//!   agent, and its node is the `spec.nodeName` of the pod the token is bound to
//!   (`user.extra["authentication.kubernetes.io/pod-name"]` and `pod-uid`, set by the API server
//!   for projected tokens), looked up in the controller's current cluster state;
//! - a ServiceAccount named like a waypoint `Gateway` in its own namespace is that waypoint (it is
//!   served that Gateway's config and may obtain only its own identity);
//! - anyone else is refused.
//!
//! The pod must exist with the token's uid and run as the token's account: a token of a deleted
//! pod, or of a pod replaced under the same name, proves nothing about a node today.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, UserInfo};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::sync::watch;

use super::{AuthError, Authenticator, Caller};
use crate::model::{self, ClusterState, Kind, Object, ObjectRef};
use crate::translate::waypoint;

/// Claims the API server adds to a token bound to a pod.
pub const POD_NAME: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// A ServiceAccount; its tokens authenticate as `system:serviceaccount:<namespace>:<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountName {
    pub namespace: String,
    pub name: String,
}

impl ServiceAccountName {
    /// The account of a username, if it is a ServiceAccount's.
    pub fn from_username(user: &str) -> Option<Self> {
        let (namespace, name) = user
            .strip_prefix("system:serviceaccount:")?
            .split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':')).then(|| {
            ServiceAccountName {
                namespace: namespace.into(),
                name: name.into(),
            }
        })
    }

    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.name)
    }
}

/// Authenticates callers with TokenReview (see the module docs).
pub struct TokenReviewer {
    reviews: Api<TokenReview>,
    audiences: Vec<String>,
    node_agent: ServiceAccountName,
    states: watch::Receiver<ClusterState>,
}

impl TokenReviewer {
    /// `audiences`: what a token must be issued for (empty: the API server's default audience).
    pub fn new(
        client: kube::Client,
        node_agent: ServiceAccountName,
        audiences: Vec<String>,
        states: watch::Receiver<ClusterState>,
    ) -> Self {
        TokenReviewer {
            reviews: Api::all(client),
            audiences,
            node_agent,
            states,
        }
    }

    /// Who the API server says the token belongs to.
    async fn review(&self, token: &str) -> Result<UserInfo, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.to_string(),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let reviewed = self
            .reviews
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthError::ReviewFailed(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            let why = status.error.filter(|e| !e.is_empty());
            return Err(AuthError::Rejected(
                why.unwrap_or_else(|| "not authenticated".into()),
            ));
        }
        // Asked for audiences, the API server answers with those the token is valid for. An
        // answer without any of them is a server that ignored the question: not good enough.
        let granted = status.audiences.unwrap_or_default();
        if !self.audiences.is_empty() && !granted.iter().any(|a| self.audiences.contains(a)) {
            return Err(AuthError::Rejected(format!(
                "the token is not valid for audience {}",
                self.audiences.join(", ")
            )));
        }
        status
            .user
            .ok_or_else(|| AuthError::Rejected("the review names no user".into()))
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &str) -> Result<Caller, AuthError> {
        let user = self.review(token).await?;
        let username = user.username.clone().unwrap_or_default();
        let not_allowed = || AuthError::NotAllowed {
            user: username.clone(),
            node_agent: self.node_agent.username(),
        };
        let account = ServiceAccountName::from_username(&username).ok_or_else(not_allowed)?;
        let state = self.states.borrow();
        let is_node_agent = account == self.node_agent;
        let is_waypoint = state
            .gateway(&account.namespace, &account.name)
            .is_some_and(waypoint::is_waypoint);
        if !is_node_agent && !is_waypoint {
            return Err(not_allowed());
        }
        let pod = bound_pod(&state, &user, &account)?;
        if !is_node_agent {
            return Ok(Caller::Waypoint {
                namespace: account.namespace,
                name: account.name,
            });
        }
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
        match node.filter(|n| !n.is_empty()) {
            Some(node) => Ok(Caller::NodeAgent { node }),
            None => Err(AuthError::Unscheduled { pod: pod_name(pod) }),
        }
    }
}

/// The pod a token is bound to, checked against the controller's view of the cluster.
fn bound_pod<'a>(
    state: &'a ClusterState,
    user: &UserInfo,
    account: &ServiceAccountName,
) -> Result<&'a Pod, AuthError> {
    let claim = |key: &str| {
        user.extra
            .as_ref()?
            .get(key)?
            .first()
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(name), Some(uid)) = (claim(POD_NAME), claim(POD_UID)) else {
        return Err(AuthError::NotBound);
    };
    // A token is bound only to a pod of its own account, so of the account's namespace.
    let key = ObjectRef {
        kind: Kind::Pod,
        namespace: account.namespace.clone(),
        name,
    };
    let Some(Object::Pod(pod)) = state.get(&key) else {
        return Err(AuthError::UnknownPod {
            pod: format!("{}/{}", key.namespace, key.name),
        });
    };
    let actual = pod.metadata.uid.clone().unwrap_or_default();
    if actual != uid {
        return Err(AuthError::PodUidMismatch {
            pod: pod_name(pod),
            claimed: uid,
            actual,
        });
    }
    let runs_as = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into());
    if runs_as != account.name {
        return Err(AuthError::WrongPodAccount {
            pod: pod_name(pod),
            user: account.username(),
            actual: runs_as,
        });
    }
    Ok(pod)
}

fn pod_name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        model::namespace(&pod.metadata),
        model::name(&pod.metadata)
    )
}
