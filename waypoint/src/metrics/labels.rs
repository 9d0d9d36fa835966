//! Istio's standard request labels, built so that recording a request allocates nothing.
//!
//! Twenty-five string labels per request, copied into a fresh struct and hashed four times (one
//! lookup per request metric), were a fifth of the waypoint's CPU under load. Here each side of a
//! request (the source workload, the destination workload, the destination service) is built once
//! per workload or service ([`LabelCache`]) and shared; a request's label set is three pointers
//! and a few small values, and it hashes a digest computed once instead of the strings. The
//! exposition is unchanged: same names, same order, same values.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use ambit_proto::mesh::{Service, Workload};
use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

/// One workload's labels, as Istio names them for either side of a request.
#[derive(Debug)]
pub struct PeerLabels {
    pub workload: String,
    pub namespace: String,
    pub principal: String,
    /// The canonical service (`app`), also reported as `*_app`.
    pub app: String,
    /// The canonical revision, also reported as `*_version`.
    pub revision: String,
    pub cluster: String,
    digest: u64,
}

impl PeerLabels {
    /// `principal` is the identity the peer proved, which is known even when the workload is not.
    pub fn new(w: Option<&Workload>, principal: String) -> Self {
        let or =
            |value: &str, default: &str| if value.is_empty() { default } else { value }.to_string();
        let (workload, namespace, app, revision, cluster) = match w {
            Some(w) => {
                let name = or(&w.spec.workload_name, &w.spec.name);
                (
                    name.clone(),
                    w.spec.namespace.clone(),
                    or(&w.spec.canonical_name, &name),
                    or(&w.spec.canonical_revision, "latest"),
                    or(&w.spec.cluster_id, "Kubernetes"),
                )
            }
            None => Default::default(),
        };
        let unknown = |s: String| if s.is_empty() { "unknown".into() } else { s };
        let mut labels = PeerLabels {
            workload: unknown(workload),
            namespace: unknown(namespace),
            principal,
            app: unknown(app),
            revision: unknown(revision),
            cluster: unknown(cluster),
            digest: 0,
        };
        labels.digest = digest(&[
            &labels.workload,
            &labels.namespace,
            &labels.principal,
            &labels.app,
            &labels.revision,
            &labels.cluster,
        ]);
        labels
    }

    /// A destination nobody answered for (no route, no endpoint).
    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: OnceLock<Arc<PeerLabels>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| Arc::new(PeerLabels::new(None, "unknown".into())))
            .clone()
    }

    fn same(&self, other: &Self) -> bool {
        self.digest == other.digest
            && (
                self.workload.as_str(),
                self.namespace.as_str(),
                self.principal.as_str(),
            ) == (
                other.workload.as_str(),
                other.namespace.as_str(),
                other.principal.as_str(),
            )
            && (
                self.app.as_str(),
                self.revision.as_str(),
                self.cluster.as_str(),
            ) == (
                other.app.as_str(),
                other.revision.as_str(),
                other.cluster.as_str(),
            )
    }
}

/// The destination service's labels.
#[derive(Debug)]
pub struct ServiceLabels {
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    digest: u64,
}

impl ServiceLabels {
    pub fn new(s: &Service) -> Self {
        Self::from_parts(&s.spec.hostname, &s.spec.name, &s.spec.namespace)
    }

    pub fn unknown() -> Arc<Self> {
        static UNKNOWN: OnceLock<Arc<ServiceLabels>> = OnceLock::new();
        UNKNOWN
            .get_or_init(|| Arc::new(Self::from_parts("unknown", "unknown", "unknown")))
            .clone()
    }

    fn from_parts(hostname: &str, name: &str, namespace: &str) -> Self {
        ServiceLabels {
            hostname: hostname.into(),
            name: name.into(),
            namespace: namespace.into(),
            digest: digest(&[hostname, name, namespace]),
        }
    }

    fn same(&self, other: &Self) -> bool {
        self.digest == other.digest
            && (
                self.hostname.as_str(),
                self.name.as_str(),
                self.namespace.as_str(),
            ) == (
                other.hostname.as_str(),
                other.name.as_str(),
                other.namespace.as_str(),
            )
    }
}

fn digest(values: &[&str]) -> u64 {
    let mut h = DefaultHasher::new();
    values.hash(&mut h);
    h.finish()
}

/// One request's labels (`reporter="waypoint"` and `connection_security_policy="mutual_tls"`
/// always: every request reaches a waypoint over mTLS).
#[derive(Clone, Debug)]
pub struct RequestLabels {
    pub source: Arc<PeerLabels>,
    pub destination: Arc<PeerLabels>,
    pub service: Arc<ServiceLabels>,
    /// `request_protocol`: "grpc" or "http" (Istio reports HTTP/2 as "http" too).
    pub grpc: bool,
    /// 0 until answered.
    pub response_code: u16,
    pub grpc_response_status: Option<u16>,
    /// Envoy's response flags: "-" on success; "NR", "UF", "UO", "UT", "UH", "DI", "FI",
    /// "RBAC", "URX", ... otherwise.
    pub response_flags: &'static str,
}

impl RequestLabels {
    pub fn new(source: Arc<PeerLabels>, grpc: bool) -> Self {
        RequestLabels {
            source,
            destination: PeerLabels::unknown(),
            service: ServiceLabels::unknown(),
            grpc,
            response_code: 0,
            grpc_response_status: None,
            response_flags: "-",
        }
    }

    pub fn request_protocol(&self) -> &'static str {
        if self.grpc { "grpc" } else { "http" }
    }
}

impl Hash for RequestLabels {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.source.digest);
        state.write_u64(self.destination.digest);
        state.write_u64(self.service.digest);
        (self.grpc, self.response_code, self.grpc_response_status).hash(state);
        self.response_flags.hash(state);
    }
}

impl PartialEq for RequestLabels {
    fn eq(&self, other: &Self) -> bool {
        let peer = |a: &Arc<PeerLabels>, b: &Arc<PeerLabels>| Arc::ptr_eq(a, b) || a.same(b);
        (
            self.grpc,
            self.response_code,
            self.grpc_response_status,
            self.response_flags,
        ) == (
            other.grpc,
            other.response_code,
            other.grpc_response_status,
            other.response_flags,
        ) && peer(&self.source, &other.source)
            && peer(&self.destination, &other.destination)
            && (Arc::ptr_eq(&self.service, &other.service) || self.service.same(&other.service))
    }
}

impl Eq for RequestLabels {}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let (s, d, svc) = (&*self.source, &*self.destination, &*self.service);
        let code = self.response_code.to_string();
        let grpc = self
            .grpc_response_status
            .map(|g| g.to_string())
            .unwrap_or_default();
        let labels: [(&str, &str); 25] = [
            ("reporter", "waypoint"),
            ("source_workload", &s.workload),
            ("source_workload_namespace", &s.namespace),
            ("source_principal", &s.principal),
            ("source_app", &s.app),
            ("source_version", &s.revision),
            ("source_canonical_service", &s.app),
            ("source_canonical_revision", &s.revision),
            ("source_cluster", &s.cluster),
            ("destination_workload", &d.workload),
            ("destination_workload_namespace", &d.namespace),
            ("destination_principal", &d.principal),
            ("destination_app", &d.app),
            ("destination_version", &d.revision),
            ("destination_service", &svc.hostname),
            ("destination_service_name", &svc.name),
            ("destination_service_namespace", &svc.namespace),
            ("destination_canonical_service", &d.app),
            ("destination_canonical_revision", &d.revision),
            ("destination_cluster", &d.cluster),
            ("request_protocol", self.request_protocol()),
            ("response_code", &code),
            ("grpc_response_status", &grpc),
            ("response_flags", self.response_flags),
            ("connection_security_policy", "mutual_tls"),
        ];
        for label in labels {
            label.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// Labels per workload and per service, built on first use and rebuilt when the mesh's config
/// replaces the object. Entries for objects the config no longer holds are dropped as the cache
/// grows, so it stays the size of the mesh the waypoint serves.
#[derive(Default)]
pub struct LabelCache {
    workloads: Mutex<Interned<Workload, PeerLabels>>,
    services: Mutex<Interned<Service, ServiceLabels>>,
}

impl LabelCache {
    pub fn workload(&self, w: &Arc<Workload>) -> Arc<PeerLabels> {
        let mut workloads = self.workloads.lock().expect("label cache");
        workloads.get(&w.spec.uid, w, || {
            PeerLabels::new(Some(w), w.identity.to_string())
        })
    }

    pub fn service(&self, s: &Arc<Service>) -> Arc<ServiceLabels> {
        let key = &s.spec.hostname;
        let mut services = self.services.lock().expect("label cache");
        services.get(key, s, || ServiceLabels::new(s))
    }
}

struct Interned<O, L> {
    entries: HashMap<String, (Arc<O>, Arc<L>)>,
    /// Past this many entries, forget the ones whose object the config dropped.
    limit: usize,
}

impl<O, L> Default for Interned<O, L> {
    fn default() -> Self {
        Interned {
            entries: HashMap::new(),
            limit: 64,
        }
    }
}

impl<O, L> Interned<O, L> {
    fn get(&mut self, key: &str, object: &Arc<O>, build: impl FnOnce() -> L) -> Arc<L> {
        if let Some((held, labels)) = self.entries.get(key)
            && Arc::ptr_eq(held, object)
        {
            return labels.clone();
        }
        if self.entries.len() >= self.limit {
            // Only this cache still holds them: the config moved on.
            self.entries
                .retain(|_, (held, _)| Arc::strong_count(held) > 1);
            self.limit = (2 * self.entries.len()).max(64);
        }
        let labels = Arc::new(build());
        self.entries
            .insert(key.to_string(), (object.clone(), labels.clone()));
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    fn workload(name: &str, revision: &str) -> Arc<Workload> {
        let spec = ambit_proto::api::Workload {
            uid: format!("shop/{name}"),
            name: name.into(),
            namespace: "shop".into(),
            canonical_revision: revision.into(),
            ..Default::default()
        };
        Arc::new(Workload {
            spec,
            addresses: Vec::new(),
            identity: ambit_proto::Identity::new("cluster.local", "shop", "backend").unwrap(),
        })
    }

    #[test]
    fn equal_labels_built_apart_are_one_series() {
        let a = workload("echo-1", "v1");
        let labels = |w: &Arc<Workload>| {
            let mut l = RequestLabels::new(Arc::new(PeerLabels::new(None, "p".into())), false);
            l.destination = Arc::new(PeerLabels::new(Some(w), w.identity.to_string()));
            l.response_code = 200;
            l
        };
        let family = Family::<RequestLabels, Counter>::default();
        family.get_or_create(&labels(&a)).inc();
        // The config replaced the workload with an identical one: same series.
        family
            .get_or_create(&labels(&workload("echo-1", "v1")))
            .inc();
        // A new revision is a new series.
        family
            .get_or_create(&labels(&workload("echo-1", "v2")))
            .inc();
        let mut registry = Registry::default();
        registry.register("requests", "", family);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        let series: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("requests_total"))
            .collect();
        assert_eq!(series.len(), 2, "{out}");
        assert!(
            out.contains("destination_canonical_revision=\"v1\""),
            "{out}"
        );
        assert!(
            series
                .iter()
                .any(|l| l.contains("destination_version=\"v1\"") && l.ends_with(" 2")),
            "{out}"
        );
        assert!(out.contains("source_workload=\"unknown\",source_workload_namespace=\"unknown\",source_principal=\"p\""), "{out}");
        assert!(out.contains("response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\",connection_security_policy=\"mutual_tls\""), "{out}");
    }

    #[test]
    fn the_cache_rebuilds_replaced_objects_and_forgets_dropped_ones() {
        let cache = LabelCache::default();
        let v1 = workload("echo-1", "v1");
        let first = cache.workload(&v1);
        assert!(Arc::ptr_eq(&first, &cache.workload(&v1)), "built once");
        let v2 = workload("echo-1", "v2");
        assert_eq!(
            cache.workload(&v2).revision,
            "v2",
            "a replaced object is rebuilt"
        );
        drop((v1, v2));
        let held: Vec<_> = (0..200).map(|i| workload(&format!("w{i}"), "v1")).collect();
        for w in &held {
            cache.workload(w);
        }
        let entries = cache.workloads.lock().unwrap().entries.len();
        assert_eq!(
            entries, 200,
            "every live workload stays, the dropped one went"
        );
    }
}
