//! One compiled HTTPRoute rule and its matches: regexes built, durations and statuses checked,
//! so a request never meets a config error. Compiling is also how config is validated: a route
//! that does not compile is NACKed (see `state`), never half-applied.

use std::time::Duration;

use crate::api::{self, filter, path_match, path_rewrite, value_match};
use http::{HeaderMap, HeaderName, Method};
use regex::Regex;

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules[{rule}]: {reason}")]
    Invalid { rule: usize, reason: String },
}

/// What a request is matched on.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(String),
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => e == value,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Match {
    pub path: PathMatch,
    pub headers: Vec<(HeaderName, ValueMatch)>,
    pub query: Vec<(String, ValueMatch)>,
    pub method: Option<Method>,
}

impl Match {
    /// A rule without matches matches everything (PathPrefix "/").
    pub fn everything() -> Self {
        Match {
            path: PathMatch::Prefix("/".into()),
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let path = match &self.path {
            PathMatch::Exact(p) => req.path == p,
            PathMatch::Prefix(p) => prefix_matches(p, req.path),
            PathMatch::Regex(r) => r.is_match(req.path),
        };
        path && self.method.as_ref().is_none_or(|m| m == req.method)
            && self.headers.iter().all(|(name, m)| {
                req.headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| m.matches(v))
            })
            && self
                .query
                .iter()
                .all(|(name, m)| query_values(req.query, name).any(|v| m.matches(&v)))
    }

    /// Gateway API precedence, highest first: exact path, then the longest prefix (regexes
    /// after prefixes: the spec leaves them to the implementation), then a method, then the
    /// most header matches, then the most query matches.
    pub fn precedence(&self) -> (u8, usize, bool, usize, usize) {
        let (rank, len) = match &self.path {
            PathMatch::Exact(p) => (3, p.len()),
            PathMatch::Prefix(p) => (2, p.len()),
            PathMatch::Regex(r) => (1, r.as_str().len()),
        };
        (
            rank,
            len,
            self.method.is_some(),
            self.headers.len(),
            self.query.len(),
        )
    }
}

/// "/foo" matches "/foo", "/foo/" and "/foo/bar", not "/foobar" (segment-wise, as Gateway API).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The decoded values of query parameter `name`.
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = String> + 'a {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .filter_map(move |pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.replace('+', " "))
        })
}

/// Which failures are retried.
#[derive(Debug, Clone, Default)]
pub struct Retry {
    pub attempts: u32,
    pub codes: Vec<u16>,
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub backoff: Duration,
}

impl Retry {
    pub fn retries_status(&self, status: u16) -> bool {
        self.codes.contains(&status)
            || (self.on_5xx && (500..600).contains(&status))
            || (self.on_gateway_error && matches!(status, 502..=504))
    }
}

/// One rule, ready to serve.
#[derive(Debug, Default)]
pub struct Rule {
    /// "<namespace>/<name>" of the route; empty for the default (no route configured).
    pub route: String,
    pub index: usize,
    pub request_headers: Vec<api::HeaderModifier>,
    pub response_headers: Vec<api::HeaderModifier>,
    pub redirect: Option<api::Redirect>,
    pub rewrite: Option<api::Rewrite>,
    pub mirrors: Vec<api::Mirror>,
    pub backends: Vec<api::BackendRef>,
    pub request_timeout: Option<Duration>,
    pub per_try_timeout: Option<Duration>,
    pub retry: Option<Retry>,
    pub fault: Option<api::FaultInjection>,
}

impl Rule {
    /// No route: the request goes to the service it was addressed to, on its port.
    pub fn to_service(namespace: &str, hostname: &str) -> Self {
        Rule {
            backends: vec![api::BackendRef {
                namespace: namespace.into(),
                hostname: hostname.into(),
                port: 0,
                weight: 1,
            }],
            ..Rule::default()
        }
    }

    /// For logs: "<route> rule <n>", or "default".
    pub fn describe(&self) -> String {
        if self.route.is_empty() {
            "default".into()
        } else {
            format!("{} rule {}", self.route, self.index + 1)
        }
    }
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("regex {pattern:?}: {e}"))
}

pub fn compile(
    route: &str,
    index: usize,
    spec: &api::RouteRule,
) -> Result<(Rule, Vec<Match>), RuleError> {
    let invalid = |reason: String| RuleError::Invalid {
        rule: index,
        reason,
    };
    let mut rule = Rule {
        route: route.to_string(),
        index,
        backends: spec.backends.clone(),
        request_timeout: spec.timeouts.as_ref().and_then(|t| ms(t.request_ms)),
        per_try_timeout: spec
            .timeouts
            .as_ref()
            .and_then(|t| ms(t.backend_request_ms)),
        fault: spec.fault,
        ..Rule::default()
    };
    for f in &spec.filters {
        match &f.kind {
            Some(filter::Kind::RequestHeaderModifier(m)) => {
                check_headers(m).map_err(invalid)?;
                rule.request_headers.push(m.clone());
            }
            Some(filter::Kind::ResponseHeaderModifier(m)) => {
                check_headers(m).map_err(invalid)?;
                rule.response_headers.push(m.clone());
            }
            Some(filter::Kind::RequestRedirect(r)) => {
                if !matches!(r.status_code, 0 | 301 | 302 | 303 | 307 | 308) {
                    return Err(invalid(format!("redirect status {}", r.status_code)));
                }
                rule.redirect = Some(r.clone());
            }
            Some(filter::Kind::UrlRewrite(r)) => rule.rewrite = Some(r.clone()),
            Some(filter::Kind::RequestMirror(m)) => {
                if m.backend.is_none() {
                    return Err(invalid("a mirror needs a backend".into()));
                }
                rule.mirrors.push(m.clone());
            }
            None => return Err(invalid("an empty filter".into())),
        }
    }
    if let Some(fault) = &spec.fault
        && let Some(abort) = &fault.abort
        && !(200..600).contains(&abort.http_status)
    {
        return Err(invalid(format!("abort status {}", abort.http_status)));
    }
    if let Some(r) = &spec.retry {
        let mut retry = Retry {
            attempts: r.attempts,
            backoff: ms(r.backoff_ms).unwrap_or(Duration::from_millis(25)),
            ..Retry::default()
        };
        for code in &r.codes {
            match u16::try_from(*code) {
                Ok(c) if (400..600).contains(&c) => retry.codes.push(c),
                _ => return Err(invalid(format!("retry code {code}"))),
            }
        }
        for on in &r.retry_on {
            match api::RetryOn::try_from(*on) {
                Ok(api::RetryOn::RetryOn5xx) => retry.on_5xx = true,
                Ok(api::RetryOn::GatewayError) => retry.on_gateway_error = true,
                Ok(api::RetryOn::ConnectFailure) => retry.on_connect_failure = true,
                Ok(api::RetryOn::Reset) => retry.on_reset = true,
                _ => return Err(invalid(format!("retry_on {on}"))),
            }
        }
        if r.codes.is_empty() && r.retry_on.is_empty() {
            retry.on_connect_failure = true;
            retry.on_reset = true;
            retry.on_gateway_error = true;
        }
        rule.retry = Some(retry);
    }
    let mut matches = Vec::new();
    for m in &spec.matches {
        matches.push(compile_match(m).map_err(invalid)?);
    }
    if matches.is_empty() {
        matches.push(Match::everything());
    }
    let prefix_rewrite = rule
        .rewrite
        .as_ref()
        .and_then(|r| r.path.as_ref())
        .or(rule.redirect.as_ref().and_then(|r| r.path.as_ref()))
        .is_some_and(|p| matches!(p.kind, Some(path_rewrite::Kind::ReplacePrefixMatch(_))));
    if prefix_rewrite
        && matches
            .iter()
            .any(|m| !matches!(m.path, PathMatch::Prefix(_)))
    {
        return Err(invalid(
            "ReplacePrefixMatch needs every match to be a path prefix".into(),
        ));
    }
    Ok((rule, matches))
}

fn check_headers(m: &api::HeaderModifier) -> Result<(), String> {
    for h in m.set.iter().chain(&m.add) {
        HeaderName::try_from(h.name.as_str()).map_err(|_| format!("header name {:?}", h.name))?;
        http::HeaderValue::try_from(h.value.as_str())
            .map_err(|_| format!("header value {:?}", h.value))?;
    }
    for name in &m.remove {
        HeaderName::try_from(name.as_str()).map_err(|_| format!("header name {name:?}"))?;
    }
    Ok(())
}

fn compile_match(m: &api::RouteMatch) -> Result<Match, String> {
    let path = match m.path.as_ref().and_then(|p| p.kind.as_ref()) {
        None => PathMatch::Prefix("/".into()),
        Some(path_match::Kind::Exact(p)) => PathMatch::Exact(p.clone()),
        Some(path_match::Kind::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(path_match::Kind::Regex(r)) => PathMatch::Regex(anchored(r)?),
    };
    let value = |v: &api::ValueMatch| -> Result<ValueMatch, String> {
        match &v.kind {
            Some(value_match::Kind::Exact(e)) => Ok(ValueMatch::Exact(e.clone())),
            Some(value_match::Kind::Regex(r)) => Ok(ValueMatch::Regex(anchored(r)?)),
            None => Err(format!("match on {:?} has no value", v.name)),
        }
    };
    let mut headers = Vec::new();
    for h in &m.headers {
        let name = HeaderName::try_from(h.name.as_str())
            .map_err(|_| format!("header name {:?}", h.name))?;
        headers.push((name, value(h)?));
    }
    let mut query = Vec::new();
    for q in &m.query_params {
        query.push((q.name.clone(), value(q)?));
    }
    let method = match m.method.as_str() {
        "" => None,
        name => Some(Method::from_bytes(name.as_bytes()).map_err(|_| format!("method {name:?}"))?),
    };
    Ok(Match {
        path,
        headers,
        query,
        method,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api", "/api/v1"));
        assert!(prefix_matches("/api/", "/api/v1"));
        assert!(!prefix_matches("/api", "/apiary"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn query_values_are_found_by_exact_name() {
        let q = Some("a=1&version=v2&b");
        assert_eq!(query_values(q, "version").collect::<Vec<_>>(), ["v2"]);
        assert_eq!(query_values(q, "b").collect::<Vec<_>>(), [""]);
        assert_eq!(query_values(q, "vers").count(), 0);
    }

    #[test]
    fn bad_regexes_and_statuses_are_refused() {
        let rule = api::RouteRule {
            matches: vec![api::RouteMatch {
                path: Some(api::PathMatch {
                    kind: Some(path_match::Kind::Regex("([".into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(compile("ns/r", 0, &rule).is_err());
        let rule = api::RouteRule {
            fault: Some(api::FaultInjection {
                abort: Some(api::FaultAbort {
                    http_status: 99,
                    percentage: 100.0,
                }),
                delay: None,
            }),
            ..Default::default()
        };
        assert!(compile("ns/r", 0, &rule).is_err());
    }
}
