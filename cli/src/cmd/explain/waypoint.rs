//! The waypoint's part of a connection: what it does with one HTTP request, step by step as the
//! waypoint's request handler does it (authorize, route, redirect, filters, faults, pick a
//! backend), each step by the waypoint's own code: the policy selection and target resolution
//! of `ambit_waypoint::state`, `ambit_proto::authz::evaluate`, the route table of
//! `ambit_proto::routes`, the filters of `ambit_waypoint::proxy::filters`, and the statuses of
//! `ambit_waypoint::proxy::respond`. Then the endpoint's agent decides, with the waypoint as the
//! client, like any other HBONE connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::api::{self, gateway_address::Destination};
use ambit_proto::authz::{self, Attributes, HttpAttributes};
use ambit_proto::routes::{Match, RequestView, Rule, rule::PathMatch};
use ambit_waypoint::proxy::filters;
use ambit_waypoint::proxy::respond::ProxyError;
use ambit_waypoint::state::{self, Target, WaypointConfig};
use ambit_ztunnel::state::{Service, Workload};

use super::path::{Explainer, service_name};
use super::{Verdict, combine};

impl Explainer<'_> {
    /// From the moment the waypoint `peer` accepts the tunnel to `authority` from `source`.
    pub(super) fn through_waypoint(
        &mut self,
        source: &Arc<Workload>,
        src_ip: IpAddr,
        authority: SocketAddr,
        service: Option<&Arc<Service>>,
        peer: &Arc<Workload>,
    ) -> Verdict {
        let state = self.mesh.state.clone();
        let address = match service {
            Some(s) => s.spec.waypoint.as_ref(),
            None => state
                .workload_by_ip(authority.ip())
                .and_then(|w| w.spec.waypoint.as_ref()),
        };
        let Some(gateway) = address.and_then(gateway_of) else {
            self.say(
                "Which Gateway this waypoint serves cannot be told from its address, so its L7 \
                 decision is not evaluated here."
                    .to_owned(),
            );
            return Verdict::AtWaypoint;
        };
        let config = WaypointConfig::new(self.mesh.store.clone(), gateway.clone());
        let request = self.request;
        self.say(format!(
            "If the client speaks HTTP, the waypoint (Gateway {}/{}) sees {} with Host {:?}:",
            gateway.0,
            gateway.1,
            request.describe(),
            self.host
        ));
        let Some(target) = Target::resolve(&state, authority) else {
            return self.answer(ProxyError::NoRoute(format!(
                "{authority} is not a known service or workload"
            )));
        };

        // Authorize on what the client sent, before any rewrite (as the waypoint does).
        let policies = config.policies(&state, &target);
        let attrs = Attributes {
            source_identity: Some(&source.identity),
            source_ip: src_ip,
            destination_ip: authority.ip(),
            destination_port: authority.port(),
            http: Some(HttpAttributes {
                method: request.method.as_str(),
                path: &request.path,
                host: self.host,
                headers: &request.headers,
            }),
        };
        let decision = authz::evaluate(policies.iter().map(|p| p.as_ref()), &attrs);
        let names: Vec<String> = policies
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        self.say(format!(
            "L7 policy: policies bound to the waypoint{}: {}. Decision for {}: {}.",
            target
                .service()
                .map(|s| format!(" or to service {}", service_name(s)))
                .unwrap_or_default(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            },
            request.describe(),
            decision.explain()
        ));
        if !decision.allowed() {
            return self.answer(ProxyError::Denied(decision.explain()));
        }

        // Route.
        let table = config.routes(&state);
        let view = RequestView {
            method: &request.method,
            path: &request.path,
            query: request.query.as_deref(),
            headers: &request.headers,
        };
        let addressed = target
            .service()
            .map(|s| (s.spec.namespace.as_str(), s.spec.name.as_str()));
        let by_service = addressed.is_some_and(|s| table.has_routes(s, target.port()));
        let (rule, matched) = match table.lookup(addressed, target.port(), self.host, &view) {
            Some((rule, matched)) => (rule, matched.clone()),
            None if by_service => {
                return self.answer(ProxyError::NoRoute(format!(
                    "no rule of the routes of {} matches",
                    target.service().map_or("", |s| s.spec.hostname.as_str())
                )));
            }
            None => (default_rule(&target), Match::everything()),
        };
        if rule.route.is_empty() {
            self.say(
                "Route: no HTTPRoute applies: the request goes to what it was addressed to."
                    .to_owned(),
            );
        } else {
            let parent = match target.service() {
                Some(s) if by_service => format!("service {}", service_name(s)),
                _ => format!("Gateway {}/{}", gateway.0, gateway.1),
            };
            self.say(format!(
                "Route: of the HTTPRoute rules attached to {parent}, in Gateway API precedence \
                 order, the first that matches is {} ({}).",
                rule.describe(),
                describe_match(&matched)
            ));
        }
        if let Some(r) = &rule.redirect {
            let response = filters::redirect(r, self.host, &request.path, view.query, &matched);
            let location = response
                .headers()
                .get(http::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("?");
            let status = response.status().as_u16();
            self.say(format!(
                "Redirect: the waypoint answers {status}, sending the client to {location}."
            ));
            return Verdict::WaypointAnswers(status);
        }
        self.filters(&rule, &matched);

        // Faults: an abort every request gets ends it here.
        if let Some(fault) = &rule.fault {
            if let Some(d) = &fault.delay {
                self.say(format!(
                    "Fault: {}% of these requests are delayed {} ms.",
                    d.percentage, d.fixed_delay_ms
                ));
            }
            if let Some(a) = &fault.abort {
                let status = http::StatusCode::from_u16(a.http_status as u16)
                    .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
                if a.percentage >= 100.0 {
                    self.say("Fault: every such request is aborted.".to_owned());
                    return self.answer(ProxyError::FaultAbort(status));
                }
                self.say(format!(
                    "Fault: {}% of these requests are answered {} by the waypoint.",
                    a.percentage,
                    status.as_u16()
                ));
            }
        }
        self.backends(&config, &target, &rule, src_ip, peer)
    }

    /// The waypoint answers itself: the status and the reason header it sends.
    fn answer(&mut self, error: ProxyError) -> Verdict {
        let status = error.status().as_u16();
        self.say(format!(
            "The waypoint answers {status} itself (x-ambit-reason: {error}); no backend sees \
             the request."
        ));
        Verdict::WaypointAnswers(status)
    }

    /// Header changes, rewrites, mirrors, timeouts and retries of the chosen rule.
    fn filters(&mut self, rule: &Rule, matched: &Match) {
        let mut notes = Vec::new();
        for m in &rule.request_headers {
            notes.push(format!("request headers: {}", describe_headers(m)));
        }
        for m in &rule.response_headers {
            notes.push(format!("response headers: {}", describe_headers(m)));
        }
        if let Some(rw) = &rule.rewrite {
            if let Some(p) = &rw.path {
                let path = filters::rewrite_path(&self.request.path, p, matched);
                notes.push(format!("the path is rewritten to {path}"));
            }
            if !rw.hostname.is_empty() {
                notes.push(format!("the Host is rewritten to {}", rw.hostname));
            }
        }
        for m in &rule.mirrors {
            let to = m
                .backend
                .as_ref()
                .map_or_else(String::new, |b| format!("{}/{}", b.namespace, b.hostname));
            let share = if m.percent_set { m.percent } else { 100.0 };
            notes.push(format!("{share}% are copied to {to} (answers ignored)"));
        }
        if let Some(t) = rule.request_timeout {
            notes.push(format!("the request times out after {t:?} (504)"));
        }
        if let Some(t) = rule.per_try_timeout {
            notes.push(format!("each try times out after {t:?}"));
        }
        if let Some(r) = &rule.retry {
            let mut on = Vec::new();
            if r.on_5xx {
                on.push("5xx".to_owned());
            }
            if r.on_gateway_error {
                on.push("502/503/504".to_owned());
            }
            if r.on_connect_failure {
                on.push("connect failure".to_owned());
            }
            if r.on_reset {
                on.push("reset".to_owned());
            }
            on.extend(r.codes.iter().map(u16::to_string));
            notes.push(format!("up to {} retries on {}", r.attempts, on.join(", ")));
        }
        if !notes.is_empty() {
            self.say(format!("Filters: {}.", notes.join("; ")));
        }
    }

    /// Which backends the rule sends to, their endpoints, and each endpoint agent's decision
    /// with the waypoint as the client.
    fn backends(
        &mut self,
        config: &WaypointConfig,
        target: &Target,
        rule: &Rule,
        src_ip: IpAddr,
        waypoint: &Arc<Workload>,
    ) -> Verdict {
        let state = self.mesh.state.clone();
        // The default rule for a pod addressed directly: that pod, nothing else.
        if let Target::Workload(w, port) = target
            && rule.backends.is_empty()
            && rule.route.is_empty()
        {
            let Some(ip) = w.addresses.first() else {
                return self.answer(ProxyError::NoHealthyUpstream(format!(
                    "{} has no address",
                    w.display_name()
                )));
            };
            self.say(format!(
                "Backend: the pod itself, {} ({ip}:{port}).",
                w.display_name()
            ));
            let verdict = self.hop_to_endpoint(w, SocketAddr::new(*ip, *port), src_ip, waypoint);
            return self.forwarded(vec![(w.display_name(), verdict)]);
        }
        let total: u64 = rule.backends.iter().map(|b| u64::from(b.weight)).sum();
        if total == 0 {
            return self.answer(ProxyError::NoBackend(rule.describe()));
        }
        let mut outcomes = Vec::new();
        for b in rule.backends.iter().filter(|b| b.weight > 0) {
            let share = u64::from(b.weight) * 100 / total;
            let port = match u16::try_from(b.port) {
                Ok(0) | Err(_) => target.port(),
                Ok(p) => p,
            };
            let Some((svc, endpoints)) = state::endpoints(&state, &b.namespace, &b.hostname, port)
            else {
                let v = self.answer(ProxyError::NoBackend(format!(
                    "service {} is unknown",
                    b.hostname
                )));
                outcomes.push((b.hostname.clone(), v));
                continue;
            };
            let name = service_name(&svc);
            let label = if share < 100 {
                format!("service {name} ({share}%)")
            } else {
                format!("service {name}")
            };
            if endpoints.is_empty() {
                let v = self.answer(ProxyError::NoHealthyUpstream(format!(
                    "service {} has no healthy endpoint for port {port}",
                    b.hostname
                )));
                outcomes.push((label, v));
                continue;
            }
            let balancer = config
                .backend_policy(&state, &svc)
                .map(|p| {
                    format!(
                        ", balanced by {} (DestinationRule {}/{})",
                        load_balancer(p.load_balancer),
                        p.namespace,
                        p.name
                    )
                })
                .unwrap_or_default();
            let listed: Vec<String> = endpoints
                .iter()
                .map(|e| format!("{} ({})", e.workload.display_name(), e.addr))
                .collect();
            self.say(format!(
                "Backend: {label}, port {port}: endpoint(s) {}{balancer}.",
                listed.join(", ")
            ));
            let verdicts = endpoints
                .iter()
                .map(|e| self.hop_to_endpoint(&e.workload, e.addr, src_ip, waypoint))
                .collect();
            outcomes.push((label, combine(verdicts)));
        }
        self.forwarded(outcomes)
    }

    /// The hop from the waypoint to one endpoint: HBONE to its agent, which authorizes the
    /// waypoint's identity (the client's address travels in `forwarded`), or plain TCP.
    fn hop_to_endpoint(
        &mut self,
        endpoint: &Arc<Workload>,
        addr: SocketAddr,
        src_ip: IpAddr,
        waypoint: &Arc<Workload>,
    ) -> Verdict {
        if !endpoint.speaks_hbone() {
            self.say(format!(
                "To {} the waypoint connects in plain TCP (it is not in the mesh).",
                endpoint.display_name()
            ));
            return Verdict::Allowed;
        }
        self.say(format!(
            "To {} the waypoint opens HBONE to the agent on {}, proving {}.",
            endpoint.display_name(),
            endpoint.spec.node,
            waypoint.identity
        ));
        let verdict = self.authorize(endpoint, Some(waypoint), src_ip, addr);
        if verdict == Verdict::Denied {
            // The waypoint's tunnel is refused: it answers the client itself.
            let status = ProxyError::ConnectFailure(String::new()).status().as_u16();
            return Verdict::WaypointAnswers(status);
        }
        verdict
    }

    /// One verdict from each backend's: forwarded if every backend takes the request.
    fn forwarded(&mut self, outcomes: Vec<(String, Verdict)>) -> Verdict {
        if outcomes.iter().all(|(_, v)| *v == Verdict::Allowed) {
            return Verdict::WaypointForwards(outcomes.into_iter().map(|(l, _)| l).collect());
        }
        combine(outcomes.into_iter().map(|(_, v)| v).collect())
    }
}

/// The waypoint Gateway (namespace, name) an address names: its Service's hostname is
/// `<gateway>.<namespace>.svc.<domain>` (the controller's `translate::waypoint::address`).
fn gateway_of(address: &api::GatewayAddress) -> Option<(String, String)> {
    match address.destination.as_ref()? {
        Destination::Hostname(h) => {
            let name = h.hostname.split('.').next()?;
            Some((h.namespace.clone(), name.to_owned()))
        }
        Destination::Address(_) => None,
    }
}

/// No route: straight to what was addressed (the waypoint's own default).
fn default_rule(target: &Target) -> Arc<Rule> {
    Arc::new(match target {
        Target::Service(s, _) => Rule::to_service(&s.spec.namespace, &s.spec.hostname),
        Target::Workload(..) => Rule::default(),
    })
}

/// "path prefix /api, header x-canary, query version, method GET".
fn describe_match(m: &Match) -> String {
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("path {p}"),
        PathMatch::Prefix(p) if p == "/" => "any path".to_owned(),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
        PathMatch::Regex(r) => format!("path regex {}", r.as_str()),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    parts.extend(m.headers.iter().map(|(n, _)| format!("header {n}")));
    parts.extend(m.query.iter().map(|(n, _)| format!("query parameter {n}")));
    parts.join(", ")
}

fn describe_headers(m: &api::HeaderModifier) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(m.set.iter().map(|h| format!("set {}: {}", h.name, h.value)));
    parts.extend(m.add.iter().map(|h| format!("add {}: {}", h.name, h.value)));
    parts.extend(m.remove.iter().map(|n| format!("remove {n}")));
    parts.join(", ")
}

fn load_balancer(lb: i32) -> &'static str {
    match api::LoadBalancer::try_from(lb) {
        Ok(api::LoadBalancer::LeastRequest) => "least request",
        Ok(api::LoadBalancer::Random) => "random choice",
        _ => "round robin",
    }
}
