//! The Kubernetes objects the controller reads, the same from a cluster or from YAML files.
//!
//! [`ClusterState`] is the controller's whole input: every object by kind, namespace and name, in
//! sorted maps so that everything derived from it (translation, versions, pushes) is deterministic.
//! Objects are immutable once read and shared through `Arc`, so copying a state or finding what
//! changed between two states is pointer work (see `state.rs`). Sources (`source/`) fill it;
//! `translate/` reads it. Nothing here talks to the network.

pub mod gateway;
pub mod istio;
mod state;
pub mod traffic;

pub use state::{Change, ClusterState};

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// A custom resource: metadata plus a typed spec.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Custom<S> {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
}

pub type Gateway = Custom<gateway::GatewaySpec>;
pub type HttpRoute = Custom<gateway::HttpRouteSpec>;
pub type AuthorizationPolicy = Custom<istio::AuthorizationPolicySpec>;
pub type PeerAuthentication = Custom<istio::PeerAuthenticationSpec>;
pub type DestinationRule = Custom<traffic::DestinationRuleSpec>;
pub type HttpFault = Custom<traffic::HttpFaultSpec>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    ServiceAccount,
    Gateway,
    HttpRoute,
    AuthorizationPolicy,
    PeerAuthentication,
    DestinationRule,
    HttpFault,
}

impl Kind {
    /// The kind for an `apiVersion` + `kind` pair, if the controller reads it.
    pub fn from_type(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Some(match (group, kind) {
            ("", "Namespace") => Kind::Namespace,
            ("", "Node") => Kind::Node,
            ("", "Pod") => Kind::Pod,
            ("", "Service") => Kind::Service,
            ("", "ServiceAccount") => Kind::ServiceAccount,
            ("gateway.networking.k8s.io", "Gateway") => Kind::Gateway,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("security.istio.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("security.istio.io", "PeerAuthentication") => Kind::PeerAuthentication,
            ("networking.istio.io", "DestinationRule") => Kind::DestinationRule,
            ("ambit.dev", "HTTPFault") => Kind::HttpFault,
            _ => return None,
        })
    }

    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::DestinationRule => "DestinationRule",
            Kind::HttpFault => "HTTPFault",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which object: kind, namespace ("" for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of any kind the controller reads. The large core kinds are boxed so the state map
/// does not pay a Pod's size for every ServiceAccount.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    ServiceAccount(ServiceAccount),
    Gateway(Gateway),
    HttpRoute(HttpRoute),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    DestinationRule(DestinationRule),
    HttpFault(HttpFault),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Namespace(_) => Kind::Namespace,
            Object::Node(_) => Kind::Node,
            Object::Pod(_) => Kind::Pod,
            Object::Service(_) => Kind::Service,
            Object::ServiceAccount(_) => Kind::ServiceAccount,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Object::PeerAuthentication(_) => Kind::PeerAuthentication,
            Object::DestinationRule(_) => Kind::DestinationRule,
            Object::HttpFault(_) => Kind::HttpFault,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Gateway(o) => &o.metadata,
            Object::HttpRoute(o) => &o.metadata,
            Object::AuthorizationPolicy(o) => &o.metadata,
            Object::PeerAuthentication(o) => &o.metadata,
            Object::DestinationRule(o) => &o.metadata,
            Object::HttpFault(o) => &o.metadata,
        }
    }

    pub(crate) fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Object::Namespace(o) => &mut o.metadata,
            Object::Node(o) => &mut o.metadata,
            Object::Pod(o) => &mut o.metadata,
            Object::Service(o) => &mut o.metadata,
            Object::ServiceAccount(o) => &mut o.metadata,
            Object::Gateway(o) => &mut o.metadata,
            Object::HttpRoute(o) => &mut o.metadata,
            Object::AuthorizationPolicy(o) => &mut o.metadata,
            Object::PeerAuthentication(o) => &mut o.metadata,
            Object::DestinationRule(o) => &mut o.metadata,
            Object::HttpFault(o) => &mut o.metadata,
        }
    }

    /// Fills in what the API server would: the `default` namespace for namespaced kinds.
    pub fn with_defaults(mut self) -> Self {
        if self.has_defaults() {
            return self;
        }
        let namespaced = self.kind().is_namespaced();
        let meta = self.metadata_mut();
        if namespaced && meta.namespace.as_deref().unwrap_or("").is_empty() {
            meta.namespace = Some("default".to_string());
        }
        if !namespaced {
            meta.namespace = None;
        }
        self
    }

    /// Whether [`Object::with_defaults`] would leave it as it is.
    pub fn has_defaults(&self) -> bool {
        let namespace = self.metadata().namespace.as_deref();
        if self.kind().is_namespaced() {
            namespace.is_some_and(|n| !n.is_empty())
        } else {
            namespace.is_none()
        }
    }

    pub fn object_ref(&self) -> ObjectRef {
        let meta = self.metadata();
        ObjectRef {
            kind: self.kind(),
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// `metadata.labels`, or an empty map.
pub fn labels(meta: &ObjectMeta) -> &BTreeMap<String, String> {
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    meta.labels.as_ref().unwrap_or(&EMPTY)
}

pub fn name(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or("")
}

pub fn namespace(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("")
}
