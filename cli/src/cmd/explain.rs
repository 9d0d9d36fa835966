//! `ambit explain <src-pod> <destination>[:port]`: the path one connection takes and the
//! authorization decision, in words.
//!
//! It decides nothing itself: the route is the node agent's own `route::outbound`, and the
//! decision is `MeshState::authorize` (that is, `ambit_proto::authz::evaluate`) over the policies
//! the agent would hold, on the mesh the controller's translation produces. What it adds is the
//! part of the path no agent sees (is the source captured? does kube-proxy pick the endpoint?)
//! and the attributes the destination's agent would evaluate with.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ambit_proto::api::MtlsMode;
use ambit_proto::authz::{Attributes, Decision};
use ambit_ztunnel::proxy::route::{self, Route};
use ambit_ztunnel::state::{MeshState, Workload};

use crate::lab::state::{LabState, PodRecord};

/// How the connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It reaches the destination.
    Allowed,
    /// An agent refuses it (policy, STRICT mTLS, no endpoint).
    Denied,
    /// A waypoint decides (L7 policy, routing); the node agents let it through to the waypoint.
    AtWaypoint,
    /// Endpoints of one service differ.
    DependsOnEndpoint,
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub lines: Vec<String>,
    pub verdict: Verdict,
}

/// Explains a connection from pod `src` to `dst` (a pod, a service name, or an IP, each with an
/// optional `:port`).
pub fn explain(
    lab: &LabState,
    mesh: &MeshState,
    src: &str,
    dst: &str,
) -> Result<Explanation, String> {
    let source = lab.find_pod(src)?;
    let (target, label) = resolve(lab, mesh, source, dst)?;
    let mut out = Explainer {
        mesh,
        lines: vec![format!(
            "{}/{} ({} on {}) -> {label}",
            source.namespace,
            source.name,
            source.ip,
            LabState::node_name(source.node)
        )],
    };
    let verdict = out.path(source, target);
    let summary = match verdict {
        Verdict::Allowed => "ALLOWED: the connection reaches the destination.",
        Verdict::Denied => "DENIED: the client sees the connection closed or refused.",
        Verdict::AtWaypoint => "DECIDED AT THE WAYPOINT: L7 policy and routing apply there.",
        Verdict::DependsOnEndpoint => "DEPENDS ON THE ENDPOINT picked (see each above).",
    };
    out.lines.push(String::new());
    out.lines.push(format!("Verdict: {summary}"));
    Ok(Explanation {
        lines: out.lines,
        verdict,
    })
}

/// The destination address, and how to name it.
fn resolve(
    lab: &LabState,
    mesh: &MeshState,
    source: &PodRecord,
    dst: &str,
) -> Result<(SocketAddr, String), String> {
    let (host, port) = match dst.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad port in {dst:?}"))?;
            (host, Some(port))
        }
        _ => (dst, None),
    };
    let need_port = |what: &str| format!("give the port: `{what}:<port>`");
    if let Ok(ip) = host.parse::<IpAddr>() {
        let port = port.ok_or_else(|| need_port(host))?;
        return Ok((SocketAddr::new(ip, port), format!("{ip}:{port}")));
    }
    if let Ok(pod) = lab.find_pod(host) {
        let port = port.ok_or_else(|| need_port(host))?;
        let label = format!("pod {}/{} ({}:{port})", pod.namespace, pod.name, pod.ip);
        return Ok((SocketAddr::new(pod.ip.into(), port), label));
    }
    // Service names as a pod of the source's namespace would write them.
    let mut parts = host.splitn(3, '.');
    let name = parts.next().unwrap_or_default();
    let namespace = parts.next().unwrap_or(&source.namespace);
    let service = mesh
        .services
        .values()
        .find(|s| s.spec.name == name && s.spec.namespace == namespace)
        .ok_or_else(|| {
            format!("{host:?} is no pod, service or IP address the lab knows (`ambit get pods`, `ambit get services`)")
        })?;
    let vip = *service
        .vips
        .first()
        .ok_or_else(|| format!("service {namespace}/{name} has no VIP"))?;
    let port = match port {
        Some(p) => p,
        None => match service.spec.ports.as_slice() {
            [only] => u16::try_from(only.service_port).map_err(|_| "bad service port")?,
            _ => return Err(need_port(host)),
        },
    };
    let label = format!("service {namespace}/{name} ({vip}:{port})");
    Ok((SocketAddr::new(vip, port), label))
}

struct Explainer<'a> {
    mesh: &'a MeshState,
    lines: Vec<String>,
}

impl Explainer<'_> {
    fn say(&mut self, line: String) {
        self.lines.push(format!("  {line}"));
    }

    fn path(&mut self, source: &PodRecord, target: SocketAddr) -> Verdict {
        let mesh = self.mesh;
        let src_node = LabState::node_name(source.node);
        let src_ip: IpAddr = source.ip.into();
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
                if svc.spec.waypoint.is_none() && n > 1 {
                    self.say(format!(
                        "{} is service {}: the agent spreads connections round robin over {n} endpoints.",
                        target,
                        service_name(svc)
                    ));
                }
                n.max(1)
            }
            None => 1,
        };
        // The agent's own round robin: one call per endpoint visits each once.
        let balancer = route::Balancer::default();
        let verdicts: Vec<Verdict> = (0..candidates)
            .map(|_| route::outbound(mesh, &src_node, target, &balancer))
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
                ..
            } => {
                self.say(format!(
                    "{authority} uses waypoint {waypoint}: HBONE (mutual TLS) to \
                     {hbone_address}, expecting {identity}. The waypoint applies HTTP routing and \
                     L7 policy, then tunnels to the endpoint it picks."
                ));
                Verdict::AtWaypoint
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
        let mesh = self.mesh;
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
            "{target} is service {}: kube-proxy (the lab's DNAT in the pod) sends it to one of \
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
        let Some(dest) = self.mesh.workload_by_ip(target.ip()).cloned() else {
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

    fn authorize(
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
        let names: Vec<String> = self
            .mesh
            .policies_for(dest)
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let decision = self.mesh.authorize(dest, &attrs);
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
        let needs_waypoint = self.mesh.policies_for(dest).any(|p| {
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

fn service_name(svc: &ambit_ztunnel::state::Service) -> String {
    format!("{}/{}", svc.spec.namespace, svc.spec.name)
}

fn combine(verdicts: Vec<Verdict>) -> Verdict {
    match verdicts.split_first() {
        Some((first, rest)) if rest.iter().all(|v| v == first) => first.clone(),
        Some(_) => Verdict::DependsOnEndpoint,
        None => Verdict::Denied,
    }
}

#[cfg(test)]
#[path = "explain_tests.rs"]
mod tests;
