//! Makes the running lab match the stored objects: pods created or removed (namespace, address,
//! processes), the controller's manifests rewritten, service VIPs given, and each pod's names
//! and VIP rules brought up to date. Every lab command that changes objects ends here, so there
//! is one path from "what the user asked for" to "what runs", and running it twice changes
//! nothing the second time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::netns::{PodInfo, Topology};
use super::objects::{Key, Store};
use super::render::{self, DesiredPod, Launch};
use super::state::{LabDir, LabState, PodRecord, StateError, write_atomically};
use super::{LabError, kubeproxy, procs, view, waypoints};

/// How long a removed pod's processes get to exit on SIGTERM before SIGKILL.
const POD_GRACE: Duration = Duration::from_secs(2);

/// What a reconcile did, for the command's output.
#[derive(Debug, Default)]
pub struct Changes {
    pub pods_added: Vec<String>,
    pub pods_removed: Vec<String>,
    pub processes_started: usize,
    /// Waypoint pods whose waypoint was started (a pod restarted after a crash is counted in
    /// `processes_started` only, so "starting waypoints" is said only when one starts).
    pub waypoints_started: Vec<String>,
    /// Documents the controller rejects (it serves the rest).
    pub rejected: Vec<String>,
    /// Files some pod's process waits for (see [`settle`]).
    pub waiting: Vec<PathBuf>,
}

/// Upper bound for the controller to write what a waiting process needs (normally well within
/// its 200 ms reload).
const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// [`reconcile`], then again once the files waiting processes need exist (the controller
/// writes a waypoint's token after it has read the Gateway). Needs the controller running.
pub fn settle(dir: &LabDir, state: &mut LabState, launch: &Launch) -> Result<Changes, LabError> {
    let mut changes = reconcile(dir, state, launch)?;
    let start = Instant::now();
    while !changes.waiting.is_empty() {
        if changes.waiting.iter().all(|p| p.exists()) {
            let mut next = reconcile(dir, state, launch)?;
            next.pods_added.append(&mut changes.pods_added);
            next.pods_removed.append(&mut changes.pods_removed);
            next.processes_started += changes.processes_started;
            next.waypoints_started
                .append(&mut changes.waypoints_started);
            changes = next;
            continue;
        }
        if start.elapsed() > WAIT_DEADLINE {
            return Err(LabError::Placement(format!(
                "still waiting for {} after {}s (is the controller running? `ambit lab status`)",
                changes.waiting[0].display(),
                WAIT_DEADLINE.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(changes)
}

/// Brings the lab in line with its objects; saves the state as it goes, so an interrupted
/// reconcile is picked up by the next one (and `lab down` always knows what exists).
pub fn reconcile(dir: &LabDir, state: &mut LabState, launch: &Launch) -> Result<Changes, LabError> {
    let mut objects = Store::new(dir.objects()).load()?;
    for made in waypoints::objects(&objects) {
        objects.insert(made.key.clone(), made);
    }
    let desired = render::desired_pods(&objects).map_err(LabError::Placement)?;
    assign_vips(&objects, state);
    let mut changes = Changes::default();

    let mut topology = Topology::adopt(
        &state.prefix,
        1..=state.nodes,
        state.pods.values().map(pod_info),
    )?;
    let result = sync_pods(dir, state, &desired, &mut topology, &mut changes);
    // The namespaces stay when this command ends: the lab owns them, not this process.
    topology.release();
    result?;

    let files = render::manifests(&objects, &desired, state);
    write_manifests(&dir.manifests(), &files)?;
    let mesh = view::load(&dir.manifests())?;
    changes.rejected = mesh.errors.clone();

    let ports = kubeproxy::service_ports(&mesh.state);
    let rules = kubeproxy::ruleset(&ports);
    let empty = kubeproxy::ruleset(&[]);
    for pod in state.pods.values() {
        kubeproxy::write_hosts(&pod.netns, &kubeproxy::hosts(&pod.namespace, &mesh.state))?;
        let captured = mesh
            .state
            .workload_by_ip(pod.ip.into())
            .is_some_and(|w| w.spec.node_captured);
        kubeproxy::apply(&pod.netns, if captured { &empty } else { &rules })?;
    }

    start_processes(dir, state, &desired, launch, &mut changes)?;
    dir.save(state)?;
    Ok(changes)
}

fn pod_info(record: &PodRecord) -> PodInfo {
    PodInfo {
        name: topology_name(&record.namespace, &record.name),
        netns: record.netns.clone(),
        ip: record.ip,
        node: record.node,
        node_veth: record.node_veth.clone(),
    }
}

/// The pod's name in the topology (and its netns after the prefix): `<namespace>-<name>`.
pub fn topology_name(namespace: &str, name: &str) -> String {
    format!("{namespace}-{name}")
}

/// Keeps each Service's VIP for its life; gives one to a Service that names none.
fn assign_vips(objects: &BTreeMap<Key, super::objects::Object>, state: &mut LabState) {
    let services: BTreeMap<String, &super::objects::Object> = objects
        .iter()
        .filter(|(k, _)| k.kind == "Service")
        .map(|(k, o)| (format!("{}/{}", k.namespace, k.name), o))
        .collect();
    state.vips.retain(|key, _| {
        services
            .get(key)
            .is_some_and(|o| o.spec().get("clusterIP").is_none())
    });
    let mut taken: BTreeSet<Ipv4Addr> = services
        .values()
        .filter_map(|o| render::own_cluster_ip(o))
        .chain(state.vips.values().copied())
        .collect();
    for (key, service) in &services {
        if service.spec().get("clusterIP").is_some() || state.vips.contains_key(key) {
            continue;
        }
        if let Some(vip) = render::next_vip(&taken) {
            taken.insert(vip);
            state.vips.insert(key.clone(), vip);
        }
    }
}

fn sync_pods(
    dir: &LabDir,
    state: &mut LabState,
    desired: &BTreeMap<String, DesiredPod>,
    topology: &mut Topology,
    changes: &mut Changes,
) -> Result<(), LabError> {
    let gone: Vec<String> = state
        .pods
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    // The removed pods' processes stop together, one grace period for all of them.
    procs::stop_all(
        gone.iter().flat_map(|k| &state.pods[k].processes),
        POD_GRACE,
    );
    for key in gone {
        let record = state.pods.get(&key).expect("listed").clone();
        topology.remove_pod(&topology_name(&record.namespace, &record.name))?;
        let _ = std::fs::remove_dir_all(kubeproxy::hosts_path(&record.netns).with_file_name(""));
        state.pods.remove(&key);
        dir.save(state)?;
        changes.pods_removed.push(key);
    }
    for (key, pod) in desired {
        if state.pods.contains_key(key) {
            continue;
        }
        let node = place(state, pod)?;
        let info = topology.add_pod(node, &topology_name(&pod.namespace, &pod.name))?;
        state.pods.insert(
            key.clone(),
            PodRecord::placed(&pod.namespace, &pod.name, &info),
        );
        dir.save(state)?;
        changes.pods_added.push(key.clone());
    }
    Ok(())
}

/// The pod's `spec.nodeName` if it names one, else the node with the fewest pods (lowest index
/// on a tie), as a scheduler spreading pods would.
fn place(state: &LabState, pod: &DesiredPod) -> Result<u8, LabError> {
    if let Some(name) = pod.node_name() {
        return state.node_index(name).ok_or_else(|| {
            LabError::Placement(format!(
                "pod {} asks for node {name:?}; the lab has node1 to node{}",
                pod.key(),
                state.nodes
            ))
        });
    }
    (1..=state.nodes)
        .min_by_key(|n| state.pods.values().filter(|p| p.node == *n).count())
        .ok_or_else(|| LabError::Placement("the lab has no nodes".into()))
}

/// Starts what each pod should run, restarting a pod's processes when that changed or one of
/// them died (a kubelet's restart policy `Always`).
fn start_processes(
    dir: &LabDir,
    state: &mut LabState,
    desired: &BTreeMap<String, DesiredPod>,
    launch: &Launch,
    changes: &mut Changes,
) -> Result<(), LabError> {
    for (key, pod) in desired {
        let record = state
            .pods
            .get_mut(key)
            .expect("every desired pod was placed");
        let node = LabState::node_name(record.node);
        let specs = render::run_specs(pod, &node, record.ip, launch);
        let healthy = record.processes.iter().all(procs::Proc::alive);
        if specs == record.run && healthy {
            continue;
        }
        let missing: Vec<PathBuf> = specs
            .iter()
            .flat_map(|s| &s.needs)
            .filter(|p| !p.exists())
            .cloned()
            .collect();
        if !missing.is_empty() {
            // Started by a later reconcile, once the controller has written them.
            changes.waiting.extend(missing);
            continue;
        }
        procs::stop_all(&record.processes, POD_GRACE);
        record.processes.clear();
        for spec in &specs {
            let proc = procs::spawn(
                &record.netns,
                Path::new(&spec.program),
                &spec.args,
                &spec.env,
                &dir.log(&spec.name),
            )?;
            record.processes.push(proc);
            changes.processes_started += 1;
            if launch.waypoint.program.as_deref() == Some(Path::new(&spec.program)) {
                changes.waypoints_started.push(key.clone());
            }
        }
        record.run = specs;
        dir.save(state)?;
    }
    Ok(())
}

/// Writes the files that changed and removes the ones no longer wanted: the controller
/// re-reads only what changed.
fn write_manifests(dir: &Path, files: &BTreeMap<String, String>) -> Result<(), StateError> {
    let io_err = |path: &Path, source| StateError::Io {
        path: path.to_owned(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && !files.contains_key(&name) {
            std::fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
        }
    }
    for (name, text) in files {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        write_atomically(&path, text.as_bytes())?;
    }
    Ok(())
}
