//! HTTPRoute (+ the HTTPFaults its rules name) -> `ambit.v1.Route`. route.proto says where each
//! field goes; this is that mapping, plus the defaults the API server would fill in.
//!
//! A route is checked with the waypoint's own route compiler ([`ambit_proto::routes::check`])
//! before it is accepted, so a route the controller sends never makes a waypoint refuse its config
//! (a NACK holds back every route, not just the bad one).
//!
//! Parents are kept as [`attach`] decides, so a waypoint whose listeners refuse the route is
//! never sent it.
//!
//! References that cannot be followed are not errors of the route, as Gateway API says: a backend
//! that is not a Service, or is in another namespace (Ambit does not read ReferenceGrant, so it
//! never grants one), keeps its weight and gets 500 (an unknown service, empty hostname); a
//! missing HTTPFault makes its rule answer 500 rather than skip the filter.

use ambit_proto::api::{self, filter, path_match, path_rewrite, value_match};
use ambit_proto::settings::parse_duration;

use super::attach::{self, ParentKind};
use super::{Settings, ValidationError, service};
use crate::model::gateway::{
    BackendObjectReference, HeaderModifier, HttpRouteFilter, HttpRouteMatch, HttpRouteRule,
    ParentReference, PathModifier,
};
use crate::model::traffic::HttpFaultSpec;
use crate::model::{self, ClusterState, HttpRoute};

pub const FAULT_GROUP: &str = "ambit.dev";
pub const FAULT_KIND: &str = "HTTPFault";

/// A route's name on the wire: "<namespace>/<name>".
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Translates `route`, reading its HTTPFaults from `state` and keeping the parents it attaches
/// to there ([`attach::sent`]).
pub fn translate(
    route: &HttpRoute,
    state: &ClusterState,
    settings: &Settings,
) -> Result<api::Route, ValidationError> {
    let namespace = model::namespace(&route.metadata);
    translate_with(
        route,
        settings,
        &|ns, name| state.http_fault(ns, name).map(|f| &f.spec),
        &|p| attach::sent(state, namespace, p),
    )
}

/// Checks a route on its own (no HTTPFault can be looked up: they are checked by their own
/// validation).
pub fn validate(route: &HttpRoute) -> Result<(), ValidationError> {
    translate_with(route, &Settings::default(), &|_, _| None, &|_| true).map(drop)
}

type Faults<'a> = dyn Fn(&str, &str) -> Option<&'a HttpFaultSpec> + 'a;

fn translate_with<'a>(
    route: &HttpRoute,
    settings: &Settings,
    faults: &Faults<'a>,
    attaches: &dyn Fn(&ParentReference) -> bool,
) -> Result<api::Route, ValidationError> {
    let meta = &route.metadata;
    let namespace = model::namespace(meta);
    let parents = route
        .spec
        .parent_refs
        .iter()
        .filter(|p| attaches(p))
        // Other parents (an ingress implementation's kinds) are some other controller's.
        .filter_map(|p| {
            let kind = match attach::kind(p)? {
                ParentKind::Gateway => "Gateway",
                ParentKind::Service => "Service",
            };
            Some(api::ParentRef {
                kind: kind.to_string(),
                namespace: attach::namespace(p, namespace).to_string(),
                name: p.name.clone(),
                port: p.port.map_or(0, u32::from),
            })
        })
        .collect();
    let rules = route
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            rule(r, namespace, settings, faults).map_err(|e| e.under(format!("spec.rules[{i}]")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let translated = api::Route {
        name: model::name(meta).to_string(),
        namespace: namespace.to_string(),
        parents,
        hostnames: route.spec.hostnames.clone(),
        rules,
        creation_timestamp: meta
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
    };
    ambit_proto::routes::check(&translated)
        .map_err(|e| ValidationError::new("spec.rules", e.to_string()))?;
    Ok(translated)
}

fn rule<'a>(
    r: &HttpRouteRule,
    namespace: &str,
    settings: &Settings,
    faults: &Faults<'a>,
) -> Result<api::RouteRule, ValidationError> {
    let mut out = api::RouteRule {
        name: r.name.clone().unwrap_or_default(),
        matches: r
            .matches
            .iter()
            .enumerate()
            .map(|(i, m)| route_match(m).map_err(|e| e.under(format!("matches[{i}]"))))
            .collect::<Result<_, _>>()?,
        ..Default::default()
    };
    for (i, f) in r.filters.iter().enumerate() {
        let at = |e: ValidationError| e.under(format!("filters[{i}]"));
        match filter(f, namespace, settings).map_err(at)? {
            Filter::Plain(kind) => out.filters.push(api::Filter { kind: Some(kind) }),
            Filter::Fault(name) => {
                out.fault = Some(match faults(namespace, &name) {
                    Some(spec) => fault(spec).map_err(at)?,
                    // Gateway API: an unresolvable extension filter answers errors, never skips.
                    None => api::FaultInjection {
                        delay: None,
                        abort: Some(api::FaultAbort {
                            http_status: 500,
                            percentage: 100.0,
                        }),
                    },
                })
            }
        }
    }
    for (i, b) in r.backend_refs.iter().enumerate() {
        if !b.filters.is_empty() {
            return Err(ValidationError::new(
                format!("backendRefs[{i}].filters"),
                "per-backend filters are not supported; put the filter on the rule",
            ));
        }
        let mut backend = backend(&b.backend, namespace, settings);
        backend.weight = b.weight.unwrap_or(1);
        out.backends.push(backend);
    }
    if let Some(t) = &r.timeouts {
        out.timeouts = Some(api::Timeouts {
            request_ms: millis(t.request.as_deref(), "timeouts.request")?,
            backend_request_ms: millis(t.backend_request.as_deref(), "timeouts.backendRequest")?,
        });
    }
    if let Some(retry) = &r.retry {
        out.retry = Some(api::RetryPolicy {
            // Gateway API's default when the field is left out is implementation-specific; Ambit
            // retries once, as Envoy does.
            attempts: retry.attempts.unwrap_or(1),
            codes: retry.codes.clone(),
            retry_on: Vec::new(),
            backoff_ms: millis(retry.backoff.as_deref(), "retry.backoff")?,
        });
    }
    Ok(out)
}

/// Gateway API durations ("1h", "10s", "500ms"); "0s" means no timeout.
fn millis(value: Option<&str>, field: &str) -> Result<u64, ValidationError> {
    value.map_or(Ok(0), |v| {
        parse_duration(v)
            .map(|d| d.as_millis() as u64)
            .map_err(|e| ValidationError::new(field, e))
    })
}

fn route_match(m: &HttpRouteMatch) -> Result<api::RouteMatch, ValidationError> {
    let path = match &m.path {
        None => None,
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            let kind = match p.type_.as_deref().unwrap_or("PathPrefix") {
                "Exact" => path_match::Kind::Exact(value),
                "PathPrefix" => path_match::Kind::Prefix(value),
                "RegularExpression" => path_match::Kind::Regex(value),
                other => return Err(unsupported("path.type", other)),
            };
            Some(api::PathMatch { kind: Some(kind) })
        }
    };
    let values = |list: &[model::gateway::ValueMatch], field: &str| {
        list.iter()
            .map(|v| {
                let kind = match v.type_.as_deref().unwrap_or("Exact") {
                    "Exact" => value_match::Kind::Exact(v.value.clone()),
                    "RegularExpression" => value_match::Kind::Regex(v.value.clone()),
                    other => return Err(unsupported(&format!("{field}.type"), other)),
                };
                Ok(api::ValueMatch {
                    name: v.name.clone(),
                    kind: Some(kind),
                })
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(api::RouteMatch {
        path,
        headers: values(&m.headers, "headers")?,
        query_params: values(&m.query_params, "queryParams")?,
        method: m.method.clone().unwrap_or_default(),
    })
}

enum Filter {
    Plain(filter::Kind),
    /// The name of an HTTPFault in the route's namespace.
    Fault(String),
}

fn filter(
    f: &HttpRouteFilter,
    namespace: &str,
    settings: &Settings,
) -> Result<Filter, ValidationError> {
    let missing = || {
        ValidationError::new(
            "type",
            format!("a {} filter needs its settings field", f.type_),
        )
    };
    Ok(Filter::Plain(match f.type_.as_str() {
        "RequestHeaderModifier" => filter::Kind::RequestHeaderModifier(headers(
            f.request_header_modifier.as_ref().ok_or_else(missing)?,
        )),
        "ResponseHeaderModifier" => filter::Kind::ResponseHeaderModifier(headers(
            f.response_header_modifier.as_ref().ok_or_else(missing)?,
        )),
        "RequestRedirect" => {
            let r = f.request_redirect.as_ref().ok_or_else(missing)?;
            filter::Kind::RequestRedirect(api::Redirect {
                scheme: r.scheme.clone().unwrap_or_default(),
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
                port: r.port.map_or(0, u32::from),
                status_code: r.status_code.map_or(0, u32::from),
            })
        }
        "URLRewrite" => {
            let r = f.url_rewrite.as_ref().ok_or_else(missing)?;
            filter::Kind::UrlRewrite(api::Rewrite {
                hostname: r.hostname.clone().unwrap_or_default(),
                path: r.path.as_ref().map(path_modifier).transpose()?,
            })
        }
        "RequestMirror" => {
            let m = f.request_mirror.as_ref().ok_or_else(missing)?;
            let percent = match (m.percent, &m.fraction) {
                (Some(p), _) => Some(f64::from(p)),
                (None, Some(fr)) => {
                    let denominator = fr.denominator.unwrap_or(100);
                    if denominator == 0 || fr.numerator > denominator {
                        return Err(ValidationError::new(
                            "requestMirror.fraction",
                            "numerator must be at most the denominator, which must not be 0",
                        ));
                    }
                    Some(f64::from(fr.numerator) * 100.0 / f64::from(denominator))
                }
                (None, None) => None,
            };
            filter::Kind::RequestMirror(api::Mirror {
                backend: Some(backend(&m.backend_ref, namespace, settings)),
                percent: percent.unwrap_or(0.0),
                percent_set: percent.is_some(),
            })
        }
        "ExtensionRef" => {
            let r = f.extension_ref.as_ref().ok_or_else(missing)?;
            if (r.group.as_str(), r.kind.as_str()) != (FAULT_GROUP, FAULT_KIND) {
                return Err(ValidationError::new(
                    "extensionRef",
                    format!(
                        "{}/{} is not a filter Ambit knows (only {FAULT_GROUP}/{FAULT_KIND})",
                        r.group, r.kind
                    ),
                ));
            }
            return Ok(Filter::Fault(r.name.clone()));
        }
        other => return Err(unsupported("type", other)),
    }))
}

fn headers(m: &HeaderModifier) -> api::HeaderModifier {
    let list = |l: &[model::gateway::HttpHeader]| {
        l.iter()
            .map(|h| api::Header {
                name: h.name.clone(),
                value: h.value.clone(),
            })
            .collect()
    };
    api::HeaderModifier {
        set: list(&m.set),
        add: list(&m.add),
        remove: m.remove.clone(),
    }
}

fn path_modifier(p: &PathModifier) -> Result<api::PathRewrite, ValidationError> {
    let kind = match p.type_.as_str() {
        "ReplaceFullPath" => {
            path_rewrite::Kind::ReplaceFullPath(p.replace_full_path.clone().ok_or_else(|| {
                ValidationError::new("path.replaceFullPath", "required by type ReplaceFullPath")
            })?)
        }
        "ReplacePrefixMatch" => path_rewrite::Kind::ReplacePrefixMatch(
            p.replace_prefix_match.clone().ok_or_else(|| {
                ValidationError::new(
                    "path.replacePrefixMatch",
                    "required by type ReplacePrefixMatch",
                )
            })?,
        ),
        other => return Err(unsupported("path.type", other)),
    };
    Ok(api::PathRewrite { kind: Some(kind) })
}

/// A Service reference resolved to its hostname; anything else resolves to nothing (500).
fn backend(b: &BackendObjectReference, namespace: &str, settings: &Settings) -> api::BackendRef {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    let ns = b.namespace.as_deref().unwrap_or(namespace);
    let resolvable = matches!(group, "" | "core") && kind == "Service" && ns == namespace;
    api::BackendRef {
        namespace: if resolvable {
            ns.to_string()
        } else {
            String::new()
        },
        hostname: if resolvable {
            service::hostname(&b.name, ns, settings)
        } else {
            String::new()
        },
        port: b.port.map_or(0, u32::from),
        weight: 1,
    }
}

/// An HTTPFault spec (Istio's `HTTPFaultInjection`) -> `FaultInjection`.
pub fn fault(spec: &HttpFaultSpec) -> Result<api::FaultInjection, ValidationError> {
    let percent = |p: &Option<crate::model::traffic::Percent>, field: &str| {
        // Istio injects into every request when the percentage is left out.
        let v = p.as_ref().map_or(100.0, |p| p.value);
        if (0.0..=100.0).contains(&v) {
            Ok(v)
        } else {
            Err(ValidationError::new(
                field,
                format!("{v} is not between 0 and 100"),
            ))
        }
    };
    let delay = spec
        .delay
        .as_ref()
        .map(|d| {
            Ok::<_, ValidationError>(api::FaultDelay {
                fixed_delay_ms: parse_duration(&d.fixed_delay)
                    .map_err(|e| ValidationError::new("spec.delay.fixedDelay", e))?
                    .as_millis() as u64,
                percentage: percent(&d.percentage, "spec.delay.percentage.value")?,
            })
        })
        .transpose()?;
    let abort = spec
        .abort
        .as_ref()
        .map(|a| {
            if !(200..600).contains(&a.http_status) {
                return Err(ValidationError::new(
                    "spec.abort.httpStatus",
                    format!("{} is not an HTTP status (200-599)", a.http_status),
                ));
            }
            Ok(api::FaultAbort {
                http_status: a.http_status,
                percentage: percent(&a.percentage, "spec.abort.percentage.value")?,
            })
        })
        .transpose()?;
    if delay.is_none() && abort.is_none() {
        return Err(ValidationError::new(
            "spec",
            "an HTTPFault needs a delay, an abort or both",
        ));
    }
    Ok(api::FaultInjection { delay, abort })
}

fn unsupported(field: &str, value: &str) -> ValidationError {
    ValidationError::new(field, format!("{value:?} is not supported"))
}
