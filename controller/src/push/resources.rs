//! The translated resources as versioned, encoded wire resources, published as generations.
//!
//! A resource's version is a hash of its encoding: identical content has the identical version in
//! every controller process, so a client reconnecting to a restarted controller, saying what it
//! holds, receives only what actually differs.
//!
//! Scale: a resource is encoded and hashed once, when it changes, and that one encoding
//! ([`Versioned`]) is shared by every generation that holds it and copied into every response
//! that sends it. A new generation copies the previous one's maps (pointers, ~12k at 10k pods) and
//! replaces only what changed.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use ambit_proto::api::{self, type_url};
use prost::Message;
use prost::bytes::{BufMut, Bytes};
use prost::encoding::{WireType, encode_key, encode_varint};
use sha2::{Digest, Sha256};

use crate::translate::{Changes, Snapshot};

pub const TYPES: [&str; 5] = [
    type_url::WORKLOAD,
    type_url::SERVICE,
    type_url::AUTHORIZATION,
    type_url::ROUTE,
    type_url::BACKEND_POLICY,
];

/// How many generations of changed names are kept: a client at most this far behind is diffed on
/// those names only, one further behind against everything.
const HISTORY: usize = 16;

fn type_index(type_url: &str) -> Option<usize> {
    TYPES.iter().position(|t| *t == type_url)
}

/// A resource version: the first 8 bytes of the SHA-256 of the resource's encoding; on the wire,
/// 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version(pub u64);

impl Version {
    fn of(encoded: &[u8]) -> Version {
        let digest = Sha256::digest(encoded);
        Version(u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")))
    }

    /// A version as a client sent it back; `None` if this controller could not have issued it.
    pub fn parse(s: &str) -> Option<Version> {
        (s.len() == 16)
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
            .map(Version)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A translated resource, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed {
    Workload(Arc<api::Workload>),
    Service(Arc<api::Service>),
    Authorization(Arc<api::Authorization>),
    Route(Arc<api::Route>),
    BackendPolicy(Arc<api::BackendPolicy>),
}

/// One resource with its version and its encoding as an `ambit.v1.Resource`, made once and shared
/// by every generation and response that holds it.
#[derive(Debug)]
pub struct Versioned {
    pub name: Arc<str>,
    pub version: Version,
    pub typed: Typed,
    pub encoded: Bytes,
}

impl Versioned {
    fn new(name: Arc<str>, typed: Typed) -> Versioned {
        // `Resource.kind` field numbers, from discovery.proto.
        let (field, body) = match &typed {
            Typed::Workload(w) => (10, w.encode_to_vec()),
            Typed::Service(s) => (11, s.encode_to_vec()),
            Typed::Authorization(a) => (12, a.encode_to_vec()),
            Typed::Route(r) => (13, r.encode_to_vec()),
            Typed::BackendPolicy(b) => (14, b.encode_to_vec()),
        };
        let version = Version::of(&body);
        let version_text = version.to_string();
        let mut encoded = Vec::with_capacity(body.len() + name.len() + 32);
        put_bytes(1, name.as_bytes(), &mut encoded);
        put_bytes(2, version_text.as_bytes(), &mut encoded);
        put_bytes(field, &body, &mut encoded);
        Versioned {
            name,
            version,
            typed,
            encoded: encoded.into(),
        }
    }

    pub fn workload(&self) -> Option<&api::Workload> {
        match &self.typed {
            Typed::Workload(w) => Some(w),
            _ => None,
        }
    }

    pub fn service(&self) -> Option<&api::Service> {
        match &self.typed {
            Typed::Service(s) => Some(s),
            _ => None,
        }
    }

    pub fn authorization(&self) -> Option<&api::Authorization> {
        match &self.typed {
            Typed::Authorization(a) => Some(a),
            _ => None,
        }
    }

    pub fn route(&self) -> Option<&api::Route> {
        match &self.typed {
            Typed::Route(r) => Some(r),
            _ => None,
        }
    }

    pub fn backend_policy(&self) -> Option<&api::BackendPolicy> {
        match &self.typed {
            Typed::BackendPolicy(b) => Some(b),
            _ => None,
        }
    }
}

/// Writes a length-delimited protobuf field.
pub fn put_bytes(field: u32, bytes: &[u8], buf: &mut impl BufMut) {
    encode_key(field, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

/// Resources of one type by name.
pub type Resources = BTreeMap<Arc<str>, Arc<Versioned>>;

/// Names changed by one generation, per type (in [`TYPES`] order).
type Changed = [BTreeSet<Arc<str>>; TYPES.len()];

/// One published state of the mesh's config.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    by_type: [Resources; TYPES.len()],
    /// Workload names by node, so per-node questions (which policies a node agent needs, which
    /// identities it may obtain) read one node's workloads, not the mesh's.
    by_node: HashMap<String, Arc<BTreeSet<Arc<str>>>>,
    /// What each of the last [`HISTORY`] generations changed, this one last.
    recent: VecDeque<(u64, Arc<Changed>)>,
    /// When the change that led to this generation was seen (for push latency).
    pub since: Instant,
}

impl Generation {
    pub fn empty() -> Self {
        Generation {
            number: 0,
            by_type: Default::default(),
            by_node: HashMap::new(),
            recent: VecDeque::new(),
            since: Instant::now(),
        }
    }

    pub fn resources(&self, type_url: &str) -> Option<&Resources> {
        type_index(type_url).map(|i| &self.by_type[i])
    }

    /// The names of the workloads on `node`. Replaced (a new `Arc`) by every generation that
    /// changes any of them, so an unchanged pointer means an unchanged node.
    pub fn node_workloads(&self, node: &str) -> Option<&Arc<BTreeSet<Arc<str>>>> {
        self.by_node.get(node)
    }

    /// The workloads scheduled on `node`.
    pub fn workloads_on(&self, node: &str) -> impl Iterator<Item = &api::Workload> {
        let workloads = &self.by_type[0];
        self.by_node
            .get(node)
            .into_iter()
            .flat_map(|names| names.iter())
            .filter_map(|name| workloads.get(name)?.workload())
    }

    /// Whether this generation changed nothing.
    pub fn is_unchanged(&self) -> bool {
        self.recent
            .back()
            .is_none_or(|(n, c)| *n != self.number || c.iter().all(BTreeSet::is_empty))
    }

    /// The names of `type_url` that changed after generation `synced` up to this one, if this
    /// generation still knows (`synced` at most [`HISTORY`] generations back).
    pub fn changed_since(&self, synced: u64, type_url: &str) -> Option<BTreeSet<&str>> {
        let i = type_index(type_url)?;
        let oldest = self.recent.front().map_or(self.number + 1, |(n, _)| *n);
        if synced == 0 || synced + 1 < oldest {
            return None;
        }
        Some(
            self.recent
                .iter()
                .filter(|(n, _)| *n > synced)
                .flat_map(|(_, c)| c[i].iter().map(|name| &**name))
                .collect(),
        )
    }

    /// The generation after `self` holding `snapshot`: everything compared.
    pub fn next(&self, snapshot: &Snapshot, since: Instant) -> Generation {
        let mut changes = Changes::default();
        diff_into(
            &self.by_type[0],
            &snapshot.workloads,
            &mut changes.workloads,
            |v| v.workload(),
        );
        diff_into(
            &self.by_type[1],
            &snapshot.services,
            &mut changes.services,
            |v| v.service(),
        );
        diff_into(
            &self.by_type[2],
            &snapshot.authorizations,
            &mut changes.authorizations,
            |v| v.authorization(),
        );
        diff_into(
            &self.by_type[3],
            &snapshot.routes,
            &mut changes.routes,
            |v| v.route(),
        );
        diff_into(
            &self.by_type[4],
            &snapshot.backend_policies,
            &mut changes.backend_policies,
            |v| v.backend_policy(),
        );
        self.apply(&changes, since)
    }

    /// The generation after `self` with `changes` applied: only changed resources are encoded.
    pub fn apply(&self, changes: &Changes, since: Instant) -> Generation {
        let mut by_type = self.by_type.clone();
        let mut by_node = self.by_node.clone();
        let mut changed: Changed = Default::default();
        for (name, w) in &changes.workloads {
            let name: Arc<str> = name.as_str().into();
            if let Some(old) = by_type[0].get(&name).and_then(|v| v.workload())
                && let Some(names) = by_node.get_mut(&old.node)
            {
                Arc::make_mut(names).remove(&name);
            }
            if let Some(w) = w {
                let names = by_node.entry(w.node.clone()).or_default();
                Arc::make_mut(names).insert(name.clone());
            }
            let typed = w.clone().map(Typed::Workload);
            replace(&mut by_type[0], &mut changed[0], name, typed);
        }
        by_node.retain(|_, names| !names.is_empty());
        replace_all(
            &mut by_type[1],
            &mut changed[1],
            &changes.services,
            Typed::Service,
        );
        replace_all(
            &mut by_type[2],
            &mut changed[2],
            &changes.authorizations,
            Typed::Authorization,
        );
        replace_all(
            &mut by_type[3],
            &mut changed[3],
            &changes.routes,
            Typed::Route,
        );
        replace_all(
            &mut by_type[4],
            &mut changed[4],
            &changes.backend_policies,
            Typed::BackendPolicy,
        );
        let number = self.number + 1;
        let mut recent = self.recent.clone();
        recent.push_back((number, Arc::new(changed)));
        if recent.len() > HISTORY {
            recent.pop_front();
        }
        Generation {
            number,
            by_type,
            by_node,
            recent,
            since,
        }
    }
}

/// Puts the new version of `name` (or its removal) into `resources`, noting it in `changed` if
/// its content differs.
fn replace(
    resources: &mut Resources,
    changed: &mut BTreeSet<Arc<str>>,
    name: Arc<str>,
    typed: Option<Typed>,
) {
    match typed {
        Some(typed) => {
            let new = Versioned::new(name.clone(), typed);
            if resources
                .get(&name)
                .is_none_or(|old| old.version != new.version)
            {
                resources.insert(name.clone(), Arc::new(new));
                changed.insert(name);
            }
        }
        None => {
            if resources.remove(&name).is_some() {
                changed.insert(name);
            }
        }
    }
}

fn replace_all<T>(
    resources: &mut Resources,
    changed: &mut BTreeSet<Arc<str>>,
    changes: &BTreeMap<String, Option<Arc<T>>>,
    typed: fn(Arc<T>) -> Typed,
) {
    for (name, value) in changes {
        replace(
            resources,
            changed,
            name.as_str().into(),
            value.clone().map(typed),
        );
    }
}

/// Records in `changes` what differs between the resources held and a snapshot's.
fn diff_into<T: PartialEq>(
    held: &Resources,
    wanted: &BTreeMap<String, Arc<T>>,
    changes: &mut BTreeMap<String, Option<Arc<T>>>,
    typed: impl Fn(&Versioned) -> Option<&T>,
) {
    for name in held.keys() {
        if !wanted.contains_key(&**name) {
            changes.insert(name.to_string(), None);
        }
    }
    for (name, value) in wanted {
        let same = held
            .get(name.as_str())
            .and_then(|v| typed(v))
            .is_some_and(|held| held == &**value);
        if !same {
            changes.insert(name.clone(), Some(value.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(node: &str, ip: &str) -> Changes {
        let mut changes = Changes::default();
        let w = api::Workload {
            uid: "w".into(),
            node: node.into(),
            addresses: vec![ip.into()],
            ..Default::default()
        };
        changes.workloads.insert("w".into(), Some(Arc::new(w)));
        changes
    }

    #[test]
    fn history_lets_a_lagging_client_diff_only_what_changed_since() {
        let now = Instant::now();
        let mut g = Generation::empty().apply(&on("node-1", "10.0.0.1"), now);
        let mut other = Changes::default();
        other.services.insert("shop/x".into(), Some(Arc::default()));
        g = g.apply(&other, now);
        assert_eq!(
            g.changed_since(1, type_url::SERVICE),
            Some(["shop/x"].into())
        );
        assert_eq!(
            g.changed_since(1, type_url::WORKLOAD),
            Some(BTreeSet::new())
        );
        assert_eq!(g.changed_since(0, type_url::WORKLOAD), None, "0: unknown");
        g = g.apply(&on("node-2", "10.0.0.2"), now);
        assert_eq!(g.changed_since(1, type_url::WORKLOAD), Some(["w"].into()));
        assert_eq!(g.workloads_on("node-1").count(), 0, "moved");
        assert_eq!(g.workloads_on("node-2").count(), 1);
        // Identical content is no change, and publishes nothing new.
        let same = g.apply(&on("node-2", "10.0.0.2"), now);
        assert!(same.is_unchanged());
        for _ in 0..HISTORY {
            g = g.apply(&other, now);
        }
        // Generation 3 changed the workload; generations 4 to 19 are remembered, 3 is not.
        assert_eq!(
            g.changed_since(2, type_url::WORKLOAD),
            None,
            "too far behind"
        );
        assert_eq!(
            g.changed_since(3, type_url::WORKLOAD),
            Some(BTreeSet::new())
        );
    }
}
