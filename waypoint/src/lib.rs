//! Ambit's waypoint: the shared L7 proxy that workloads opt into.
//!
//! - [`config`]: flags, defaults and their validation;
//! - [`state`]: the config from the controller, with routes validated and compiled (`ambit_proto::routes`);
//! - [`proxy`]: the data path, tunnel by tunnel and request by request;
//! - [`metrics`], [`admin`]: Istio's request metrics, readiness, the config dump, log level;
//! - [`trace`]: OpenTelemetry spans per request, W3C `traceparent` propagation, OTLP export;
//! - [`app`]: wiring and shutdown.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod metrics;
pub mod proxy;
pub mod state;
pub mod trace;
