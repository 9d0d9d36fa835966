//! Ambit's control plane, shaped source -> model -> translate -> push:
//!
//! - [`source`]: where objects come from (a watched YAML directory; the Kubernetes API);
//! - [`model`]: the objects themselves and the [`model::ClusterState`] they form;
//! - [`translate`]: the pure function from that state to the mesh's resources;
//! - [`push`]: the incremental config service that streams them to agents and waypoints;
//! - [`ca`]: the mesh CA service, which signs only identities a caller may hold;
//! - [`auth`]: who the caller of either service is (a node agent or a waypoint);
//! - [`reconcile`], [`leader`]: on Kubernetes, a running waypoint for every waypoint Gateway,
//!   written by the one replica that holds the leader Lease.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod leader;
pub mod model;
pub mod pipeline;
pub mod push;
pub mod reconcile;
pub mod source;
pub mod translate;
