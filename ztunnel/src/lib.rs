//! The node agent: one per node, in the node's network namespace. It follows the controller's
//! config (`state`), redirects its captured pods' TCP (`capture`), holds their certificates
//! (`certs`), and carries their traffic (`proxy`) as HBONE between nodes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod capture;
pub mod certs;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod state;
