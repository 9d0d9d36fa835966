//! One request's span: decided when the request arrives (continue the caller's trace or start
//! one, sampled or not), propagated upstream as the parent of whatever the backend does, and
//! turned into an OTLP span when the request's record finishes.
//!
//! The span is SERVER kind: the waypoint is a hop of its own in the trace, as Envoy's docs
//! recommend for gateways. (Istio's Envoy gateways emit a lone CLIENT span, istio/istio#55637,
//! which tools that look for server spans handle badly.)

use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderValue};
use rand::Rng;

use super::context::{self, TRACEPARENT, TRACESTATE, TraceParent};
use super::otlp;

pub struct RequestSpan {
    /// Ours: the caller's trace id (or a new one) and our own span id.
    pub context: TraceParent,
    pub parent: Option<[u8; 8]>,
    /// The caller's vendor state, passed on untouched (we add no entry of our own).
    pub tracestate: Option<HeaderValue>,
    pub start: SystemTime,
}

impl RequestSpan {
    /// Continues a valid incoming `traceparent`, honouring its sampled flag; otherwise starts a
    /// new trace sampled at `ratio`. A malformed header (or more than one) is not an error to the
    /// client: the waypoint starts a trace of its own, as the W3C spec asks.
    pub fn start(headers: &HeaderMap, ratio: f64) -> RequestSpan {
        let mut values = headers.get_all(TRACEPARENT).iter();
        let incoming = match (values.next(), values.next()) {
            (Some(v), None) => TraceParent::parse(v.as_bytes()).ok(),
            _ => None,
        };
        let span_id = context::new_span_id();
        let start = SystemTime::now();
        match incoming {
            Some(parent) => RequestSpan {
                context: TraceParent { span_id, ..parent },
                parent: Some(parent.span_id),
                tracestate: tracestate(headers),
                start,
            },
            // Without a valid traceparent a tracestate means nothing and is dropped.
            None => RequestSpan {
                context: TraceParent {
                    trace_id: context::new_trace_id(),
                    span_id,
                    sampled: ratio >= 1.0 || (ratio > 0.0 && rand::rng().random_bool(ratio)),
                },
                parent: None,
                tracestate: None,
                start,
            },
        }
    }

    pub fn sampled(&self) -> bool {
        self.context.sampled
    }

    /// Rewrites the upstream request's trace headers: our span is the backend's parent. Sent
    /// for unsampled traces too, so every later hop makes the same sampling decision.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let value = HeaderValue::from_str(&self.context.to_header()).expect("hex is a header");
        headers.insert(TRACEPARENT, value);
        match &self.tracestate {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }

    /// The finished span in OTLP form. `grpc_status` is the call's status when it was gRPC.
    pub fn finish(
        self,
        name: String,
        attributes: Vec<otlp::KeyValue>,
        status: u16,
        grpc_status: Option<u16>,
    ) -> otlp::Span {
        // OTel's conventions for server spans: HTTP 5xx is an error of the server side (4xx is
        // the client's and leaves the status unset); for gRPC, the codes that mean the server
        // failed, whatever the HTTP status (a failed call is an HTTP 200).
        let grpc_error = grpc_status.filter(|c| GRPC_SERVER_ERRORS.contains(c));
        let message = match grpc_error {
            Some(code) => Some(format!("gRPC status {code}")),
            None => (status >= 500).then(|| format!("HTTP {status}")),
        };
        otlp::Span {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            trace_state: self
                .tracestate
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            parent_span_id: self.parent.map(|p| p.to_vec()).unwrap_or_default(),
            flags: u32::from(self.context.sampled),
            name,
            kind: otlp::span::SpanKind::Server as i32,
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(SystemTime::now()),
            attributes,
            status: message.map(|message| otlp::Status {
                message,
                code: otlp::status::StatusCode::Error as i32,
            }),
        }
    }
}

/// UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_ERRORS: [u16; 6] = [2, 4, 12, 13, 14, 15];

/// Several `tracestate` headers are one list (RFC 9110 field combination).
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let parts: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if parts.is_empty() {
        return None;
    }
    HeaderValue::from_str(&parts.join(",")).ok()
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

pub fn string(key: &str, value: impl Into<String>) -> otlp::KeyValue {
    attribute(key, otlp::any_value::Value::StringValue(value.into()))
}

pub fn int(key: &str, value: i64) -> otlp::KeyValue {
    attribute(key, otlp::any_value::Value::IntValue(value))
}

fn attribute(key: &str, value: otlp::any_value::Value) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.into(),
        value: Some(otlp::AnyValue { value: Some(value) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn a_grpc_call_the_server_failed_is_an_error_though_http_says_200() {
        let status = |grpc: u16| {
            RequestSpan::start(&HeaderMap::new(), 1.0)
                .finish("s".into(), Vec::new(), 200, Some(grpc))
                .status
                .map(|s| s.message)
        };
        assert_eq!(status(14).as_deref(), Some("gRPC status 14"), "UNAVAILABLE");
        assert_eq!(status(5), None, "NOT_FOUND is the caller's");
        assert_eq!(status(0), None);
    }

    #[test]
    fn a_valid_parent_is_continued_with_our_span_id() {
        let span = RequestSpan::start(
            &headers(&[
                (TRACEPARENT, INCOMING),
                (TRACESTATE, "a=1"),
                (TRACESTATE, "b=2"),
            ]),
            0.0,
        );
        assert_eq!(
            context::to_hex(&span.context.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            span.parent.map(|p| context::to_hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        // The caller sampled it: that wins over our ratio of 0.
        assert!(span.sampled());
        let mut up = HeaderMap::new();
        span.inject(&mut up);
        let sent = TraceParent::parse(up[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(sent.trace_id, span.context.trace_id);
        assert_eq!(sent.span_id, span.context.span_id);
        assert_ne!(sent.span_id, span.parent.unwrap());
        assert_eq!(up[TRACESTATE], "a=1,b=2");
    }

    #[test]
    fn an_unsampled_parent_stays_unsampled_even_at_ratio_1() {
        let unsampled = INCOMING.replace("-01", "-00");
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_str(&unsampled).unwrap());
        assert!(!RequestSpan::start(&h, 1.0).sampled());
    }

    #[test]
    fn malformed_or_repeated_headers_start_a_new_trace_without_tracestate() {
        for h in [
            headers(&[(
                TRACEPARENT,
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )]),
            headers(&[(TRACEPARENT, INCOMING), (TRACEPARENT, INCOMING)]),
            headers(&[(TRACESTATE, "a=1")]),
        ] {
            let span = RequestSpan::start(&h, 1.0);
            assert!(span.parent.is_none());
            assert_ne!(
                context::to_hex(&span.context.trace_id),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            );
            assert!(span.sampled());
            let mut up = h.clone();
            span.inject(&mut up);
            assert!(up.get(TRACESTATE).is_none());
            assert_eq!(up.get_all(TRACEPARENT).iter().count(), 1);
        }
    }

    #[test]
    fn new_traces_follow_the_ratio_at_its_ends() {
        let none = HeaderMap::new();
        assert!((0..100).all(|_| RequestSpan::start(&none, 1.0).sampled()));
        assert!((0..100).all(|_| !RequestSpan::start(&none, 0.0).sampled()));
    }

    #[test]
    fn a_5xx_is_an_error_and_a_4xx_is_not() {
        let span = || RequestSpan::start(&HeaderMap::new(), 1.0);
        let failed = span().finish("x".into(), Vec::new(), 503, None);
        assert_eq!(
            failed.status.unwrap().code,
            otlp::status::StatusCode::Error as i32
        );
        assert!(
            span()
                .finish("x".into(), Vec::new(), 404, None)
                .status
                .is_none()
        );
        let ok = span().finish("x".into(), Vec::new(), 200, None);
        assert_eq!(ok.kind, otlp::span::SpanKind::Server as i32);
        assert!(ok.end_time_unix_nano >= ok.start_time_unix_nano);
        assert!(ok.parent_span_id.is_empty());
    }
}
