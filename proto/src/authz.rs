//! Evaluating `ambit.v1.Authorization` policies: one implementation for the node agent (L4), the
//! waypoint (L4 + HTTP) and `ambit explain`, so all three always agree.
//!
//! Istio's semantics: AUDIT policies never decide; a matching DENY policy denies; with no ALLOW
//! policy the request is allowed; otherwise some ALLOW policy must match. Without HTTP attributes
//! (the node agent) a rule that names any HTTP attribute cannot be decided, so it is evaluated to
//! be safe rather than permissive: such an ALLOW rule matches nothing, and such a DENY rule is
//! judged by its L4 fields alone.

use std::net::IpAddr;

use http::HeaderMap;

use crate::Identity;
use crate::api::{self, Action, string_match::Kind};

/// What is known about one connection or request.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The peer's identity proven by mTLS; `None` for plaintext.
    pub source_identity: Option<&'a Identity>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// HTTP attributes, when the enforcement point parsed the request (waypoints).
    pub http: Option<HttpAttributes<'a>>,
}

#[derive(Debug, Clone, Copy)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a HeaderMap,
}

/// The outcome, with what decided it (for logs, metrics and `ambit explain`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy applies.
    AllowNoPolicy,
    /// `policy` ("<ns>/<name>") rule `rule` (0-based) allowed it.
    Allow { policy: String, rule: usize },
    /// `policy` rule `rule` denied it.
    Deny { policy: String, rule: usize },
    /// ALLOW policies exist and none matched.
    DenyNoMatch { allow_policies: Vec<String> },
    /// The destination accepts traffic only from its waypoints (`waypoint_only`), and this
    /// client is not one of them. `waypoints`: their hostnames (empty: none is running).
    DenyBypass { waypoints: Vec<String> },
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::AllowNoPolicy | Decision::Allow { .. })
    }

    /// One line a person can act on.
    pub fn explain(&self) -> String {
        match self {
            Decision::AllowNoPolicy => "allowed: no authorization policy applies".into(),
            Decision::Allow { policy, rule } => {
                format!("allowed by ALLOW policy {policy} (rule {})", rule + 1)
            }
            Decision::Deny { policy, rule } => {
                format!("denied by DENY policy {policy} (rule {})", rule + 1)
            }
            Decision::DenyNoMatch { allow_policies } => format!(
                "denied: ALLOW policies apply ({}) and none of their rules matched",
                allow_policies.join(", ")
            ),
            Decision::DenyBypass { waypoints } if waypoints.is_empty() => {
                "denied: the destination accepts traffic only through its waypoint, and none is \
                 running"
                    .into()
            }
            Decision::DenyBypass { waypoints } => format!(
                "denied: the destination accepts traffic only through its waypoint ({}); \
                 connect through its service instead",
                waypoints.join(", ")
            ),
        }
    }
}

/// Evaluates the policies that apply to the destination.
pub fn evaluate<'p>(
    policies: impl IntoIterator<Item = &'p api::Authorization>,
    attrs: &Attributes<'_>,
) -> Decision {
    let mut allow_policies = Vec::new();
    let mut allowed_by = None;
    for policy in policies {
        let action = Action::try_from(policy.action).unwrap_or(Action::Allow);
        let key = || format!("{}/{}", policy.namespace, policy.name);
        match action {
            Action::Audit => {}
            Action::Deny => {
                if let Some(rule) = first_match(policy, attrs, Mode::Deny) {
                    return Decision::Deny {
                        policy: key(),
                        rule,
                    };
                }
            }
            Action::Allow => {
                allow_policies.push(key());
                if allowed_by.is_none() {
                    allowed_by = first_match(policy, attrs, Mode::Allow).map(|r| (key(), r));
                }
            }
        }
    }
    match (allowed_by, allow_policies.is_empty()) {
        (Some((policy, rule)), _) => Decision::Allow { policy, rule },
        (None, true) => Decision::AllowNoPolicy,
        (None, false) => {
            allow_policies.sort();
            Decision::DenyNoMatch { allow_policies }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Allow,
    Deny,
}

fn first_match(policy: &api::Authorization, attrs: &Attributes<'_>, mode: Mode) -> Option<usize> {
    policy
        .rules
        .iter()
        .position(|rule| rule_matches(rule, attrs, mode))
}

fn rule_matches(rule: &api::Rule, attrs: &Attributes<'_>, mode: Mode) -> bool {
    if attrs.http.is_none() && mode == Mode::Allow && needs_http(rule) {
        return false;
    }
    let from = rule.from.is_empty() || rule.from.iter().any(|s| source_matches(s, attrs));
    let to = rule.to.is_empty() || rule.to.iter().any(|d| destination_matches(d, attrs));
    from && to && rule.when.iter().all(|c| condition_holds(c, attrs))
}

/// Whether a rule names an HTTP attribute, which only a waypoint can see.
pub fn needs_http(rule: &api::Rule) -> bool {
    rule.to.iter().any(|d| {
        !(d.methods.is_empty()
            && d.not_methods.is_empty()
            && d.paths.is_empty()
            && d.not_paths.is_empty()
            && d.hosts.is_empty()
            && d.not_hosts.is_empty())
    }) || rule.when.iter().any(|c| c.key.starts_with("request."))
}

fn source_matches(s: &api::Source, attrs: &Attributes<'_>) -> bool {
    let principal = attrs.source_identity.map(principal);
    let namespace = attrs.source_identity.map(Identity::namespace);
    field(&s.principals, &s.not_principals, |m| {
        principal.as_deref().is_some_and(|p| string_matches(m, p))
    }) && field(&s.namespaces, &s.not_namespaces, |m| {
        namespace.is_some_and(|n| string_matches(m, n))
    }) && field(&s.ip_blocks, &s.not_ip_blocks, |c| {
        cidr_contains(c, attrs.source_ip)
    })
}

fn destination_matches(d: &api::Destination, attrs: &Attributes<'_>) -> bool {
    let port = u32::from(attrs.destination_port);
    let l4 = field(&d.ports, &d.not_ports, |p| *p == port);
    let Some(http) = attrs.http else {
        // Without HTTP (node agent, DENY rules only reach here): judge by L4 fields alone.
        return l4;
    };
    l4 && field(&d.methods, &d.not_methods, |m| {
        string_matches(m, http.method)
    }) && field(&d.paths, &d.not_paths, |m| string_matches(m, http.path))
        && field(&d.hosts, &d.not_hosts, |m| host_matches(m, http.host))
}

fn condition_holds(c: &api::Condition, attrs: &Attributes<'_>) -> bool {
    let value: Option<String> = match c.key.as_str() {
        "source.ip" => Some(attrs.source_ip.to_string()),
        "destination.ip" => Some(attrs.destination_ip.to_string()),
        "destination.port" => Some(attrs.destination_port.to_string()),
        "source.namespace" => attrs.source_identity.map(|i| i.namespace().to_string()),
        "source.principal" => attrs.source_identity.map(principal),
        key => match (key.strip_prefix("request.headers["), attrs.http) {
            (Some(name), Some(http)) => name
                .strip_suffix(']')
                .and_then(|n| http.headers.get(n))
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            // A header condition without HTTP: only DENY rules get here; judged by L4 alone.
            (Some(_), None) => return true,
            _ => return false,
        },
    };
    let ip_key = matches!(c.key.as_str(), "source.ip" | "destination.ip");
    let test = |m: &api::StringMatch| match &value {
        None => false,
        Some(v) if ip_key => ip_value_matches(m, v),
        Some(v) => string_matches(m, v),
    };
    field(&c.values, &c.not_values, test)
}

/// Values ORed; not-values must all fail; an empty list places no constraint.
fn field<T>(values: &[T], not_values: &[T], test: impl Fn(&T) -> bool) -> bool {
    (values.is_empty() || values.iter().any(&test)) && !not_values.iter().any(&test)
}

/// Istio principals are the identity without the `spiffe://` scheme.
fn principal(identity: &Identity) -> String {
    let full = identity.to_string();
    full.strip_prefix("spiffe://").unwrap_or(&full).to_string()
}

pub fn string_matches(m: &api::StringMatch, value: &str) -> bool {
    match &m.kind {
        Some(Kind::Exact(e)) => value == e,
        Some(Kind::Prefix(p)) => value.starts_with(p.as_str()),
        Some(Kind::Suffix(s)) => value.ends_with(s.as_str()),
        Some(Kind::Presence(_)) => !value.is_empty(),
        None => false,
    }
}

/// Hosts compare without case and without a port.
fn host_matches(m: &api::StringMatch, host: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    string_matches(m, &host.to_ascii_lowercase())
}

/// An IP condition value is an address or a CIDR (`when: source.ip`).
fn ip_value_matches(m: &api::StringMatch, value: &str) -> bool {
    let (Some(Kind::Exact(pattern)), Ok(ip)) = (&m.kind, value.parse::<IpAddr>()) else {
        return string_matches(m, value);
    };
    match pattern.split_once('/') {
        Some((addr, len)) => match (addr.parse(), len.parse()) {
            (Ok(address), Ok(prefix_len)) => cidr_contains_ip(address, prefix_len, ip),
            _ => false,
        },
        None => pattern.parse::<IpAddr>() == Ok(ip),
    }
}

pub fn cidr_contains(c: &api::Cidr, ip: IpAddr) -> bool {
    match c.address.parse() {
        Ok(address) => cidr_contains_ip(address, c.prefix_len, ip),
        Err(_) => false,
    }
}

fn cidr_contains_ip(network: IpAddr, prefix_len: u32, ip: IpAddr) -> bool {
    match (network, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) if prefix_len <= 32 => {
            let mask = u32::MAX.checked_shl(32 - prefix_len).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) if prefix_len <= 128 => {
            let mask = u128::MAX.checked_shl(128 - prefix_len).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
#[path = "authz_tests.rs"]
mod tests;
