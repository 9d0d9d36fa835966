//! The node agents' part of a connection: is the source captured, where does its agent send it
//! (`route::outbound`, the agent's own routing), and what does the agent at the far end decide
//! (`MeshState::authorize`). Through a waypoint, `waypoint` takes over.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::api::MtlsMode;
use ambit_proto::authz::{Attributes, Decision};
use ambit_ztunnel::proxy::route::{self, Route};
use ambit_ztunnel::state::{MeshState, Workload};

use super::{PodPlace, Request, Verdict, combine};
use crate::mesh::MeshView;

pub(super) struct Explainer<'a> {
    pub mesh: &'a MeshView,
    pub request: &'a Request,
    /// The Host header a waypoint would see.
    pub host: &'a str,
    pub lines: Vec<String>,
}

impl Explainer<'_> {
    pub fn say(&mut self, line: String) {
        self.lines.push(format!("  {line}"));
    }

    pub fn state(&self) -> &MeshState {
        &self.mesh.state
    }

    pub fn path(&mut self, source: &PodPlace, target: SocketAddr) -> Verdict {
        let mesh = self.mesh.state.clone();
        let src_node = source.node.clone();
        let src_ip = source.ip;
        let src_workload = mesh
            .workload_by_ip(src_ip)
            .filter(|w| w.spec.node_captured)
            .cloned();
        let Some(src_workload) = src_workload else {
            self.say(
                "The source is not captured (its namespace is not labelled \
                 istio.io/dataplane-mode=ambient, or the pod opts out): the connection leaves the \
                 pod as plain TCP, and no agent acts for the source."
                    .to_owned(),
            );
            return self.uncaptured(src_ip, target);
        };
        self.say(format!(
            "The source is captured: the node agent on {src_node} takes the connection \
             (outbound, port 15001) and acts as {}.",
            src_workload.identity
        ));
        let candidates = match mesh.service_by_vip(target.ip(), target.port()) {
            Some(svc) => {
                let n = mesh
                    .endpoints(svc, target.port())
                    .into_iter()
                    .filter(|(w, _)| w.is_healthy() && !w.addresses.is_empty())
                    .count();
                if svc.spec.waypoint.is_some() {
                    // The waypoint picks the endpoint, per request: one path to explain.
                    1
                } else {
                    if n > 1 {
                        self.say(format!(
                            "{target} is service {}: the agent spreads connections round robin \
                             over {n} endpoints.",
                            service_name(svc)
                        ));
                    }
                    n.max(1)
                }
            }
            None => 1,
        };
        // The agent's own round robin: one call per endpoint visits each once.
        let balancer = route::Balancer::default();
        let verdicts: Vec<Verdict> = (0..candidates)
            .map(|_| route::outbound(&mesh, &src_node, target, &balancer))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|r| self.route(&src_workload, src_ip, &src_node, r))
            .collect();
        combine(verdicts)
    }

    fn route(
        &mut self,
        source: &Arc<Workload>,
        src_ip: IpAddr,
        src_node: &str,
        route: Route,
    ) -> Verdict {
        match route {
            Route::Refuse { reason } => {
                self.say(format!("The agent on {src_node} refuses it: {reason}."));
                Verdict::Denied
            }
            Route::Local {
                target,
                destination,
                ..
            } => {
                self.say(format!(
                    "{target} is {} on the same node, captured: the agent hands it over \
                     directly (no tunnel), authorized as if it had come over mTLS.",
                    destination.display_name()
                ));
                self.authorize(&destination, Some(source), src_ip, target)
            }
            Route::Hbone {
                hbone_address,
                authority,
                identity,
                waypoint: Some(waypoint),
                service,
                peer,
                ..
            } => {
                self.say(format!(
                    "{authority} uses waypoint {waypoint}: HBONE (mutual TLS) to \
                     {hbone_address}, expecting {identity}. The waypoint applies HTTP routing and \
                     L7 policy, then tunnels to the endpoint it picks."
                ));
                self.through_waypoint(source, src_ip, authority, service.as_ref(), &peer)
            }
            Route::Hbone {
                hbone_address,
                authority,
                identity,
                destination,
                peer,
                ..
            } => {
                let dest = destination.unwrap_or(peer);
                self.say(format!(
                    "{authority} is {} on {}, in the mesh: an HBONE tunnel (mutual TLS) from the \
                     agent on {src_node} to {hbone_address}, proving {} and expecting {identity}.",
                    dest.display_name(),
                    dest.spec.node,
                    source.identity
                ));
                self.say(format!(
                    "The agent on {} checks the policy, then connects to {authority} from {src_ip} \
                     (the client's own address).",
                    dest.spec.node
                ));
                self.authorize(&dest, Some(source), src_ip, authority)
            }
            Route::Passthrough {
                target,
                destination,
                ..
            } => {
                let what = destination.map_or_else(
                    || "outside the mesh".to_owned(),
                    |d| format!("{}, which is not captured", d.display_name()),
                );
                self.say(format!(
                    "{target} is {what}: the agent passes it through as plain TCP from {src_ip}; \
                     no mTLS and no policy on this path."
                ));
                Verdict::Allowed
            }
        }
    }

    /// A source no agent acts for: kube-proxy may pick the endpoint, then the destination's
    /// agent (if captured) sees plaintext.
    fn uncaptured(&mut self, src_ip: IpAddr, target: SocketAddr) -> Verdict {
        let mesh = self.mesh.state.clone();
        let Some(svc) = mesh.service_by_vip(target.ip(), target.port()) else {
            return self.plaintext_in(src_ip, target);
        };
        let endpoints: Vec<(Arc<Workload>, u16)> = mesh
            .endpoints(svc, target.port())
            .into_iter()
            .filter(|(w, _)| w.is_healthy() && !w.addresses.is_empty())
            .collect();
        if endpoints.is_empty() {
            self.say(format!(
                "{target} is service {}, which has no ready endpoint: nothing answers.",
                service_name(svc)
            ));
            return Verdict::Denied;
        }
        self.say(format!(
            "{target} is service {}: kube-proxy (in the lab, DNAT in the pod) sends it to one of \
             {} endpoint(s) at random.",
            service_name(svc),
            endpoints.len()
        ));
        let verdicts = endpoints
            .into_iter()
            .map(|(w, port)| self.plaintext_in(src_ip, SocketAddr::new(w.addresses[0], port)))
            .collect();
        combine(verdicts)
    }

    fn plaintext_in(&mut self, src_ip: IpAddr, target: SocketAddr) -> Verdict {
        let Some(dest) = self.state().workload_by_ip(target.ip()).cloned() else {
            self.say(format!(
                "{target} is outside the mesh: plain TCP, no policy."
            ));
            return Verdict::Allowed;
        };
        if !dest.spec.node_captured {
            self.say(format!(
                "{target} is {}, not captured: plain TCP straight to the pod, no policy.",
                dest.display_name()
            ));
            return Verdict::Allowed;
        }
        self.say(format!(
            "{target} is {}, captured: the agent on {} takes the plaintext connection \
             (inbound, port 15006); there is no client identity.",
            dest.display_name(),
            dest.spec.node
        ));
        if dest.spec.mtls_mode == MtlsMode::Strict as i32 {
            self.say("Its PeerAuthentication is STRICT: plaintext is refused.".to_owned());
            return Verdict::Denied;
        }
        self.authorize(&dest, None, src_ip, target)
    }

    /// The L4 decision of `dest`'s agent for a client proving `source` (none: plaintext).
    pub fn authorize(
        &mut self,
        dest: &Workload,
        source: Option<&Arc<Workload>>,
        src_ip: IpAddr,
        target: SocketAddr,
    ) -> Verdict {
        let attrs = Attributes {
            source_identity: source.map(|s| &s.identity),
            source_ip: src_ip,
            destination_ip: target.ip(),
            destination_port: target.port(),
            http: None,
        };
        let mesh = self.mesh.state.clone();
        let names: Vec<String> = mesh
            .policies_for(dest)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let decision = mesh.authorize(dest, &attrs);
        let applying = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        self.say(format!(
            "Policies that apply to {}: {applying}. Decision: {}.",
            dest.display_name(),
            decision.explain()
        ));
        let needs_waypoint = mesh.policies_for(dest).any(|p| {
            p.action == ambit_proto::api::Action::Allow as i32
                && p.rules.iter().any(ambit_proto::authz::needs_http)
        });
        if matches!(decision, Decision::DenyNoMatch { .. }) && needs_waypoint {
            self.say(
                "(An ALLOW rule that needs HTTP attributes matches nothing at L4: such rules \
                 need a waypoint.)"
                    .to_owned(),
            );
        }
        if decision.allowed() {
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }
}

pub(super) fn service_name(svc: &ambit_ztunnel::state::Service) -> String {
    format!("{}/{}", svc.spec.namespace, svc.spec.name)
}
