//! A multi-node cluster made of network namespaces, for end-to-end tests and the local lab.
//!
//! The shape is the one `shared/NETLAB.md` measured to work:
//!
//! ```text
//!            <prefix>-lan: bridge br0
//!           /                        \
//!  <prefix>-node1 (192.168.100.1)   <prefix>-node2 (192.168.100.2)     nodes route between
//!    | veth<h>: 10.244.1.1/32          | veth<h>: 10.244.2.1/32        each other's pod CIDRs
//!  <prefix>-a (10.244.1.2)          <prefix>-c (10.244.2.2)            pods: eth0, default via .1
//! ```
//!
//! Every namespace is named `<prefix>-...`; a topology never creates, changes or deletes an
//! interface, address, route or sysctl of the root namespace (each pod's veth pair is created
//! inside its node's namespace), so several topologies coexist on one machine as long as their
//! prefixes differ. [`Topology::cleanup`] removes a topology from any state, e.g. after a test
//! crashed or leaked it. Everything needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and `ip`
//! (iproute2).
//!
//! Nodes route with `ip_forward=1`, and `rp_filter` is off in node namespaces because node agents
//! use TPROXY and spoof pod source addresses there. The node side of a pod's veth answers ARP for
//! the other pods of the node (`proxy_arp=1`) without the kernel's default proxy delay (up to
//! 0.8 s on the first packet between two pods of a node).
//!
//! Every call blocks (it runs `ip` and waits for it); from async code, use `spawn_blocking`.

mod enter;
mod plan;
mod sys;

use std::collections::BTreeMap;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use enter::{command_in, in_netns};
pub use plan::{ETH0, Ipv4Cidr, MAX_POD_NAME, MAX_PREFIX, NodeInfo, PodInfo, veth_name};

use plan::{BRIDGE, HostAllocator};
use sys::{ip_in, sysctl};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("could not run `{command}` (is iproute2 installed?)")]
    Spawn { command: String, source: io::Error },
    #[error("could not enter network namespace {netns}")]
    Enter { netns: String, source: io::Error },
    #[error("in network namespace {netns}")]
    InNetns { netns: String, source: io::Error },
    #[error("the thread running in network namespace {netns} panicked")]
    Panicked { netns: String },
    #[error("setting {key} in network namespace {netns}")]
    Sysctl {
        netns: String,
        key: String,
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("processes {pids:?} are still in network namespace {netns} after SIGKILL")]
    ProcessesRemain { netns: String, pids: Vec<i32> },
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid node index {0}: nodes are numbered 1 to 254")]
    InvalidNode(u8),
    #[error("node {0} already exists")]
    NodeExists(u8),
    #[error("there is no node {0}")]
    NoSuchNode(u8),
    #[error("pod {0} already exists")]
    PodExists(String),
    #[error("there is no pod {0}")]
    NoSuchPod(String),
    #[error("node {0} has no pod address left (253 pods at most)")]
    AddressesExhausted(u8),
    #[error("pods {pod} and {other} on node {node} would share the interface name {veth}")]
    VethCollision {
        pod: String,
        other: String,
        node: u8,
        veth: String,
    },
}

#[derive(Debug)]
struct Node {
    info: NodeInfo,
    hosts: HostAllocator,
}

/// A lan bridge, nodes and pods in network namespaces named `<prefix>-...` (see the module
/// docs). Dropping it removes it, best effort; [`Topology::destroy`] does the same and reports
/// errors.
#[derive(Debug)]
pub struct Topology {
    prefix: String,
    nodes: BTreeMap<u8, Node>,
    pods: BTreeMap<String, PodInfo>,
    destroyed: bool,
}

impl Topology {
    /// Creates `<prefix>-lan` with the bridge nodes attach to, after removing whatever an earlier
    /// topology with the same prefix left behind. `prefix` has 1 to [`MAX_PREFIX`] ASCII
    /// letters, digits or `_`; no `-`, so that no prefix's namespaces can be mistaken for
    /// another's.
    pub fn create(prefix: &str) -> Result<Topology, NetnsError> {
        Self::cleanup(prefix)?;
        let topology = Topology {
            prefix: prefix.to_owned(),
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            destroyed: false,
        };
        // From here on, a failure drops `topology`, which removes what was made.
        let lan = topology.lan_netns();
        sys::add_netns(&lan)?;
        ip_in(&lan, &["link", "set", "lo", "up"])?;
        ip_in(&lan, &["link", "add", BRIDGE, "type", "bridge"])?;
        ip_in(&lan, &["link", "set", BRIDGE, "up"])?;
        Ok(topology)
    }

    /// Takes over a topology that another process built and left in place with
    /// [`Topology::release`] (the lab: `ambit lab up` builds it, `ambit apply` adds pods later).
    /// Touches nothing in the kernel: `nodes` and `pods` must describe what exists. Addresses
    /// of `pods` are taken, so new pods get fresh ones.
    pub fn adopt(
        prefix: &str,
        nodes: impl IntoIterator<Item = u8>,
        pods: impl IntoIterator<Item = PodInfo>,
    ) -> Result<Topology, NetnsError> {
        plan::validate_prefix(prefix)?;
        let mut topology = Topology {
            prefix: prefix.to_owned(),
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            // Until adoption succeeds, a failure must not tear down what another process owns.
            destroyed: true,
        };
        for index in nodes {
            let info = plan::node_info(prefix, index)?;
            topology.nodes.insert(
                index,
                Node {
                    info,
                    hosts: HostAllocator::new(),
                },
            );
        }
        for pod in pods {
            let node = topology
                .nodes
                .get_mut(&pod.node)
                .ok_or(NetnsError::NoSuchNode(pod.node))?;
            node.hosts.take(pod.ip.octets()[3]);
            topology.pods.insert(pod.name.clone(), pod);
        }
        topology.destroyed = false;
        Ok(topology)
    }

    /// Forgets the topology without removing it: it stays in the kernel for a later
    /// [`Topology::adopt`] or [`Topology::cleanup`].
    pub fn release(mut self) {
        self.destroyed = true;
    }

    /// Adds node `index` (1..=254): netns `<prefix>-node<index>` with `eth0` =
    /// 192.168.100.`index`/24 on the bridge, pod CIDR 10.244.`index`.0/24, `ip_forward=1`,
    /// `rp_filter=0`, and routes between its pod CIDR and every other node's (both ways).
    pub fn add_node(&mut self, index: u8) -> Result<NodeInfo, NetnsError> {
        let info = plan::node_info(&self.prefix, index)?;
        if self.nodes.contains_key(&index) {
            return Err(NetnsError::NodeExists(index));
        }
        if let Err(err) = self.build_node(&info) {
            // Removing the namespace takes its eth0 and the bridge port with it; the routes to
            // it left on other nodes only lead to an address nobody holds.
            for other in self.nodes.values() {
                let cidr = info.pod_cidr.to_string();
                let _ = ip_in(&other.info.netns, &["route", "del", &cidr]);
            }
            let _ = sys::remove_netns(std::slice::from_ref(&info.netns));
            return Err(err);
        }
        self.nodes.insert(
            index,
            Node {
                info: info.clone(),
                hosts: HostAllocator::new(),
            },
        );
        Ok(info)
    }

    fn build_node(&self, info: &NodeInfo) -> Result<(), NetnsError> {
        let ns = info.netns.as_str();
        let lan = self.lan_netns();
        let port = plan::lan_port(info.index);
        sys::add_netns(ns)?;
        // `default` first, so every interface created later starts without rp_filter too.
        sysctl(
            ns,
            &[
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv4.conf.all.rp_filter", "0"),
                ("net.ipv4.conf.default.rp_filter", "0"),
            ],
        )?;
        ip_in(ns, &["link", "set", "lo", "up"])?;
        #[rustfmt::skip]
        ip_in(&lan, &["link", "add", &port, "type", "veth", "peer", "name", ETH0, "netns", ns])?;
        ip_in(&lan, &["link", "set", &port, "master", BRIDGE, "up"])?;
        sysctl(ns, &[("net.ipv4.conf.eth0.rp_filter", "0")])?;
        let address = format!("{}/24", info.ip);
        ip_in(ns, &["addr", "add", &address, "dev", ETH0])?;
        ip_in(ns, &["link", "set", ETH0, "up"])?;
        for other in self.nodes.values() {
            let (theirs, their_ip) = (other.info.pod_cidr.to_string(), other.info.ip.to_string());
            let (ours, our_ip) = (info.pod_cidr.to_string(), info.ip.to_string());
            ip_in(ns, &["route", "replace", &theirs, "via", &their_ip])?;
            ip_in(
                &other.info.netns,
                &["route", "replace", &ours, "via", &our_ip],
            )?;
        }
        Ok(())
    }

    /// Adds pod `name` on node `node`: netns `<prefix>-<name>` whose `eth0` has the next free
    /// address of the node's pod CIDR and a default route via the node's pod gateway. The veth
    /// pair is created inside the node's namespace; its node side ([`PodInfo::node_veth`])
    /// holds the gateway address, a /32 route to the pod, `proxy_arp=1`, `proxy_delay=0` and
    /// `rp_filter=0`. `name` has 1 to [`MAX_POD_NAME`] lowercase letters, digits or `-`, and is
    /// neither `lan` nor `node<N>`.
    pub fn add_pod(&mut self, node: u8, name: &str) -> Result<PodInfo, NetnsError> {
        plan::validate_pod_name(name)?;
        if self.pods.contains_key(name) {
            return Err(NetnsError::PodExists(name.to_owned()));
        }
        let veth = veth_name(name);
        if let Some(other) = self
            .pods
            .values()
            .find(|pod| pod.node == node && pod.node_veth == veth)
        {
            return Err(NetnsError::VethCollision {
                pod: name.to_owned(),
                other: other.name.clone(),
                node,
                veth,
            });
        }
        let prefix = &self.prefix;
        let entry = self
            .nodes
            .get_mut(&node)
            .ok_or(NetnsError::NoSuchNode(node))?;
        let host = entry
            .hosts
            .allocate()
            .ok_or(NetnsError::AddressesExhausted(node))?;
        let pod = PodInfo {
            name: name.to_owned(),
            netns: plan::pod_netns(prefix, name),
            ip: Ipv4Addr::new(10, 244, node, host),
            node,
            node_veth: veth,
        };
        if let Err(err) = build_pod(&entry.info, &pod) {
            entry.hosts.release(host);
            // Deleting either end of a veth pair deletes both, with the pod's address and route.
            let _ = sys::delete_link(&entry.info.netns, &pod.node_veth);
            let _ = sys::remove_netns(std::slice::from_ref(&pod.netns));
            return Err(err);
        }
        self.pods.insert(name.to_owned(), pod.clone());
        Ok(pod)
    }

    /// Removes pod `name`: kills the processes in its namespace, deletes its veth pair (with the
    /// node's route to it) and its namespace, and frees its address.
    pub fn remove_pod(&mut self, name: &str) -> Result<(), NetnsError> {
        let pod = self
            .pods
            .get(name)
            .ok_or_else(|| NetnsError::NoSuchPod(name.to_owned()))?;
        let node = self.nodes.get_mut(&pod.node).expect("a pod's node exists");
        let netns = std::slice::from_ref(&pod.netns);
        sys::kill_processes(netns)?;
        // Before the namespace goes: its deletion frees it (and the pair) only later, or never
        // while a socket some test keeps still holds it open.
        sys::delete_link(&node.info.netns, &pod.node_veth)?;
        sys::remove_netns(netns)?;
        node.hosts.release(pod.ip.octets()[3]);
        self.pods.remove(name);
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace holding the bridge: `<prefix>-lan`.
    pub fn lan_netns(&self) -> String {
        plan::lan_netns(&self.prefix)
    }

    pub fn node(&self, index: u8) -> Option<&NodeInfo> {
        self.nodes.get(&index).map(|node| &node.info)
    }

    pub fn pod(&self, name: &str) -> Option<&PodInfo> {
        self.pods.get(name)
    }

    /// Nodes by index.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.values().map(|node| &node.info)
    }

    /// Pods by name.
    pub fn pods(&self) -> impl Iterator<Item = &PodInfo> {
        self.pods.values()
    }

    /// Removes the whole topology: every process in its namespaces, then the namespaces (and
    /// with them every interface and route it made).
    pub fn destroy(mut self) -> Result<(), NetnsError> {
        self.destroyed = true;
        Self::cleanup(&self.prefix)
    }

    /// Removes every namespace named `<prefix>-*` and kills the processes inside them, whatever
    /// state they are in: a topology that was dropped, leaked, half-built or left by a crashed
    /// process. A prefix that has nothing is fine.
    pub fn cleanup(prefix: &str) -> Result<(), NetnsError> {
        sys::remove_netns(&Self::list(prefix)?)
    }

    /// The namespaces named `<prefix>-*` that exist now, sorted.
    pub fn list(prefix: &str) -> Result<Vec<String>, NetnsError> {
        plan::validate_prefix(prefix)?;
        Ok(sys::list_netns()?
            .into_iter()
            .filter(|name| plan::owned_by(name, prefix))
            .collect())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        if !self.destroyed
            && let Err(err) = Self::cleanup(&self.prefix)
        {
            tracing::warn!(prefix = %self.prefix, error = %crate::error_chain(&err), "could not remove lab topology");
        }
    }
}

fn build_pod(node: &NodeInfo, pod: &PodInfo) -> Result<(), NetnsError> {
    let (node_ns, pod_ns, veth) = (&node.netns, &pod.netns, pod.node_veth.as_str());
    sys::add_netns(pod_ns)?;
    ip_in(pod_ns, &["link", "set", "lo", "up"])?;
    // Created in the node's namespace with the peer put straight into the pod's: the root
    // namespace never sees either end, and no temporary name can clash there.
    #[rustfmt::skip]
    ip_in(node_ns, &["link", "add", veth, "type", "veth", "peer", "name", ETH0, "netns", pod_ns])?;
    sysctl(
        node_ns,
        &[
            (&format!("net.ipv4.conf.{veth}.proxy_arp"), "1"),
            (&format!("net.ipv4.conf.{veth}.rp_filter"), "0"),
            (&format!("net.ipv4.neigh.{veth}.proxy_delay"), "0"),
        ],
    )?;
    let gateway = format!("{}/32", node.pod_gateway);
    ip_in(node_ns, &["addr", "add", &gateway, "dev", veth])?;
    ip_in(node_ns, &["link", "set", veth, "up"])?;
    // A route needs its device up; the pod's own route then finds the gateway on-link.
    let to_pod = format!("{}/32", pod.ip);
    ip_in(node_ns, &["route", "replace", &to_pod, "dev", veth])?;
    let address = format!("{}/24", pod.ip);
    ip_in(pod_ns, &["addr", "add", &address, "dev", ETH0])?;
    ip_in(pod_ns, &["link", "set", ETH0, "up"])?;
    let gateway = node.pod_gateway.to_string();
    ip_in(pod_ns, &["route", "add", "default", "via", &gateway])?;
    Ok(())
}
