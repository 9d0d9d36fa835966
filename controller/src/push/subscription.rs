//! One client's state for one resource type: what it subscribed to, what it holds (ACKed), and
//! the one response in flight. Pure bookkeeping, no I/O, so the xDS rules are unit-testable.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ambit_proto::api;

use super::resources::{Generation, Resources, Version, Versioned};

/// The names a client may hold of a filtered type, shared so that an unchanged filter is
/// recognised by pointer (see `interest.rs`).
pub type Allowed = Arc<BTreeSet<String>>;

/// A response sent and not yet answered.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub nonce: String,
    pub generation: u64,
    /// name -> new version (`None`: removed).
    pub updates: Vec<(Arc<str>, Option<Version>)>,
    /// The filter the response was computed with.
    pub allowed: Option<Allowed>,
}

#[derive(Debug, Default)]
pub struct Subscription {
    pub wildcard: bool,
    pub names: BTreeSet<String>,
    /// What the client holds: name -> version, as of its last ACK. `None`: a version this
    /// controller did not issue (sent by a reconnecting client), which matches nothing. Names are
    /// shared with the generation's resources, so 10k held resources cost 10k pointers.
    pub acked: HashMap<Arc<str>, Option<Version>>,
    /// The generation `acked` is exactly in sync with (0: unknown, diff everything).
    pub synced: u64,
    /// The filter `acked` was computed with.
    pub synced_allowed: Option<Allowed>,
    pub in_flight: Option<InFlight>,
    /// The first response of the stream is owed even when empty: it tells the client it is synced.
    pub owes_initial: bool,
    pub nacks: u64,
    pub last_nack: Option<String>,
    /// The generation the client last rejected: it is not offered again (that would loop on the
    /// same NACK); the next generation is.
    pub rejected: Option<u64>,
}

/// What to send.
#[derive(Debug, Default)]
pub struct Delta {
    pub resources: Vec<Arc<Versioned>>,
    pub removed: Vec<Arc<str>>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty() && self.removed.is_empty()
    }
}

impl Subscription {
    /// Applies a request's subscription changes. `initial` carries what a reconnecting client
    /// already holds.
    pub fn subscribe(
        &mut self,
        subscribe: &[String],
        unsubscribe: &[String],
        initial: Option<&std::collections::HashMap<String, String>>,
    ) {
        if !subscribe.is_empty() || !unsubscribe.is_empty() {
            // The set of wanted names changed: the next diff must look at everything.
            self.synced = 0;
        }
        for name in subscribe {
            if name == "*" {
                self.wildcard = true;
            } else {
                self.names.insert(name.clone());
            }
        }
        for name in unsubscribe {
            if name == "*" {
                self.wildcard = false;
            } else {
                self.names.remove(name);
            }
        }
        if let Some(initial) = initial {
            self.acked = initial
                .iter()
                .map(|(k, v)| (k.as_str().into(), Version::parse(v)))
                .collect();
            self.synced = 0;
            self.owes_initial = true;
        }
    }

    fn subscribed(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// What the client lacks relative to `generation`, given the names it may have (`allowed`:
    /// `None` means every resource of the type).
    pub fn delta(
        &self,
        generation: &Generation,
        type_url: &str,
        allowed: Option<&Allowed>,
    ) -> Delta {
        let empty = Resources::new();
        let resources = generation.resources(type_url).unwrap_or(&empty);
        let mut delta = Delta::default();
        let mut consider = |name: &str| {
            let desired = resources
                .get(name)
                .filter(|_| self.subscribed(name) && allowed.is_none_or(|a| a.contains(name)));
            match (desired, self.acked.get_key_value(name)) {
                (Some(r), Some((_, Some(held)))) if r.version == *held => {}
                (Some(r), _) => delta.resources.push(r.clone()),
                (None, Some((name, _))) => delta.removed.push(name.clone()),
                (None, None) => {}
            }
        };
        // A few generations behind: only what changed since can differ, provided the filter is
        // the one the client synced with (a new filter can admit or drop unchanged names).
        let same_filter = match (allowed, &self.synced_allowed) {
            (None, _) => true,
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            (Some(_), None) => false,
        };
        let recent = same_filter
            .then(|| generation.changed_since(self.synced, type_url))
            .flatten();
        match recent {
            Some(names) => names.into_iter().for_each(&mut consider),
            None => {
                resources.keys().for_each(|name| consider(name));
                self.acked
                    .keys()
                    .filter(|name| !resources.contains_key(&***name))
                    .for_each(|name| consider(name));
            }
        }
        // `acked` is a hash map: sort so that responses do not depend on its order.
        delta.removed.sort();
        delta
    }

    pub fn sent(
        &mut self,
        nonce: String,
        generation: u64,
        delta: &Delta,
        allowed: Option<Allowed>,
    ) {
        let mut updates: Vec<(Arc<str>, Option<Version>)> = delta
            .resources
            .iter()
            .map(|r| (r.name.clone(), Some(r.version)))
            .collect();
        updates.extend(delta.removed.iter().map(|n| (n.clone(), None)));
        self.in_flight = Some(InFlight {
            nonce,
            generation,
            updates,
            allowed,
        });
        self.owes_initial = false;
    }

    /// Nothing was owed for `generation` (an empty delta, nothing in flight): the client holds
    /// exactly what it would be sent, so later diffs may start from there. Without this a type
    /// that rarely changes (services, policies) would fall out of the change history and be
    /// diffed in full on every push.
    pub fn caught_up(&mut self, generation: u64, allowed: Option<Allowed>) {
        self.synced = generation;
        self.synced_allowed = allowed;
    }

    /// The client answered `nonce`. Returns the generation it acknowledged, on an ACK.
    pub fn answered(&mut self, nonce: &str, error: Option<&api::ErrorDetail>) -> Option<u64> {
        let in_flight = self.in_flight.take_if(|f| f.nonce == nonce)?;
        match error {
            None => {
                for (name, version) in in_flight.updates {
                    match version {
                        Some(v) => self.acked.insert(name, Some(v)),
                        None => self.acked.remove(&name),
                    };
                }
                self.synced = in_flight.generation;
                self.synced_allowed = in_flight.allowed;
                Some(in_flight.generation)
            }
            Some(e) => {
                // The client kept its previous config: `acked` stays as it was, and the next
                // generation is diffed in full against it.
                self.nacks += 1;
                self.last_nack = Some(e.message.clone());
                self.synced = 0;
                self.rejected = Some(in_flight.generation);
                None
            }
        }
    }

    /// A summary for the debug dump.
    pub fn held(&self) -> BTreeMap<String, String> {
        self.acked
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(|v| v.to_string()).unwrap_or_default()))
            .collect()
    }
}
