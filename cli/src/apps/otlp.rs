//! `ambit app otlp-collector`: the smallest OpenTelemetry collector that shows a lab what a
//! waypoint traced. It takes OTLP/HTTP exports in protobuf (`POST /v1/traces`, what the waypoint
//! sends) and prints each span as one line on stdout:
//!
//! ```text
//! span trace=<32 hex> id=<16 hex> parent=<16 hex, or -> kind=server name="GET /x" status=unset
//!   service="waypoint.demo" url.path="/x" http.response.status_code=200 ...
//! ```
//!
//! (one line; strings quoted, numbers bare; the resource's `service.name` first, then the span's
//! attributes in the order sent). Anything else is refused with the status a collector answers
//! (404 for another path, 415 for JSON or another type, 400 for a body that does not decode), so
//! a misconfigured exporter shows in its own logs. Spans are printed, never kept.

use std::convert::Infallible;
use std::net::SocketAddr;

use ambit_waypoint::trace::otlp;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use tokio::net::TcpListener;

use super::{BindError, listen, say};

/// Bounds one export's body: a waypoint sends batches of at most 512 spans, far below this.
const MAX_EXPORT: usize = 16 * 1024 * 1024;

/// Listens on `addr` and collects until the process ends.
pub async fn run(addr: SocketAddr) -> Result<(), BindError> {
    serve(listen(addr).await?).await;
    Ok(())
}

/// Serves OTLP/HTTP exports on `listener` forever.
pub async fn serve(listener: TcpListener) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            // Out of descriptors or buffers: wait rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        tokio::spawn(async move {
            let service = service_fn(|req| async { Ok::<_, Infallible>(export(req).await) });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn export(req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() != "/v1/traces" {
        return refuse(StatusCode::NOT_FOUND, "only /v1/traces is collected");
    }
    if req.method() != Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "exports are POSTed");
    }
    let protobuf = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/x-protobuf");
    if !protobuf {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf is collected",
        );
    }
    let body = match Limited::new(req.into_body(), MAX_EXPORT).collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return refuse(StatusCode::BAD_REQUEST, &format!("reading the body: {err}")),
    };
    let request = match otlp::ExportTraceServiceRequest::decode(body) {
        Ok(request) => request,
        Err(err) => return refuse(StatusCode::BAD_REQUEST, &format!("not an export: {err}")),
    };
    for line in span_lines(&request) {
        say(&line);
    }
    let answer = otlp::ExportTraceServiceResponse::default().encode_to_vec();
    let mut response = Response::new(Full::new(Bytes::from(answer)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-protobuf"),
    );
    response
}

fn refuse(status: StatusCode, why: &str) -> Response<Full<Bytes>> {
    say(&format!("refused {status}: {why}"));
    let mut response = Response::new(Full::new(Bytes::from(format!("{why}\n"))));
    *response.status_mut() = status;
    response
}

/// One line per span of `request` (see the module docs).
pub fn span_lines(request: &otlp::ExportTraceServiceRequest) -> Vec<String> {
    let mut lines = Vec::new();
    for resource_spans in &request.resource_spans {
        let service = resource_spans
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .map_or_else(|| "\"\"".to_owned(), value);
        for span in resource_spans.scope_spans.iter().flat_map(|s| &s.spans) {
            let parent = if span.parent_span_id.is_empty() {
                "-".to_owned()
            } else {
                hex(&span.parent_span_id)
            };
            let kind = otlp::span::SpanKind::try_from(span.kind)
                .map_or("unknown", |k| k.as_str_name())
                .trim_start_matches("SPAN_KIND_")
                .to_ascii_lowercase();
            let status = span
                .status
                .as_ref()
                .and_then(|s| otlp::status::StatusCode::try_from(s.code).ok())
                .map_or("unset", |c| c.as_str_name())
                .trim_start_matches("STATUS_CODE_")
                .to_ascii_lowercase();
            let mut line = format!(
                "span trace={} id={} parent={parent} kind={kind} name={:?} status={status} \
                 service={service}",
                hex(&span.trace_id),
                hex(&span.span_id),
                span.name,
            );
            for attribute in &span.attributes {
                line.push_str(&format!(" {}={}", attribute.key, value(attribute)));
            }
            lines.push(line);
        }
    }
    lines
}

/// An attribute's value as printed: strings quoted, everything else bare.
fn value(attribute: &otlp::KeyValue) -> String {
    use otlp::any_value::Value;
    match attribute.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => format!("{s:?}"),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        None => "\"\"".to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn string(key: &str, value: &str) -> otlp::KeyValue {
        otlp::KeyValue {
            key: key.into(),
            value: Some(otlp::AnyValue {
                value: Some(otlp::any_value::Value::StringValue(value.into())),
            }),
        }
    }

    fn export_of(span: otlp::Span) -> otlp::ExportTraceServiceRequest {
        otlp::ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(otlp::Resource {
                    attributes: vec![string("service.name", "waypoint.demo")],
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    spans: vec![span],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_span_is_one_line_with_its_ids_resource_and_attributes() {
        let span = otlp::Span {
            trace_id: vec![0xab; 16],
            span_id: vec![0x01; 8],
            parent_span_id: vec![0x02; 8],
            name: "GET /x".into(),
            kind: otlp::span::SpanKind::Server as i32,
            status: Some(otlp::Status {
                code: otlp::status::StatusCode::Error as i32,
                message: "HTTP 503".into(),
            }),
            attributes: vec![
                string("url.path", "/x"),
                otlp::KeyValue {
                    key: "http.response.status_code".into(),
                    value: Some(otlp::AnyValue {
                        value: Some(otlp::any_value::Value::IntValue(503)),
                    }),
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            span_lines(&export_of(span)),
            [format!(
                "span trace={} id=0101010101010101 parent=0202020202020202 kind=server \
                 name=\"GET /x\" status=error service=\"waypoint.demo\" url.path=\"/x\" \
                 http.response.status_code=503",
                "ab".repeat(16)
            )]
        );
        let root = otlp::Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            ..Default::default()
        };
        let line = &span_lines(&export_of(root))[0];
        assert!(line.contains(" parent=- kind=unspecified "), "{line}");
        assert!(line.contains(" status=unset "), "{line}");
    }

    /// POSTs `body` with `content_type` to `path` on a collector; the status it answers.
    async fn post(addr: SocketAddr, path: &str, content_type: &str, body: Vec<u8>) -> StatusCode {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let request = Request::post(path)
            .header(header::HOST, addr.to_string())
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        send.send_request(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn exports_are_taken_in_protobuf_on_v1_traces_only() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let export = export_of(otlp::Span::default()).encode_to_vec();
        let protobuf = "application/x-protobuf";
        assert_eq!(
            post(addr, "/v1/traces", protobuf, export.clone()).await,
            StatusCode::OK
        );
        assert_eq!(
            post(addr, "/v1/metrics", protobuf, export.clone()).await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            post(addr, "/v1/traces", "application/json", export).await,
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            post(addr, "/v1/traces", protobuf, b"\xff\xff".to_vec()).await,
            StatusCode::BAD_REQUEST
        );
    }
}
