//! DestinationRule -> `ambit.v1.BackendPolicy`: how a waypoint picks and protects one service's
//! endpoints. route.proto lists the fields; the rules for `spec.host` are Istio's.

use ambit_proto::api;
use ambit_proto::settings::parse_duration;

use super::{Settings, ValidationError, service};
use crate::model::{self, DestinationRule};

/// A backend policy's name on the wire: "<namespace>/<name>".
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The service `host` names, as (namespace, hostname). Istio's forms: a short name ("reviews",
/// in the rule's namespace), "<name>.<namespace>", or the full "<name>.<namespace>.svc.<domain>".
/// Wildcards and hosts outside the cluster have no service here to apply to. `settings` is
/// `None` when validating without knowing the cluster's domain.
fn service_of(
    host: &str,
    namespace: &str,
    settings: Option<&Settings>,
) -> Result<(String, String), ValidationError> {
    let invalid = |why: &str| ValidationError::new("spec.host", format!("{host:?}: {why}"));
    if host.is_empty() {
        return Err(invalid("required"));
    }
    if host.contains('*') {
        return Err(invalid(
            "wildcard hosts are not supported; name one service",
        ));
    }
    let parts: Vec<&str> = host.split('.').collect();
    let (name, ns) = match parts.as_slice() {
        [name] => (*name, namespace),
        [name, ns] => (*name, *ns),
        [name, ns, "svc", domain @ ..]
            if settings.is_none_or(|s| domain.join(".") == s.cluster_domain) =>
        {
            (*name, *ns)
        }
        _ => {
            return Err(invalid(
                "not a service of this cluster (<name>, <name>.<namespace> or \
                 <name>.<namespace>.svc.<cluster domain>)",
            ));
        }
    };
    let settings = settings.cloned().unwrap_or_default();
    Ok((ns.to_string(), service::hostname(name, ns, &settings)))
}

/// Checks a rule without knowing the cluster's domain.
pub fn validate(rule: &DestinationRule) -> Result<(), ValidationError> {
    translate_with(rule, None).map(drop)
}

pub fn translate(
    rule: &DestinationRule,
    settings: &Settings,
) -> Result<api::BackendPolicy, ValidationError> {
    translate_with(rule, Some(settings))
}

fn translate_with(
    rule: &DestinationRule,
    settings: Option<&Settings>,
) -> Result<api::BackendPolicy, ValidationError> {
    let meta = &rule.metadata;
    let namespace = model::namespace(meta);
    let (service_namespace, service_hostname) = service_of(&rule.spec.host, namespace, settings)?;
    let mut out = api::BackendPolicy {
        name: model::name(meta).to_string(),
        namespace: namespace.to_string(),
        service_namespace,
        service_hostname,
        ..Default::default()
    };
    let Some(policy) = &rule.spec.traffic_policy else {
        return Ok(out);
    };
    if let Some(lb) = &policy.load_balancer {
        if lb.consistent_hash.is_some() {
            return Err(ValidationError::new(
                "spec.trafficPolicy.loadBalancer.consistentHash",
                "consistent hashing is not supported by Ambit waypoints; use simple",
            ));
        }
        out.load_balancer = match lb.simple.as_deref().unwrap_or("UNSPECIFIED") {
            "UNSPECIFIED" => api::LoadBalancer::Unspecified,
            "ROUND_ROBIN" => api::LoadBalancer::RoundRobin,
            // LEAST_CONN is Istio's deprecated name for LEAST_REQUEST.
            "LEAST_REQUEST" | "LEAST_CONN" => api::LoadBalancer::LeastRequest,
            "RANDOM" => api::LoadBalancer::Random,
            other => {
                return Err(ValidationError::new(
                    "spec.trafficPolicy.loadBalancer.simple",
                    format!("{other:?} is not supported (ROUND_ROBIN, LEAST_REQUEST, RANDOM)"),
                ));
            }
        } as i32;
    }
    if let Some(od) = &policy.outlier_detection {
        let base = match &od.base_ejection_time {
            Some(t) => parse_duration(t)
                .map_err(|e| {
                    ValidationError::new("spec.trafficPolicy.outlierDetection.baseEjectionTime", e)
                })?
                .as_millis() as u64,
            None => 0,
        };
        let percent = od.max_ejection_percent.unwrap_or(0);
        if percent > 100 {
            return Err(ValidationError::new(
                "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
                format!("{percent} is more than 100"),
            ));
        }
        out.outlier_detection = Some(api::OutlierDetection {
            // Istio's default once outlier detection is configured; 0 turns it off.
            consecutive_5xx: od.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway_errors: od.consecutive_gateway_errors.unwrap_or(0),
            base_ejection_ms: base,
            max_ejection_percent: percent,
        });
    }
    if let Some(pool) = &policy.connection_pool {
        out.connection_pool = Some(api::ConnectionPool {
            max_connections: pool
                .tcp
                .as_ref()
                .and_then(|t| t.max_connections)
                .unwrap_or(0),
            max_pending_requests: pool
                .http
                .as_ref()
                .and_then(|h| h.http1_max_pending_requests)
                .unwrap_or(0),
            max_requests: pool
                .http
                .as_ref()
                .and_then(|h| h.http2_max_requests)
                .unwrap_or(0),
        });
    }
    Ok(out)
}
