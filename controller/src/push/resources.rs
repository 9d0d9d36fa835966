//! The translated snapshot as versioned, typed wire resources, published as generations.
//!
//! A resource's version is a hash of its encoding: identical content has the identical version in
//! every controller process, so a client reconnecting to a restarted controller, saying what it
//! holds, receives only what actually differs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use ambit_proto::api::{self, resource::Kind, type_url};
use prost::Message;
use sha2::{Digest, Sha256};

use crate::translate::Snapshot;

pub const TYPES: [&str; 3] = [
    type_url::WORKLOAD,
    type_url::SERVICE,
    type_url::AUTHORIZATION,
];

/// Resources of one type by name.
pub type Resources = BTreeMap<String, Arc<api::Resource>>;

/// One published state of the mesh's config.
#[derive(Debug)]
pub struct Generation {
    pub number: u64,
    pub by_type: HashMap<&'static str, Resources>,
    /// Names added, changed or removed since generation `number - 1`, per type.
    pub changed: HashMap<&'static str, BTreeSet<String>>,
    /// When the change that led to this generation was seen (for push latency).
    pub since: Instant,
}

impl Generation {
    pub fn empty() -> Self {
        Generation {
            number: 0,
            by_type: TYPES.iter().map(|t| (*t, Resources::new())).collect(),
            changed: HashMap::new(),
            since: Instant::now(),
        }
    }

    pub fn resources(&self, type_url: &str) -> Option<&Resources> {
        self.by_type.get(type_url)
    }

    /// The generation after `self` holding `snapshot`.
    pub fn next(&self, snapshot: &Snapshot, since: Instant) -> Generation {
        let mut by_type = HashMap::new();
        by_type.insert(
            type_url::WORKLOAD,
            versioned(&snapshot.workloads, |w| Kind::Workload(w.clone())),
        );
        by_type.insert(
            type_url::SERVICE,
            versioned(&snapshot.services, |s| Kind::Service(s.clone())),
        );
        by_type.insert(
            type_url::AUTHORIZATION,
            versioned(&snapshot.authorizations, |a| Kind::Authorization(a.clone())),
        );
        let changed = TYPES
            .iter()
            .map(|t| (*t, changed_names(&self.by_type[t], &by_type[t])))
            .collect();
        Generation {
            number: self.number + 1,
            by_type,
            changed,
            since,
        }
    }

    pub fn is_unchanged(&self) -> bool {
        self.changed.values().all(BTreeSet::is_empty)
    }
}

fn versioned<T: Message>(items: &BTreeMap<String, T>, kind: impl Fn(&T) -> Kind) -> Resources {
    items
        .iter()
        .map(|(name, item)| {
            let digest = Sha256::digest(item.encode_to_vec());
            let version = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            let resource = api::Resource {
                name: name.clone(),
                version,
                kind: Some(kind(item)),
            };
            (name.clone(), Arc::new(resource))
        })
        .collect()
}

fn changed_names(before: &Resources, after: &Resources) -> BTreeSet<String> {
    let mut changed: BTreeSet<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    for (name, r) in after {
        if before.get(name).is_none_or(|b| b.version != r.version) {
            changed.insert(name.clone());
        }
    }
    changed
}
