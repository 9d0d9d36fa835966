//! HTTPRoute filters that rewrite a request or answer it without a backend: header
//! modification, URL rewrite, redirect. Pure functions of the request and the rule.

use ambit_proto::api::{self, path_rewrite};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::body::{Body, empty};
use ambit_proto::routes::Match;
use ambit_proto::routes::rule::PathMatch;

/// Applies set, then add, then remove (Gateway API's order). Names and values were checked when
/// the route was compiled.
pub fn modify_headers(headers: &mut HeaderMap, m: &api::HeaderModifier) {
    let pair = |h: &api::Header| {
        Some((
            HeaderName::try_from(h.name.as_str()).ok()?,
            HeaderValue::try_from(h.value.as_str()).ok()?,
        ))
    };
    for (name, value) in m.set.iter().filter_map(pair) {
        headers.insert(name, value);
    }
    for (name, value) in m.add.iter().filter_map(pair) {
        headers.append(name, value);
    }
    for name in &m.remove {
        headers.remove(name.as_str());
    }
}

/// The new path for `path` under `rewrite`, given the match that selected the rule.
pub fn rewrite_path(path: &str, rewrite: &api::PathRewrite, matched: &Match) -> String {
    match &rewrite.kind {
        Some(path_rewrite::Kind::ReplaceFullPath(p)) => p.clone(),
        Some(path_rewrite::Kind::ReplacePrefixMatch(replacement)) => {
            let PathMatch::Prefix(prefix) = &matched.path else {
                return path.to_string();
            };
            let rest = path.get(prefix.trim_end_matches('/').len()..).unwrap_or("");
            let base = replacement.trim_end_matches('/');
            match (base.is_empty(), rest.is_empty()) {
                (true, true) => "/".into(),
                (true, false) => rest.to_string(),
                (false, _) => format!("{base}{rest}"),
            }
        }
        None => path.to_string(),
    }
}

/// `path` with `query` appended, as a request target.
pub fn path_and_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    }
}

/// The redirect response for a request to `host` `path` `query`.
pub fn redirect(
    r: &api::Redirect,
    host: &str,
    path: &str,
    query: Option<&str>,
    matched: &Match,
) -> Response<Body> {
    let (req_host, req_port) = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty() => (h, Some(p)),
        _ => (host, None),
    };
    let scheme = if r.scheme.is_empty() {
        "http"
    } else {
        r.scheme.as_str()
    };
    let hostname = if r.hostname.is_empty() {
        req_host
    } else {
        r.hostname.as_str()
    };
    // A changed scheme drops the request's port (it belonged to the old scheme).
    let port = match (r.port, r.scheme.is_empty()) {
        (0, true) => req_port.map(str::to_string),
        (0, false) => None,
        (p, _) => Some(p.to_string()),
    }
    .filter(|p| !matches!((scheme, p.as_str()), ("http", "80") | ("https", "443")));
    let new_path = match &r.path {
        Some(rewrite) => rewrite_path(path, rewrite, matched),
        None => path.to_string(),
    };
    let location = format!(
        "{scheme}://{hostname}{}{}",
        port.map(|p| format!(":{p}")).unwrap_or_default(),
        path_and_query(&new_path, query)
    );
    let status = match r.status_code {
        0 => StatusCode::FOUND,
        s => StatusCode::from_u16(s as u16).unwrap_or(StatusCode::FOUND),
    };
    let mut response = Response::new(empty());
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(http::header::LOCATION, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(p: &str) -> Match {
        Match {
            path: PathMatch::Prefix(p.into()),
            ..Match::everything()
        }
    }

    fn replace_prefix(r: &str) -> api::PathRewrite {
        api::PathRewrite {
            kind: Some(path_rewrite::Kind::ReplacePrefixMatch(r.into())),
        }
    }

    #[test]
    fn prefix_rewrites_keep_the_rest_of_the_path() {
        let m = prefix("/v1");
        assert_eq!(
            rewrite_path("/v1/users", &replace_prefix("/v2"), &m),
            "/v2/users"
        );
        assert_eq!(
            rewrite_path("/v1/users", &replace_prefix("/"), &m),
            "/users"
        );
        assert_eq!(rewrite_path("/v1", &replace_prefix("/"), &m), "/");
    }

    #[test]
    fn redirects_build_the_location_from_the_request() {
        let r = api::Redirect {
            scheme: "https".into(),
            status_code: 301,
            ..Default::default()
        };
        let resp = redirect(&r, "shop.example:8080", "/cart", Some("a=1"), &prefix("/"));
        assert_eq!(resp.status(), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(resp.headers()["location"], "https://shop.example/cart?a=1");
    }
}
