//! Every way a request can fail in the waypoint, and the one place each becomes a status, an
//! Envoy-style response flag (metrics, access log) and the `x-ambit-reason` header naming why.

use ambit_proto::hbone::REASON_HEADER;
use http::{HeaderValue, Response, StatusCode};

use super::body::{Body, full};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// An authorization policy denied the request.
    #[error("RBAC: access denied: {0}")]
    Denied(String),
    #[error("no route: {0}")]
    NoRoute(String),
    /// The matched rule has no backend (Gateway API: 500).
    #[error("the matched rule has no backend: {0}")]
    NoBackend(String),
    #[error("no healthy endpoint: {0}")]
    NoHealthyUpstream(String),
    #[error("upstream connect failure: {0}")]
    ConnectFailure(String),
    #[error("upstream reset before answering: {0}")]
    Reset(String),
    #[error("upstream request timeout: {0}")]
    Timeout(String),
    /// Circuit breaking: a connection or request limit was reached.
    #[error("upstream overflow: {0}")]
    Overflow(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    /// An abort injected by a fault rule.
    #[error("fault filter abort")]
    FaultAbort(StatusCode),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::NoRoute(_) => StatusCode::NOT_FOUND,
            ProxyError::NoBackend(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoHealthyUpstream(_)
            | ProxyError::ConnectFailure(_)
            | ProxyError::Reset(_)
            | ProxyError::Overflow(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::FaultAbort(status) => *status,
        }
    }

    /// Envoy's response flag, which Istio's metrics and logs carry.
    pub fn flag(&self) -> &'static str {
        match self {
            ProxyError::Denied(_) => "RBAC",
            ProxyError::NoRoute(_) => "NR",
            ProxyError::NoBackend(_) => "NR",
            ProxyError::NoHealthyUpstream(_) => "UH",
            ProxyError::ConnectFailure(_) => "UF",
            ProxyError::Reset(_) => "UC",
            ProxyError::Timeout(_) => "UT",
            ProxyError::Overflow(_) => "UO",
            ProxyError::BadRequest(_) => "DPE",
            ProxyError::FaultAbort(_) => "FI",
        }
    }

    /// The response the client gets. The reason header is for people and `ambit explain`; it
    /// names a policy or an endpoint, never a secret.
    pub fn to_response(&self) -> Response<Body> {
        let reason = self.to_string();
        let mut response = Response::new(full(format!("{reason}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        // Header values must be visible ASCII; anything else is replaced rather than dropped.
        let printable: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii() && !c.is_ascii_control() {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        if let Ok(v) = HeaderValue::from_str(&printable) {
            headers.insert(REASON_HEADER, v);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_names_itself() {
        let denied = ProxyError::Denied("denied by DENY policy shop/no-admin (rule 1)".into());
        let response = denied.to_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(
            response.headers()[REASON_HEADER]
                .to_str()
                .unwrap()
                .contains("shop/no-admin")
        );
        assert_eq!(
            ProxyError::Timeout("x".into()).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            ProxyError::NoRoute("x".into()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
