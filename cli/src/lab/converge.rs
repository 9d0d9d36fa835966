//! Waiting until the data plane does what the objects say: after `ambit apply` or `label`, the
//! command returns once every agent holds the translated config and its capture rules cover
//! exactly the pods the translation captures. Callers then observe the new behaviour, not a
//! race with the controller's reload (every 200 ms) and the agents' rule sync.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use ambit_ztunnel::state::MeshState;
use serde::Deserialize;

use super::netns::command_in;
use super::state::LabState;
use super::view::gateway_name;
use super::{LabError, admin};

/// Upper bound on a loaded machine; a change normally lands well within a second.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct Dump {
    ready: bool,
    workloads: Vec<DumpWorkload>,
    services: Vec<DumpService>,
    policies: Vec<DumpPolicy>,
}

#[derive(Deserialize)]
struct DumpWorkload {
    uid: String,
    captured: bool,
    waypoint: Option<String>,
}

#[derive(Deserialize)]
struct DumpService {
    name: String,
    namespace: String,
    vips: Vec<String>,
    waypoint: Option<String>,
}

#[derive(Deserialize)]
struct DumpPolicy {
    name: String,
    namespace: String,
}

/// Waits until every agent agrees with `mesh` (see the module docs).
pub fn wait(state: &LabState, mesh: &MeshState) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        let pending: Vec<String> = (1..=state.nodes)
            .filter_map(|n| node_differs(state, mesh, n).err())
            .chain(waypoints_not_ready(state))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        if start.elapsed() > DEADLINE {
            return Err(LabError::NotReady {
                what: "the mesh to apply the change".into(),
                seconds: DEADLINE.as_secs(),
                last: pending.join("; "),
                log: std::path::PathBuf::from("the agents' logs in the lab directory"),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// The lab's waypoints that do not report ready (config received, certificate issued).
fn waypoints_not_ready(state: &LabState) -> Vec<String> {
    state
        .pods
        .values()
        .filter(|p| p.run.iter().any(|r| r.program.ends_with("/ambit-waypoint")))
        .filter_map(
            |p| match admin::get(&p.netns, admin::AGENT_ADMIN, "/ready") {
                Ok((200, _)) => None,
                Ok((_, body)) => Some(format!(
                    "waypoint {}/{}: {}",
                    p.namespace,
                    p.name,
                    body.trim()
                )),
                Err(e) => Some(format!("waypoint {}/{}: {e}", p.namespace, p.name)),
            },
        )
        .collect()
}

/// `Err(what differs)` while node `n`'s agent is behind.
fn node_differs(state: &LabState, mesh: &MeshState, n: u8) -> Result<(), String> {
    let node = LabState::node_name(n);
    let netns = format!("{}-{node}", state.prefix);
    let (status, body) = admin::get(&netns, admin::AGENT_ADMIN, "/config_dump")
        .map_err(|e| format!("{node}: {e}"))?;
    if status != 200 {
        return Err(format!("{node}: config dump answered {status}"));
    }
    let dump: Dump =
        serde_json::from_str(&body).map_err(|e| format!("{node}: config dump: {e}"))?;
    if !dump.ready {
        return Err(format!("{node}: agent not ready"));
    }
    // Capture and waypoints decide paths, so both must have arrived.
    let held: BTreeMap<&str, (bool, Option<String>)> = dump
        .workloads
        .iter()
        .map(|w| (w.uid.as_str(), (w.captured, w.waypoint.clone())))
        .collect();
    let want: BTreeMap<&str, (bool, Option<String>)> = mesh
        .workloads
        .values()
        .map(|w| {
            let waypoint = gateway_name(w.spec.waypoint.as_ref());
            (w.spec.uid.as_str(), (w.spec.node_captured, waypoint))
        })
        .collect();
    if held != want {
        return Err(format!("{node}: workloads not updated yet"));
    }
    let held: BTreeMap<String, (&[String], Option<String>)> = dump
        .services
        .iter()
        .map(|s| {
            let key = format!("{}/{}", s.namespace, s.name);
            (key, (s.vips.as_slice(), s.waypoint.clone()))
        })
        .collect();
    let want: BTreeMap<String, (&[String], Option<String>)> = mesh
        .services
        .values()
        .map(|s| {
            let key = format!("{}/{}", s.spec.namespace, s.spec.name);
            let waypoint = gateway_name(s.spec.waypoint.as_ref());
            (key, (s.spec.addresses.as_slice(), waypoint))
        })
        .collect();
    if held != want {
        return Err(format!("{node}: services not updated yet"));
    }
    let local: Vec<_> = mesh
        .workloads
        .values()
        .filter(|w| w.spec.node == node)
        .collect();
    let wanted_policies: BTreeSet<String> = local
        .iter()
        .flat_map(|w| mesh.policies_for(w))
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    let held_policies: BTreeSet<String> = dump
        .policies
        .iter()
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    if wanted_policies != held_policies {
        return Err(format!("{node}: policies not updated yet"));
    }
    let rules = command_in(&netns, "iptables-save")
        .args(["-t", "mangle"])
        .output()
        .map_err(|e| format!("{node}: iptables-save: {e}"))?;
    let rules = String::from_utf8_lossy(&rules.stdout);
    for w in &local {
        for ip in w.addresses.iter().filter(|ip| ip.is_ipv4()) {
            let rule = format!("-A AMBIT-PREROUTING -s {ip}/32 ");
            if rules.contains(&rule) != w.spec.node_captured {
                return Err(format!("{node}: capture of {ip} not synced yet"));
            }
        }
    }
    Ok(())
}
