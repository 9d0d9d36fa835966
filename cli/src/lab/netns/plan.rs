//! The lab's naming and addressing plan: which namespace, interface and address each node and pod
//! gets. Pure functions and plain data, so the plan is tested without touching the kernel.
//!
//! - node N: netns `<prefix>-node<N>`, `eth0` = 192.168.100.N/24 on the lan bridge, pods in
//!   10.244.N.0/24 with the node's side of every pod veth holding the gateway 10.244.N.1;
//! - pod: netns `<prefix>-<name>`, `eth0` = 10.244.N.x/24, node-side veth `veth<hash of name>`.

use std::fmt;
use std::net::Ipv4Addr;

use super::NetnsError;

/// Longest accepted prefix. With a pod name of at most [`MAX_POD_NAME`] it keeps netns names
/// under 64 characters, which every tool handling `/run/netns` copes with.
pub const MAX_PREFIX: usize = 20;
/// Longest accepted pod name.
pub const MAX_POD_NAME: usize = 40;
/// Name of the bridge in the lan namespace.
pub(crate) const BRIDGE: &str = "br0";
/// Name of the node's interface on the bridge and of the pod's interface towards its node.
pub const ETH0: &str = "eth0";

/// An IPv4 network in CIDR notation (`10.244.1.0/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix_len))
            .unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.network) & mask
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// A node of the topology: a network namespace that routes for its pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// 1..=254; the last byte of the node's address and the third byte of its pod CIDR.
    pub index: u8,
    /// `<prefix>-node<index>`.
    pub netns: String,
    /// The node's address on the lan bridge (`eth0`), 192.168.100.`index`.
    pub ip: Ipv4Addr,
    /// 10.244.`index`.0/24: every pod of this node gets an address from it.
    pub pod_cidr: Ipv4Cidr,
    /// 10.244.`index`.1: the pods' default gateway, held by the node side of every pod veth.
    pub pod_gateway: Ipv4Addr,
}

/// A pod: a network namespace with one interface, `eth0`, towards its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub name: String,
    /// `<prefix>-<name>`.
    pub netns: String,
    /// The pod's address on `eth0`, from its node's pod CIDR.
    pub ip: Ipv4Addr,
    /// Index of the node the pod runs on.
    pub node: u8,
    /// The node's side of the pod's veth pair (in the node's netns): where a node agent sees the
    /// pod's traffic arrive.
    pub node_veth: String,
}

pub(crate) fn node_netns(prefix: &str, index: u8) -> String {
    format!("{prefix}-node{index}")
}

pub(crate) fn lan_netns(prefix: &str) -> String {
    format!("{prefix}-lan")
}

pub(crate) fn pod_netns(prefix: &str, name: &str) -> String {
    format!("{prefix}-{name}")
}

/// The lan side of node `index`'s link to the bridge.
pub(crate) fn lan_port(index: u8) -> String {
    format!("node{index}")
}

pub(crate) fn node_info(prefix: &str, index: u8) -> Result<NodeInfo, NetnsError> {
    if !(1..=254).contains(&index) {
        return Err(NetnsError::InvalidNode(index));
    }
    Ok(NodeInfo {
        index,
        netns: node_netns(prefix, index),
        ip: Ipv4Addr::new(192, 168, 100, index),
        pod_cidr: Ipv4Cidr {
            network: Ipv4Addr::new(10, 244, index, 0),
            prefix_len: 24,
        },
        pod_gateway: Ipv4Addr::new(10, 244, index, 1),
    })
}

/// Node-side veth name of a pod. Derived from the pod's name alone (FNV-1a, 32 bits) so that
/// anyone knowing the pod can find its interface, and short enough for the kernel's 15-character
/// limit. Two pods of one node colliding is caught when the pod is added.
pub fn veth_name(pod: &str) -> String {
    let hash = pod.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    });
    format!("veth{hash:08x}")
}

fn invalid_name(name: &str, reason: &'static str) -> NetnsError {
    NetnsError::InvalidName {
        name: name.to_owned(),
        reason,
    }
}

/// A prefix names every namespace of one topology, so it must not contain `-`: the namespace
/// `a-b-lan` then belongs to prefix `a` only, and cleaning up `a` can never remove the
/// namespaces of a topology `a-b`.
pub(crate) fn validate_prefix(prefix: &str) -> Result<(), NetnsError> {
    let invalid = |reason| Err(invalid_name(prefix, reason));
    if prefix.is_empty() || prefix.len() > MAX_PREFIX {
        return invalid("a prefix has 1 to 20 characters");
    }
    if !prefix
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return invalid("a prefix has only ASCII letters, digits and '_' (no '-')");
    }
    Ok(())
}

pub(crate) fn validate_pod_name(name: &str) -> Result<(), NetnsError> {
    let invalid = |reason| Err(invalid_name(name, reason));
    if name.is_empty() || name.len() > MAX_POD_NAME {
        return invalid("a pod name has 1 to 40 characters");
    }
    let bytes = name.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    if !bytes.iter().all(allowed) || !bytes[0].is_ascii_alphanumeric() {
        return invalid("a pod name has lowercase letters, digits and '-', starting alphanumeric");
    }
    let node_like = name
        .strip_prefix("node")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
    if name == "lan" || node_like {
        return invalid("`lan` and `node<N>` are the names of the topology's own namespaces");
    }
    Ok(())
}

/// Hands out pod addresses 10.244.N.2 to .254 round-robin, so a removed pod's address is
/// reused as late as possible (stale ARP or conntrack entries then cannot meet a new pod).
#[derive(Debug, Clone)]
pub(crate) struct HostAllocator {
    next: u8,
    used: [bool; 256],
}

impl HostAllocator {
    const FIRST: u8 = 2;
    const LAST: u8 = 254;

    pub(crate) fn new() -> Self {
        HostAllocator {
            next: Self::FIRST,
            used: [false; 256],
        }
    }

    pub(crate) fn allocate(&mut self) -> Option<u8> {
        let span = Self::LAST - Self::FIRST + 1;
        let host = (0..span)
            .map(|step| Self::FIRST + (self.next - Self::FIRST + step) % span)
            .find(|host| !self.used[usize::from(*host)])?;
        self.used[usize::from(host)] = true;
        self.next = if host == Self::LAST {
            Self::FIRST
        } else {
            host + 1
        };
        Some(host)
    }

    /// Marks `host` as in use (a pod that already exists), and hands out later addresses
    /// after it, as if it had been the last one allocated.
    pub(crate) fn take(&mut self, host: u8) {
        self.used[usize::from(host)] = true;
        if (Self::FIRST..Self::LAST).contains(&host) && host >= self.next {
            self.next = host + 1;
        }
    }

    pub(crate) fn release(&mut self, host: u8) {
        self.used[usize::from(host)] = false;
    }
}

/// Whether netns `name` belongs to the topology with `prefix`.
pub(crate) fn owned_by(name: &str, prefix: &str) -> bool {
    name.split_once('-')
        .is_some_and(|(owner, _)| owner == prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_index() {
        let node = node_info("t", 3).unwrap();
        assert_eq!(node.netns, "t-node3");
        assert_eq!(node.ip, Ipv4Addr::new(192, 168, 100, 3));
        assert_eq!(node.pod_cidr.to_string(), "10.244.3.0/24");
        assert_eq!(node.pod_gateway, Ipv4Addr::new(10, 244, 3, 1));
        assert!(node.pod_cidr.contains(Ipv4Addr::new(10, 244, 3, 77)));
        assert!(!node.pod_cidr.contains(Ipv4Addr::new(10, 244, 4, 77)));
        assert!(matches!(node_info("t", 0), Err(NetnsError::InvalidNode(0))));
        assert!(matches!(
            node_info("t", 255),
            Err(NetnsError::InvalidNode(255))
        ));
    }

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = veth_name("frontend-0");
        assert_eq!(a, veth_name("frontend-0"));
        assert_ne!(a, veth_name("frontend-1"));
        assert!(a.len() <= 15, "{a} is longer than IFNAMSIZ allows");
        assert!(veth_name(&"x".repeat(MAX_POD_NAME)).len() <= 15);
    }

    #[test]
    fn prefixes_cannot_overlap() {
        assert!(validate_prefix("lab_1").is_ok());
        assert!(validate_prefix("a-b").is_err());
        assert!(validate_prefix("").is_err());
        assert!(validate_prefix(&"p".repeat(MAX_PREFIX + 1)).is_err());
        assert!(owned_by("a-lan", "a"));
        assert!(owned_by("a-node1", "a"));
        assert!(!owned_by("ab-lan", "a"));
        assert!(!owned_by("a", "a"));
        let longest = pod_netns(&"p".repeat(MAX_PREFIX), &"x".repeat(MAX_POD_NAME));
        assert!(longest.len() < 64);
    }

    #[test]
    fn pod_names_cannot_shadow_the_topology() {
        assert!(validate_pod_name("web-1").is_ok());
        assert!(validate_pod_name("node").is_ok());
        assert!(validate_pod_name("nodejs").is_ok());
        for bad in ["lan", "node2", "Web", "-web", "a/b", "a.b", ""] {
            assert!(validate_pod_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn hosts_are_reused_as_late_as_possible() {
        let mut hosts = HostAllocator::new();
        assert_eq!(hosts.allocate(), Some(2));
        assert_eq!(hosts.allocate(), Some(3));
        hosts.release(2);
        assert_eq!(hosts.allocate(), Some(4));
        let rest: Vec<u8> = std::iter::from_fn(|| hosts.allocate()).collect();
        // 5..=254, then the released 2 comes back last.
        assert_eq!(rest.len(), 251);
        assert_eq!(rest.last(), Some(&2));
        assert_eq!(hosts.allocate(), None);
        hosts.release(100);
        assert_eq!(hosts.allocate(), Some(100));
    }
}
