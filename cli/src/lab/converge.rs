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
use super::{LabError, admin};

/// Upper bound on a loaded machine; a change normally lands well within a second.
const DEADLINE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(100);

#[derive(Deserialize)]
struct Dump {
    ready: bool,
    workloads: Vec<DumpWorkload>,
    policies: Vec<DumpPolicy>,
}

#[derive(Deserialize)]
struct DumpWorkload {
    uid: String,
    captured: bool,
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
    let held: BTreeMap<&str, bool> = dump
        .workloads
        .iter()
        .map(|w| (w.uid.as_str(), w.captured))
        .collect();
    let want: BTreeMap<&str, bool> = mesh
        .workloads
        .values()
        .map(|w| (w.spec.uid.as_str(), w.spec.node_captured))
        .collect();
    if held != want {
        return Err(format!("{node}: workloads not updated yet"));
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
