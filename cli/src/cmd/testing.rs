//! Fixed labs for tests of the commands, placed by hand and translated by the controller's
//! code: the demo's objects with `demo` enrolled, the DENY policy and a pod outside the mesh;
//! and a waypoint lab with HTTPRoutes and an L7 policy.

use std::collections::BTreeMap;

use crate::lab::netns::PodInfo;
use crate::lab::objects::{Key, Object, parse};
use crate::lab::state::{LabState, PodRecord};
use crate::lab::view::{self, MeshView};
use crate::lab::{render, waypoints};

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
    let vips = [("demo/echo", "10.96.0.10")];
    let pods = [
        ("demo/client", "10.244.1.2", 1),
        ("demo/server", "10.244.2.2", 2),
        ("legacy/outsider", "10.244.1.3", 1),
    ];
    lab(dir, &text, &vips, &pods)
}

/// `demo` enrolled and using waypoint `demo/waypoint`; Service echo routed by HTTPRoute (a
/// header match to v2, an aborting fault on /teapot, a 90/10 split on /split, the rest to v1
/// with a header set); a DENY of /secret* at the waypoint.
pub const WAYPOINT_LAB: &str = include_str!("testing_waypoint.yaml");

/// [`WAYPOINT_LAB`], placed; with its translated mesh.
pub fn waypoint_fixture(dir: &std::path::Path) -> (LabState, MeshView) {
    let vips = [
        ("demo/echo", "10.96.0.10"),
        ("demo/echo-v1", "10.96.0.11"),
        ("demo/echo-v2", "10.96.0.12"),
        ("demo/waypoint", "10.96.0.13"),
    ];
    let pods = [
        ("demo/client", "10.244.1.2", 1),
        ("demo/server", "10.244.2.2", 2),
        ("demo/server-v2", "10.244.1.4", 1),
        ("demo/waypoint-waypoint", "10.244.2.3", 2),
    ];
    lab(dir, WAYPOINT_LAB, &vips, &pods)
}

/// A lab of `text`'s objects (and the waypoint objects the lab adds), with the given service
/// VIPs and pod placements (`<ns>/<name>`, IP, node index), rendered into `dir`.
fn lab(
    dir: &std::path::Path,
    text: &str,
    vips: &[(&str, &str)],
    placed: &[(&str, &str, u8)],
) -> (LabState, MeshView) {
    let mut objects: BTreeMap<Key, Object> = parse("fixture", text)
        .unwrap()
        .into_iter()
        .map(|o| (o.key.clone(), o))
        .collect();
    for made in waypoints::objects(&objects) {
        objects.insert(made.key.clone(), made);
    }
    let pods = render::desired_pods(&objects).unwrap();
    let mut state = LabState {
        prefix: "t".into(),
        nodes: 2,
        ..LabState::default()
    };
    for (service, vip) in vips {
        state.vips.insert((*service).into(), vip.parse().unwrap());
    }
    for (key, ip, node) in placed {
        let (namespace, name) = key.split_once('/').unwrap();
        state.pods.insert(
            (*key).into(),
            PodRecord::placed(
                namespace,
                name,
                &PodInfo {
                    name: format!("{namespace}-{name}"),
                    netns: format!("t-{namespace}-{name}"),
                    ip: ip.parse().unwrap(),
                    node: *node,
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
