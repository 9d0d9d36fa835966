//! A fixed lab for tests of the commands: the demo's objects with `demo` enrolled, the DENY
//! policy and a pod outside the mesh, placed by hand and translated by the controller's code.

use std::collections::BTreeMap;

use crate::lab::netns::PodInfo;
use crate::lab::objects::{Key, Object, parse};
use crate::lab::render;
use crate::lab::state::{LabState, PodRecord};
use crate::lab::view::{self, MeshView};

const MANIFESTS: &str = include_str!("../demo/manifests.yaml");
const DENY: &str = include_str!("../demo/deny.yaml");
const OUTSIDER: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: outsider, namespace: legacy, labels: {app: outsider}}
spec: {nodeName: node1, containers: [{name: c, image: ambit/client}]}
";

/// The demo's objects with `demo` enrolled, the DENY policy and a pod outside the mesh, placed
/// as `lab up` would place them; with its translated mesh.
pub fn fixture(dir: &std::path::Path) -> (LabState, MeshView) {
    let text = format!("{MANIFESTS}---\n{DENY}---\n{OUTSIDER}").replace(
        "  name: demo\n",
        "  name: demo\n  labels: {istio.io/dataplane-mode: ambient}\n",
    );
    let objects: BTreeMap<Key, Object> = parse("fixture", &text)
        .unwrap()
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    let pods = render::desired_pods(&objects).unwrap();
    let mut state = LabState {
        prefix: "t".into(),
        nodes: 2,
        ..LabState::default()
    };
    state
        .vips
        .insert("demo/echo".into(), "10.96.0.10".parse().unwrap());
    for (key, ip, node) in [
        ("demo/client", "10.244.1.2", 1),
        ("demo/server", "10.244.2.2", 2),
        ("legacy/outsider", "10.244.1.3", 1),
    ] {
        let (namespace, name) = key.split_once('/').unwrap();
        state.pods.insert(
            key.into(),
            PodRecord::placed(
                namespace,
                name,
                &PodInfo {
                    name: format!("{namespace}-{name}"),
                    netns: format!("t-{namespace}-{name}"),
                    ip: ip.parse().unwrap(),
                    node,
                    node_veth: "veth0".into(),
                },
            ),
        );
    }
    for (file, text) in render::manifests(&objects, &pods, &state) {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let mesh = view::load(dir).unwrap();
    assert!(mesh.errors.is_empty(), "{:?}", mesh.errors);
    (state, mesh)
}
