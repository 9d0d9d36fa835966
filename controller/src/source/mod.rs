//! Where the controller's input comes from: a directory of YAML (standalone, the lab) or the
//! Kubernetes API. Both produce a [`ClusterState`](crate::model::ClusterState); nothing downstream
//! knows which one did.

pub mod kubernetes;
pub mod standalone;
pub mod yaml;
