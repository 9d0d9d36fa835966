//! PeerAuthentication -> the effective mTLS mode of each workload.
//!
//! Resolved here rather than on the agents: workload-level (a selector matching the pod) overrides
//! namespace-level (no selector) overrides mesh-level (no selector, root namespace); `UNSET` at a
//! level defers to the next; nothing set means PERMISSIVE. Among several policies at one level the
//! one with the smallest name wins, so the result never depends on arrival order.

use std::collections::BTreeMap;

use ambit_proto::api;

use super::{Settings, selector_matches};
use crate::model::istio::MtlsMode;
use crate::model::{ClusterState, PeerAuthentication};

pub fn mtls_mode(
    state: &ClusterState,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    settings: &Settings,
) -> api::MtlsMode {
    let workload_level = in_ns(state, namespace)
        .filter(|pa| {
            pa.spec
                .selector
                .as_ref()
                .is_some_and(|s| selector_matches(&s.match_labels, labels))
        })
        .map(mode_of)
        .find(|m| *m != MtlsMode::Unset);
    let namespace_level = || {
        in_ns(state, namespace)
            .filter(|pa| pa.spec.selector.is_none())
            .map(mode_of)
            .find(|m| *m != MtlsMode::Unset)
    };
    let mesh_level = || {
        in_ns(state, &settings.root_namespace)
            .filter(|pa| pa.spec.selector.is_none())
            .map(mode_of)
            .find(|m| *m != MtlsMode::Unset)
    };
    match workload_level.or_else(namespace_level).or_else(mesh_level) {
        Some(MtlsMode::Strict) => api::MtlsMode::Strict,
        Some(MtlsMode::Disable) => api::MtlsMode::Disable,
        Some(MtlsMode::Permissive) | Some(MtlsMode::Unset) | None => api::MtlsMode::Permissive,
    }
}

fn mode_of(pa: &PeerAuthentication) -> MtlsMode {
    pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
}

fn in_ns<'a>(
    state: &'a ClusterState,
    ns: &'a str,
) -> impl Iterator<Item = &'a PeerAuthentication> + 'a {
    state.peer_authentications_in(ns)
}
