//! `ambit get pods|services|policies` and `ambit lab status`: tables of the lab as placed and as
//! the controller translates it. The renderers are pure functions of the lab state and the
//! translated mesh, so their output is snapshot-tested.

use ambit_proto::api;
use ambit_ztunnel::state::MeshState;

use super::table::Table;
use crate::lab::state::LabState;

/// How a pod's processes are doing.
fn pod_status(processes: &[crate::lab::procs::Proc]) -> String {
    if processes.is_empty() {
        return "Idle".into();
    }
    let dead = processes.iter().filter(|p| !p.alive()).count();
    if dead == 0 {
        "Running".into()
    } else {
        format!("Failed ({dead} of {} exited)", processes.len())
    }
}

pub fn pods(state: &LabState, mesh: &MeshState) -> String {
    let mut table = Table::new(&["namespace", "name", "node", "ip", "mesh", "status"]);
    for pod in state.pods.values() {
        let mesh_mode = match mesh.workload_by_ip(pod.ip.into()) {
            Some(w) if w.spec.node_captured => "ambient (captured)",
            Some(w) if w.speaks_hbone() => "HBONE (not captured)",
            Some(_) => "-",
            None => "unknown to the mesh",
        };
        table.row(vec![
            pod.namespace.clone(),
            pod.name.clone(),
            LabState::node_name(pod.node),
            pod.ip.to_string(),
            mesh_mode.into(),
            pod_status(&pod.processes),
        ]);
    }
    table.render()
}

pub fn services(mesh: &MeshState) -> String {
    let mut table = Table::new(&["namespace", "name", "vip", "ports", "endpoints", "waypoint"]);
    for svc in mesh.services.values() {
        let ports: Vec<String> = svc
            .spec
            .ports
            .iter()
            .map(|p| match p.target_port {
                0 => p.service_port.to_string(),
                t => format!("{}->{t}", p.service_port),
            })
            .collect();
        let mut endpoints: Vec<String> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| u16::try_from(p.service_port).ok())
            .flat_map(|port| mesh.endpoints(svc, port))
            .filter_map(|(w, port)| Some(format!("{}:{port}", w.addresses.first()?)))
            .collect();
        endpoints.sort();
        endpoints.dedup();
        table.row(vec![
            svc.spec.namespace.clone(),
            svc.spec.name.clone(),
            svc.spec.addresses.join(","),
            ports.join(","),
            if endpoints.is_empty() {
                "<none>".into()
            } else {
                endpoints.join(",")
            },
            gateway(svc.spec.waypoint.as_ref()),
        ]);
    }
    table.render()
}

pub fn policies(mesh: &MeshState) -> String {
    let mut table = Table::new(&["namespace", "name", "action", "rules", "applies to"]);
    for policy in mesh.policies.values() {
        let action = api::Action::try_from(policy.action)
            .map(|a| a.as_str_name().trim_start_matches("ACTION_").to_owned())
            .unwrap_or_else(|_| "?".into());
        table.row(vec![
            policy.namespace.clone(),
            policy.name.clone(),
            action,
            policy.rules.len().to_string(),
            applies_to(mesh, policy),
        ]);
    }
    table.render()
}

/// Where a policy is enforced, in words.
pub fn applies_to(mesh: &MeshState, policy: &api::Authorization) -> String {
    match api::Scope::try_from(policy.scope).unwrap_or(api::Scope::Unspecified) {
        api::Scope::Global => "every workload in the mesh".into(),
        api::Scope::Namespace => format!("every workload in namespace {}", policy.namespace),
        api::Scope::WorkloadSelector => {
            let key = format!("{}/{}", policy.namespace, policy.name);
            let names: Vec<String> = mesh
                .workloads
                .values()
                .filter(|w| w.spec.authorization_policies.contains(&key))
                .map(|w| w.display_name())
                .collect();
            if names.is_empty() {
                "no workload (the selector matches none)".into()
            } else {
                names.join(", ")
            }
        }
        api::Scope::Waypoint => "its waypoint (L7)".into(),
        api::Scope::Unspecified => "nothing (unknown scope)".into(),
    }
}

pub fn gateway(g: Option<&api::GatewayAddress>) -> String {
    crate::lab::view::gateway_name(g).unwrap_or_else(|| "-".into())
}

/// The part of `ambit lab status` that says why a pod shows `Failed`: each of its processes
/// that exited, with the last line it logged (`cannot listen on 0.0.0.0:8080: Address already
/// in use`) and its log. Empty when every process runs.
pub fn exited(state: &LabState) -> String {
    let mut out = String::new();
    for pod in state.pods.values() {
        for proc in pod.processes.iter().filter(|p| !p.alive()) {
            let name = proc
                .log
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            let last = proc.log_tail(1);
            let last = match last.trim() {
                "" => "(it logged nothing)",
                line => line,
            };
            out += &format!(
                "  {}/{}: {name} exited: {last}\n    log: {}\n",
                pod.namespace,
                pod.name,
                proc.log.display()
            );
        }
    }
    if out.is_empty() {
        return out;
    }
    format!("Exited (started again by the next apply, delete or label):\n{out}")
}

/// The nodes part of `ambit lab status`; `agent` says how each node's agent is doing.
pub fn nodes(state: &LabState, agent: impl Fn(u8) -> String) -> String {
    let mut table = Table::new(&["node", "address", "pod cidr", "pods", "agent"]);
    for n in 1..=state.nodes {
        let pods = state.pods.values().filter(|p| p.node == n).count();
        table.row(vec![
            LabState::node_name(n),
            format!("192.168.100.{n}"),
            format!("10.244.{n}.0/24"),
            pods.to_string(),
            agent(n),
        ]);
    }
    table.render()
}

#[cfg(test)]
#[path = "get_tests.rs"]
mod tests;
