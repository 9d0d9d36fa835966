//! Sending finished spans to an OTLP/HTTP collector: `POST <endpoint>/v1/traces` with a
//! protobuf `ExportTraceServiceRequest`, from one background task.
//!
//! Requests never wait for the collector: a span goes into a bounded queue or, when the queue
//! is full, is dropped and counted (`ambit_waypoint_trace_spans_dropped_total`). The task sends
//! a batch when it has `MAX_BATCH` spans, on every flush interval, and once more on shutdown.
//! A failed export is logged and its spans counted as dropped, not retried: the queue behind it
//! keeps filling, and retrying old spans would only make newer ones be dropped instead.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::{TraceError, otlp};
use crate::metrics::{Metrics, ReasonLabel};

/// OTel's batch span processor default (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
pub const MAX_BATCH: usize = 512;

/// How long one export (connect, send, answer) may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans go: an `http://host:port[/base]` endpoint, checked once at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, for connecting and for the Host header.
    pub authority: String,
    /// The base path with `/v1/traces` appended (OTLP/HTTP's signal path).
    pub uri: Uri,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, TraceError> {
        let bad = |why: &str| TraceError::Endpoint(format!("{s:?}: {why}"));
        let uri: Uri = s.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(bad(
                    "https is not supported; send to a collector (or agent) reachable over http",
                ));
            }
            _ => return Err(bad("must be http://host:port")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.host().is_empty() || authority.as_str().contains('@') {
            return Err(bad("must be http://host:port"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not allowed"));
        }
        let authority = format!(
            "{}:{}",
            authority.host(),
            authority.port_u16().unwrap_or(80)
        );
        let base = uri.path().trim_end_matches('/');
        let uri = format!("http://{authority}{base}/v1/traces")
            .parse()
            .map_err(|e| bad(&format!("{e}")))?;
        Ok(Endpoint { authority, uri })
    }
}

/// What the background task needs; `Tracer` holds the other end of `queue`.
pub struct Exporter {
    pub endpoint: Endpoint,
    pub flush_interval: Duration,
    pub resource: otlp::Resource,
    pub metrics: std::sync::Arc<Metrics>,
}

/// Stops the background task after a last flush.
pub struct ExporterHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ExporterHandle {
    /// Sends what is queued, then returns; gives up after `timeout` (a collector that hangs must
    /// not hold up the process's exit).
    pub async fn shutdown(self, timeout: Duration) {
        let _ = self.stop.send(());
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            warn!("trace export did not finish within {timeout:?}; queued spans are lost");
        }
    }
}

impl Exporter {
    pub fn spawn(self, queue: mpsc::Receiver<otlp::Span>) -> ExporterHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(self.run(queue, stopped));
        ExporterHandle { stop, task }
    }

    async fn run(self, mut queue: mpsc::Receiver<otlp::Span>, mut stop: oneshot::Receiver<()>) {
        let mut client = Client::new(self.endpoint.clone());
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut tick = tokio::time::interval(self.flush_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                span = queue.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= MAX_BATCH {
                            self.export(&mut client, &mut batch).await;
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.export(&mut client, &mut batch).await,
                _ = &mut stop => break,
            }
        }
        // Shutdown: whatever is still queued goes out too.
        queue.close();
        while let Some(span) = queue.recv().await {
            batch.push(span);
            if batch.len() >= MAX_BATCH {
                self.export(&mut client, &mut batch).await;
            }
        }
        self.export(&mut client, &mut batch).await;
    }

    async fn export(&self, client: &mut Client, batch: &mut Vec<otlp::Span>) {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        let request = otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "ambit-waypoint".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let body = Bytes::from(request.encode_to_vec());
        match tokio::time::timeout(EXPORT_TIMEOUT, client.post(body)).await {
            Ok(Ok(())) => {
                self.metrics.trace_spans_exported.inc_by(n);
                debug!(spans = n, "exported spans");
            }
            Ok(Err(e)) => self.failed(client, n, e),
            Err(_) => self.failed(client, n, TraceError::Export("timed out".into())),
        }
    }

    fn failed(&self, client: &mut Client, n: u64, e: TraceError) {
        // The connection may be in any state now: the next export starts a fresh one.
        client.conn = None;
        warn!(endpoint = %self.endpoint.uri, spans = n, "trace export failed: {e}");
        self.metrics
            .trace_spans_dropped
            .get_or_create(&ReasonLabel {
                reason: "export_failed".into(),
            })
            .inc_by(n);
    }
}

/// One kept-alive HTTP/1.1 connection to the collector, opened again when it closes.
struct Client {
    endpoint: Endpoint,
    conn: Option<http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(endpoint: Endpoint) -> Client {
        Client {
            endpoint,
            conn: None,
        }
    }

    async fn connection(&mut self) -> Result<&mut http1::SendRequest<Full<Bytes>>, TraceError> {
        if self.conn.as_ref().is_none_or(|c| c.is_closed()) {
            let tcp = TcpStream::connect(&self.endpoint.authority)
                .await
                .map_err(|e| TraceError::Export(format!("connect: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let (sender, conn) = http1::handshake(TokioIo::new(tcp))
                .await
                .map_err(|e| TraceError::Export(format!("handshake: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    debug!("collector connection ended: {e}");
                }
            });
            self.conn = Some(sender);
        }
        Ok(self.conn.as_mut().expect("just set"))
    }

    async fn post(&mut self, body: Bytes) -> Result<(), TraceError> {
        let request = Request::post(self.endpoint.uri.clone())
            .header(header::HOST, &self.endpoint.authority)
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(body))
            .map_err(|e| TraceError::Export(e.to_string()))?;
        let conn = self.connection().await?;
        conn.ready()
            .await
            .map_err(|e| TraceError::Export(format!("connection: {e}")))?;
        let response = conn
            .send_request(request)
            .await
            .map_err(|e| TraceError::Export(format!("send: {e}")))?;
        let status = response.status();
        // Read the answer to the end so the connection can carry the next batch.
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| TraceError::Export(format!("response: {e}")))?
            .to_bytes();
        if status != StatusCode::OK {
            return Err(TraceError::Export(format!(
                "the collector answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            )));
        }
        if let Ok(answer) = otlp::ExportTraceServiceResponse::decode(body)
            && let Some(partial) = answer.partial_success
            && partial.rejected_spans > 0
        {
            warn!(
                rejected = partial.rejected_spans,
                "the collector rejected spans: {}", partial.error_message
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_get_the_traces_path_and_a_port() {
        let e = Endpoint::parse("http://collector:4318").unwrap();
        assert_eq!(e.authority, "collector:4318");
        assert_eq!(e.uri.to_string(), "http://collector:4318/v1/traces");
        let e = Endpoint::parse("http://10.0.0.1/otlp/").unwrap();
        assert_eq!(e.authority, "10.0.0.1:80");
        assert_eq!(e.uri.to_string(), "http://10.0.0.1:80/otlp/v1/traces");
    }

    #[test]
    fn bad_endpoints_are_refused() {
        for bad in [
            "https://collector:4318",
            "collector:4318",
            "http://",
            "http://collector:4318/?x=1",
            "http://user@collector:4318",
            "not a url",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
