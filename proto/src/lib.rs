//! Ambit's wire protocols, shared by the controller, the node agents and the waypoints:
//!
//! - [`api`]: the protobuf messages and gRPC services (config discovery, certificates);
//! - [`authz`]: evaluating authorization policies, the same for node agents and waypoints;
//! - [`identity`]: SPIFFE workload identities;
//! - [`mesh`]: a proxy's indexed view of the config it was sent;
//! - [`certs`]: certificates from the mesh CA, renewed before they expire;
//! - [`tls`]: SPIFFE mTLS configurations and the certificate authority's signing half;
//! - [`grpc`]: gRPC with the control plane over SPIFFE-verified TLS;
//! - [`hbone`]: HBONE, mTLS HTTP/2 CONNECT tunnels on port 15008, wire-compatible with Istio;
//! - [`relay`]: splicing two streams with half-close;
//! - [`routes`]: HTTP routes compiled and searched in Gateway API order (waypoints; the controller
//!   validates with the same compiler);
//! - [`drain`]: graceful shutdown shared by every server;
//! - [`xds`]: the config-discovery client (subscribe, ACK/NACK, reconnect, resume).
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod certs;
pub mod drain;
pub mod grpc;
pub mod hbone;
pub mod identity;
pub mod mesh;
pub mod net;
pub mod relay;
pub mod routes;
pub mod settings;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
pub mod xds;

/// Generated protobuf types and gRPC stubs (package `ambit.v1`).
pub mod api {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("ambit.v1");

    /// Type URLs of the resources served over [`config_discovery_service_server`].
    pub mod type_url {
        pub const WORKLOAD: &str = "type.ambit.dev/ambit.v1.Workload";
        pub const SERVICE: &str = "type.ambit.dev/ambit.v1.Service";
        pub const AUTHORIZATION: &str = "type.ambit.dev/ambit.v1.Authorization";
        /// HTTP routes for waypoints (Gateway API HTTPRoute), named "<namespace>/<name>".
        pub const ROUTE: &str = "type.ambit.dev/ambit.v1.Route";
        /// Per-service traffic policies for waypoints (Istio DestinationRule), "<namespace>/<name>".
        pub const BACKEND_POLICY: &str = "type.ambit.dev/ambit.v1.BackendPolicy";
    }
}

pub use identity::Identity;
