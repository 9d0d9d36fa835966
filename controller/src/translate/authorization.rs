//! AuthorizationPolicy -> `ambit.v1.Authorization`.
//!
//! One function both validates and translates, so the loader rejects exactly what translation
//! cannot express. Every rejection names the field. Unsupported features (CUSTOM action, JWT
//! principals, unknown `when` keys) are errors, never silently dropped: dropping a condition from a
//! policy changes what it allows.

use std::net::IpAddr;

use ambit_proto::api;

use super::{Settings, ValidationError};
use crate::model::istio::{AuthorizationAction, Condition, Operation, Source};
use crate::model::{self, AuthorizationPolicy};

/// `when` keys the mesh can evaluate. L4 keys are evaluated by node agents; `request.headers[...]`
/// only by waypoints.
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "request.headers[<name>]",
];

/// A policy's name on the wire, as workloads list it: "<namespace>/<name>".
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn translate(
    policy: &AuthorizationPolicy,
    settings: &Settings,
) -> Result<api::Authorization, ValidationError> {
    let spec = &policy.spec;
    let namespace = model::namespace(&policy.metadata).to_string();
    let action = match spec.action {
        AuthorizationAction::Allow => api::Action::Allow,
        AuthorizationAction::Deny => api::Action::Deny,
        AuthorizationAction::Audit => api::Action::Audit,
        AuthorizationAction::Custom => {
            return Err(ValidationError::new(
                "spec.action",
                "CUSTOM (external authorization) is not supported; use ALLOW, DENY or AUDIT",
            ));
        }
    };
    if spec.provider.is_some() {
        return Err(ValidationError::new(
            "spec.provider",
            "external authorization providers are not supported",
        ));
    }
    let mut target_refs = spec.target_refs.clone();
    target_refs.extend(spec.target_ref.clone());
    if spec.selector.is_some() && !target_refs.is_empty() {
        return Err(ValidationError::new(
            "spec.selector",
            "selector and targetRefs are mutually exclusive",
        ));
    }
    let mut targets = Vec::new();
    for (i, t) in target_refs.iter().enumerate() {
        let field = |f: &str| format!("spec.targetRefs[{i}].{f}");
        let kind = match (t.group.as_str(), t.kind.as_str()) {
            ("gateway.networking.k8s.io", "Gateway") => "Gateway",
            ("" | "core", "Service") => "Service",
            (group, kind) => {
                return Err(ValidationError::new(
                    field("kind"),
                    format!(
                        "targetRefs may name a Gateway (gateway.networking.k8s.io) or a Service; not {group}/{kind}"
                    ),
                ));
            }
        };
        if t.namespace.as_deref().is_some_and(|ns| ns != namespace) {
            return Err(ValidationError::new(
                field("namespace"),
                "a policy may only target objects in its own namespace",
            ));
        }
        if t.name.is_empty() {
            return Err(ValidationError::new(field("name"), "required"));
        }
        targets.push(format!("{kind}/{namespace}/{}", t.name));
    }
    let scope = if !targets.is_empty() {
        api::Scope::Waypoint
    } else if spec.selector.is_some() {
        api::Scope::WorkloadSelector
    } else if namespace == settings.root_namespace {
        api::Scope::Global
    } else {
        api::Scope::Namespace
    };

    let mut rules = Vec::new();
    for (r, rule) in spec.rules.iter().flatten().enumerate() {
        let mut from = Vec::new();
        for (i, f) in rule.from.iter().enumerate() {
            from.push(source(
                &f.source,
                &format!("spec.rules[{r}].from[{i}].source"),
            )?);
        }
        let mut to = Vec::new();
        for (i, t) in rule.to.iter().enumerate() {
            to.push(operation(
                &t.operation,
                &format!("spec.rules[{r}].to[{i}].operation"),
            )?);
        }
        let mut when = Vec::new();
        for (i, c) in rule.when.iter().enumerate() {
            when.push(condition(c, &format!("spec.rules[{r}].when[{i}]"))?);
        }
        rules.push(api::Rule { from, to, when });
    }
    Ok(api::Authorization {
        name: model::name(&policy.metadata).to_string(),
        namespace,
        scope: scope as i32,
        action: action as i32,
        rules,
        targets,
    })
}

fn source(s: &Source, at: &str) -> Result<api::Source, ValidationError> {
    let unsupported = [
        ("requestPrincipals", !s.request_principals.is_empty()),
        ("notRequestPrincipals", !s.not_request_principals.is_empty()),
    ];
    for (field, set) in unsupported {
        if set {
            return Err(ValidationError::new(
                format!("{at}.{field}"),
                "request principals need JWT authentication (RequestAuthentication), which Ambit does not support",
            ));
        }
    }
    if !s.service_accounts.is_empty() || !s.not_service_accounts.is_empty() {
        return Err(ValidationError::new(
            format!("{at}.serviceAccounts"),
            "serviceAccounts is not supported; use principals (<trust-domain>/ns/<ns>/sa/<sa>)",
        ));
    }
    // Inside the mesh the connection's source is the client: remoteIpBlocks mean the same as
    // ipBlocks (there is no proxy header to read a different "remote" address from).
    let ip_blocks = [s.ip_blocks.as_slice(), s.remote_ip_blocks.as_slice()].concat();
    let not_ip_blocks = [
        s.not_ip_blocks.as_slice(),
        s.not_remote_ip_blocks.as_slice(),
    ]
    .concat();
    Ok(api::Source {
        principals: matches(&s.principals, &format!("{at}.principals"))?,
        not_principals: matches(&s.not_principals, &format!("{at}.notPrincipals"))?,
        namespaces: matches(&s.namespaces, &format!("{at}.namespaces"))?,
        not_namespaces: matches(&s.not_namespaces, &format!("{at}.notNamespaces"))?,
        ip_blocks: cidrs(&ip_blocks, &format!("{at}.ipBlocks"))?,
        not_ip_blocks: cidrs(&not_ip_blocks, &format!("{at}.notIpBlocks"))?,
    })
}

fn operation(o: &Operation, at: &str) -> Result<api::Destination, ValidationError> {
    Ok(api::Destination {
        ports: ports(&o.ports, &format!("{at}.ports"))?,
        not_ports: ports(&o.not_ports, &format!("{at}.notPorts"))?,
        methods: matches(&o.methods, &format!("{at}.methods"))?,
        not_methods: matches(&o.not_methods, &format!("{at}.notMethods"))?,
        paths: matches(&o.paths, &format!("{at}.paths"))?,
        not_paths: matches(&o.not_paths, &format!("{at}.notPaths"))?,
        hosts: matches(&o.hosts, &format!("{at}.hosts"))?,
        not_hosts: matches(&o.not_hosts, &format!("{at}.notHosts"))?,
    })
}

fn condition(c: &Condition, at: &str) -> Result<api::Condition, ValidationError> {
    let key = c.key.as_str();
    let header = key
        .strip_prefix("request.headers[")
        .and_then(|rest| rest.strip_suffix(']'));
    let known = WHEN_KEYS.contains(&key) || header.is_some_and(|h| !h.is_empty());
    if !known {
        return Err(ValidationError::new(
            format!("{at}.key"),
            format!(
                "unsupported condition key {key:?}; supported: {}",
                WHEN_KEYS.join(", ")
            ),
        ));
    }
    if c.values.is_empty() && c.not_values.is_empty() {
        return Err(ValidationError::new(
            format!("{at}.values"),
            "a condition needs values or notValues",
        ));
    }
    // Address and port keys are checked as such, so a typo fails here rather than never matching.
    let check = |values: &[String], field: &str| -> Result<(), ValidationError> {
        match key {
            "source.ip" | "remote.ip" | "destination.ip" => {
                cidrs(values, &format!("{at}.{field}")).map(drop)
            }
            "destination.port" => ports(values, &format!("{at}.{field}")).map(drop),
            _ => Ok(()),
        }
    };
    check(&c.values, "values")?;
    check(&c.not_values, "notValues")?;
    // `remote.ip` is `source.ip` inside the mesh (see `source`).
    let key = if key == "remote.ip" { "source.ip" } else { key };
    Ok(api::Condition {
        key: key.to_string(),
        values: matches(&c.values, &format!("{at}.values"))?,
        not_values: matches(&c.not_values, &format!("{at}.notValues"))?,
    })
}

/// Istio's string forms: "exact", "prefix*", "*suffix", "*".
pub fn string_match(s: &str) -> Result<api::StringMatch, String> {
    use api::string_match::Kind;
    let kind = if s == "*" {
        Kind::Presence(true)
    } else if let Some(suffix) = s.strip_prefix('*') {
        Kind::Suffix(suffix.to_string())
    } else if let Some(prefix) = s.strip_suffix('*') {
        Kind::Prefix(prefix.to_string())
    } else {
        Kind::Exact(s.to_string())
    };
    if s.is_empty() {
        return Err("empty value".into());
    }
    let inner = s.trim_start_matches('*').trim_end_matches('*');
    if inner.contains('*') {
        return Err(format!(
            "{s:?}: '*' may only stand at the start or the end of a value"
        ));
    }
    Ok(api::StringMatch { kind: Some(kind) })
}

fn matches(values: &[String], at: &str) -> Result<Vec<api::StringMatch>, ValidationError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| string_match(v).map_err(|e| ValidationError::new(format!("{at}[{i}]"), e)))
        .collect()
}

fn ports(values: &[String], at: &str) -> Result<Vec<u32>, ValidationError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| match v.parse::<u16>() {
            Ok(p) if p > 0 => Ok(u32::from(p)),
            _ => Err(ValidationError::new(
                format!("{at}[{i}]"),
                format!("{v:?} is not a port number (1-65535)"),
            )),
        })
        .collect()
}

/// "10.0.0.0/8", "10.1.2.3" (a /32) or "fd00::/8".
pub fn cidr(s: &str) -> Result<api::Cidr, String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix_len = match len {
        None => max,
        Some(l) => match l.parse::<u32>() {
            Ok(n) if n <= max => n,
            _ => return Err(format!("{s:?} has an invalid prefix length")),
        },
    };
    Ok(api::Cidr {
        address: ip.to_string(),
        prefix_len,
    })
}

fn cidrs(values: &[String], at: &str) -> Result<Vec<api::Cidr>, ValidationError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| cidr(v).map_err(|e| ValidationError::new(format!("{at}[{i}]"), e)))
        .collect()
}
