//! Which rule serves a request: the routes the controller sent, compiled into one table per
//! config version and searched in Gateway API precedence order.
//!
//! Routes whose parent is the destination Service (GAMMA) win over routes whose parent is this
//! waypoint's Gateway; within each, matches are ordered by [`rule::Match::precedence`], then the
//! oldest route, then the route's name, then rule and match order. A request no route matches
//! goes to the service it was addressed to (what a waypoint without HTTPRoutes does).

pub mod rule;

use std::collections::HashMap;
use std::sync::Arc;

use crate::api;
use crate::mesh::MeshState;
use tracing::warn;

pub use rule::{Match, RequestView, Retry, Rule, RuleError};

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {route}: {source}")]
    Rule { route: String, source: RuleError },
    #[error("route {route}: parentRefs[{index}]: kind {kind:?} (Service or Gateway)")]
    ParentKind {
        route: String,
        index: usize,
        kind: String,
    },
}

/// Sort key: (precedence, highest first; route creation; route name; rule index; match index).
type Order = (
    std::cmp::Reverse<(u8, usize, bool, usize, usize)>,
    i64,
    String,
    usize,
    usize,
);

/// A compiled rule with its compiled matches.
type Compiled = (Arc<Rule>, Vec<Match>);

struct Entry {
    /// 0: every port.
    port: u32,
    hostnames: Vec<String>,
    matcher: Match,
    rule: Arc<Rule>,
    order: Order,
}

/// Every route this waypoint holds, compiled.
#[derive(Default)]
pub struct RouteTable {
    /// By the parent Service's (namespace, name).
    services: HashMap<(String, String), Vec<Entry>>,
    /// Routes attached to this waypoint's Gateway.
    gateway: Vec<Entry>,
}

/// Compiles one route: checks it without keeping it (config validation).
pub fn check(route: &api::Route) -> Result<(), RouteError> {
    compile_route(route).map(|_| ())
}

fn compile_route(route: &api::Route) -> Result<Vec<Compiled>, RouteError> {
    let key = format!("{}/{}", route.namespace, route.name);
    for (index, p) in route.parents.iter().enumerate() {
        if !matches!(p.kind.as_str(), "Service" | "Gateway") {
            return Err(RouteError::ParentKind {
                route: key,
                index,
                kind: p.kind.clone(),
            });
        }
    }
    route
        .rules
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            rule::compile(&key, i, spec)
                .map(|(rule, matches)| (Arc::new(rule), matches))
                .map_err(|source| RouteError::Rule {
                    route: key.clone(),
                    source,
                })
        })
        .collect()
}

impl RouteTable {
    /// The table for `state`, for the waypoint Gateway `gateway` (namespace, name).
    pub fn build(state: &MeshState, gateway: &(String, String)) -> Self {
        let mut table = RouteTable::default();
        for route in state.routes.values() {
            let compiled = match compile_route(route) {
                Ok(c) => c,
                Err(e) => {
                    // Validated when applied; only a bug gets here. Skip rather than fail all.
                    warn!("skipping {e}");
                    continue;
                }
            };
            let name = format!("{}/{}", route.namespace, route.name);
            for parent in &route.parents {
                let namespace = if parent.namespace.is_empty() {
                    &route.namespace
                } else {
                    &parent.namespace
                };
                let list = match parent.kind.as_str() {
                    "Service" => table
                        .services
                        .entry((namespace.clone(), parent.name.clone()))
                        .or_default(),
                    "Gateway" if (namespace, &parent.name) == (&gateway.0, &gateway.1) => {
                        &mut table.gateway
                    }
                    _ => continue,
                };
                for (rule, matches) in &compiled {
                    for (m_index, m) in matches.iter().enumerate() {
                        let matcher = m.clone();
                        list.push(Entry {
                            port: parent.port,
                            hostnames: route.hostnames.clone(),
                            order: (
                                std::cmp::Reverse(matcher.precedence()),
                                route.creation_timestamp,
                                name.clone(),
                                rule.index,
                                m_index,
                            ),
                            matcher,
                            rule: rule.clone(),
                        });
                    }
                }
            }
        }
        for list in table.services.values_mut() {
            list.sort_by(|a, b| a.order.cmp(&b.order));
        }
        table.gateway.sort_by(|a, b| a.order.cmp(&b.order));
        table
    }

    /// The rule for a request to `service` (namespace, name) on `port` with `host`, and the
    /// match that selected it; `None` when no route applies (the caller routes to the service).
    pub fn lookup(
        &self,
        service: Option<(&str, &str)>,
        port: u16,
        host: &str,
        req: &RequestView<'_>,
    ) -> Option<(Arc<Rule>, &Match)> {
        let port = u32::from(port);
        let by_service =
            service.and_then(|(ns, name)| self.services.get(&(ns.to_string(), name.to_string())));
        if let Some(list) = by_service.filter(|l| l.iter().any(|e| e.port == 0 || e.port == port)) {
            // A service with routes is fully described by them: unmatched requests get 404.
            return list
                .iter()
                .filter(|e| e.port == 0 || e.port == port)
                .find(|e| e.matcher.matches(req))
                .map(|e| (e.rule.clone(), &e.matcher));
        }
        self.gateway
            .iter()
            .filter(|e| e.port == 0 || e.port == port)
            .filter(|e| e.hostnames.is_empty() || e.hostnames.iter().any(|h| host_matches(h, host)))
            .find(|e| e.matcher.matches(req))
            .map(|e| (e.rule.clone(), &e.matcher))
    }

    /// Whether a service has routes on `port` (then a request none matches is a 404).
    pub fn has_routes(&self, service: (&str, &str), port: u16) -> bool {
        self.services
            .get(&(service.0.to_string(), service.1.to_string()))
            .is_some_and(|l| l.iter().any(|e| e.port == 0 || e.port == u32::from(port)))
    }
}

/// Gateway API hostnames: exact, or `*.example.com` for any subdomain. Ports are ignored.
fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_hostnames_need_a_subdomain() {
        assert!(host_matches("*.example.com", "a.example.com:8080"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(host_matches("Shop.example.com", "shop.example.com"));
    }
}
