//! OpenTelemetry traces: one SERVER span per HTTP request, continued from the caller's W3C
//! `traceparent` (`context`, `span`), exported over OTLP/HTTP in batches (`export`). Off unless
//! `--otlp-endpoint` is set; then every request's upstream carries the waypoint's span as its
//! parent. Opaque TCP has no headers to carry a context and gets no span.
//!
//! Nothing here may slow a request or fail it: ids are random numbers, the span goes into a
//! bounded queue with `try_send`, and a full queue drops the span (counted).

pub mod context;
pub mod export;
pub mod span;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::metrics::{Metrics, ReasonLabel};
pub use export::{Endpoint, ExporterHandle};
pub use span::RequestSpan;

/// The OTLP messages the waypoint sends (a wire-compatible subset of opentelemetry-proto).
pub mod otlp {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/opentelemetry.proto.otlp.v1.rs"));
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("--otlp-endpoint {0}")]
    Endpoint(String),
    #[error("{0}")]
    Export(String),
}

/// What `--otlp-*` and `--trace-sampling` asked for.
#[derive(Debug, Clone)]
pub struct TraceSettings {
    pub endpoint: Endpoint,
    /// The share of new traces recorded; a caller's sampling decision always wins.
    pub sampling: f64,
    pub flush_interval: Duration,
    pub queue: usize,
    /// `service.name` of the spans: the waypoint as Istio names a workload, `<name>.<namespace>`.
    pub service_name: String,
    pub namespace: String,
}

/// Starts spans; one per waypoint, shared by every request.
pub struct Tracer {
    sampling: f64,
    queue: mpsc::Sender<otlp::Span>,
    metrics: Arc<Metrics>,
}

impl Tracer {
    /// Starts the exporter task; the handle flushes and stops it on shutdown.
    pub fn start(settings: TraceSettings, metrics: Arc<Metrics>) -> (Arc<Tracer>, ExporterHandle) {
        let (tx, rx) = mpsc::channel(settings.queue);
        let resource = otlp::Resource {
            attributes: vec![
                span::string("service.name", settings.service_name.clone()),
                span::string("k8s.namespace.name", settings.namespace.clone()),
                span::string("telemetry.sdk.name", "ambit-waypoint"),
            ],
        };
        let handle = export::Exporter {
            endpoint: settings.endpoint,
            flush_interval: settings.flush_interval,
            resource,
            metrics: metrics.clone(),
        }
        .spawn(rx);
        let tracer = Tracer {
            sampling: settings.sampling,
            queue: tx,
            metrics,
        };
        (Arc::new(tracer), handle)
    }

    pub fn start_span(&self, headers: &http::HeaderMap) -> RequestSpan {
        RequestSpan::start(headers, self.sampling)
    }

    /// Queues a finished span, or drops it when the exporter is behind.
    pub fn submit(&self, span: otlp::Span) {
        if self.queue.try_send(span).is_err() {
            self.metrics
                .trace_spans_dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full".into(),
                })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        // Nobody reads the queue: the exporter is stuck on a slow collector.
        let (tx, _rx) = mpsc::channel(2);
        let tracer = Tracer {
            sampling: 1.0,
            queue: tx,
            metrics: metrics.clone(),
        };
        for _ in 0..5 {
            let span = tracer.start_span(&http::HeaderMap::new());
            tracer.submit(span.finish("x".into(), Vec::new(), 200, None));
        }
        let dropped = metrics
            .trace_spans_dropped
            .get_or_create(&ReasonLabel {
                reason: "queue_full".into(),
            })
            .get();
        assert_eq!(dropped, 3);
    }
}
