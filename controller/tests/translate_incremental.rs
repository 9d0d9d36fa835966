//! Incremental translation must always agree with translation from scratch: after every change,
//! the translator's snapshot equals `translate(state)`, and what it reports as changed is exactly
//! what differs between the two full translations. Checked over a scripted sequence that touches
//! every dependency (namespace labels, services, selector and root-namespace policies, peer
//! authentication, waypoints across namespaces and for service accounts, routes and the faults
//! they name and the listeners they attach through, backend policies) and over a long seeded
//! random one.

mod translate_common;

use std::collections::BTreeSet;
use std::path::Path;

use ambit_controller::model::{ClusterState, Kind, Object, ObjectRef};
use ambit_controller::source::yaml::parse_file;
use ambit_controller::translate::{Changes, Settings, Snapshot, Translator, translate};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use translate_common::{AMBIENT_NS, pod, policy};

fn object(yaml: &str) -> Object {
    let mut parsed = parse_file(Path::new("step.yaml"), yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.objects.len(), 1, "one object per step: {yaml}");
    parsed.objects.remove(0)
}

fn key(kind: Kind, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind,
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The names that differ between two snapshots, per type.
fn differing(before: &Snapshot, after: &Snapshot) -> [BTreeSet<String>; 5] {
    fn names<T: PartialEq>(
        a: &std::collections::BTreeMap<String, T>,
        b: &std::collections::BTreeMap<String, T>,
    ) -> BTreeSet<String> {
        a.keys()
            .chain(b.keys())
            .filter(|k| a.get(*k) != b.get(*k))
            .cloned()
            .collect()
    }
    [
        names(&before.workloads, &after.workloads),
        names(&before.services, &after.services),
        names(&before.authorizations, &after.authorizations),
        names(&before.routes, &after.routes),
        names(&before.backend_policies, &after.backend_policies),
    ]
}

fn reported(changes: &Changes) -> [BTreeSet<String>; 5] {
    [
        changes.workloads.keys().cloned().collect(),
        changes.services.keys().cloned().collect(),
        changes.authorizations.keys().cloned().collect(),
        changes.routes.keys().cloned().collect(),
        changes.backend_policies.keys().cloned().collect(),
    ]
}

/// A state and a translator that follows it incrementally, checked after every step.
struct Follower {
    state: ClusterState,
    translated: ClusterState,
    translator: Translator,
    settings: Settings,
    /// How many resources the steps changed in all (so a test can tell it exercised something).
    changed: usize,
}

impl Follower {
    fn new(yaml: &str) -> Follower {
        let settings = Settings::default();
        let state = translate_common::state(yaml);
        let mut translator = Translator::new(settings.clone());
        translator.rebuild(&state);
        assert_eq!(*translator.snapshot(), translate(&state, &settings));
        Follower {
            translated: state.clone(),
            state,
            translator,
            settings,
            changed: 0,
        }
    }

    fn check(&mut self, step: &str) {
        let before = translate(&self.translated, &self.settings);
        let changes = self
            .translator
            .update(&self.state, &self.state.changes_since(&self.translated));
        let expected = translate(&self.state, &self.settings);
        assert_eq!(
            *self.translator.snapshot(),
            expected,
            "after {step}: incremental != from scratch"
        );
        assert_eq!(
            reported(&changes),
            differing(&before, &expected),
            "after {step}: reported changes"
        );
        self.changed += changes.workloads.len() + changes.services.len();
        self.changed += changes.authorizations.len();
        self.changed += changes.routes.len() + changes.backend_policies.len();
        self.translated = self.state.clone();
    }

    fn apply(&mut self, yaml: &str) {
        self.state.upsert(object(yaml));
        self.check(yaml);
    }

    fn delete(&mut self, key: ObjectRef) {
        let step = format!("deleting {key}");
        self.state.remove(&key);
        self.check(&step);
    }
}

const ROOT: &str = "\napiVersion: v1\nkind: Namespace\nmetadata: {name: istio-system}\n---";

fn namespace(name: &str, labels: &str) -> String {
    format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{labels}}}}}\n")
}

fn service(ns: &str, name: &str, selector: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{clusterIP: 10.96.0.10, selector: {{{selector}}}, ports: [{{port: 80, targetPort: http}}]}}\n"
    )
}

fn waypoint(ns: &str, name: &str, class: &str, waypoint_for: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/waypoint-for: {waypoint_for}}}}}\n\
         spec: {{gatewayClassName: {class}, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n"
    )
}

/// A waypoint for one service account, admitting routes from namespaces labelled `routes: yes`.
fn account_waypoint(ns: &str, name: &str, account: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: {ns}, labels: {{istio.io/waypoint-for: all}},\n  \
         annotations: {{istio.io/for-service-account: {account}}}}}\n\
         spec: {{gatewayClassName: ambit-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE,\n  \
         allowedRoutes: {{namespaces: {{from: Selector, selector: {{matchLabels: {{routes: 'yes'}}}}}}}}}}]}}\n"
    )
}

fn gateway_route(ns: &str, name: &str, gateway_ns: &str, gateway: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{parentRefs: [{{name: {gateway}, namespace: {gateway_ns}}}], rules: [{{backendRefs: [{{name: front, port: 80}}]}}]}}\n"
    )
}

fn peer_authentication(ns: &str, name: &str, selector: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{{selector}mtls: {{mode: {mode}}}}}\n"
    )
}

fn http_route(ns: &str, name: &str, fault: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec:\n  parentRefs: [{{group: '', kind: Service, name: front}}]\n  rules:\n  \
         - backendRefs: [{{name: front, port: 80}}]\n    \
         filters: [{{type: ExtensionRef, extensionRef: {{group: ambit.dev, kind: HTTPFault, name: {fault}}}}}]\n"
    )
}

fn http_fault(ns: &str, name: &str, status: u32) -> String {
    format!(
        "apiVersion: ambit.dev/v1alpha1\nkind: HTTPFault\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{abort: {{httpStatus: {status}, percentage: {{value: 10}}}}}}\n"
    )
}

fn destination_rule(ns: &str, name: &str, host: &str, lb: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         spec: {{host: {host}, trafficPolicy: {{loadBalancer: {{simple: {lb}}}}}}}\n"
    )
}

fn selector_policy(ns: &str, name: &str, app: &str) -> String {
    policy(
        ns,
        name,
        &format!("  selector: {{matchLabels: {{app: {app}}}}}\n  rules: [{{}}]"),
    )
}

#[test]
fn every_kind_of_change_matches_a_translation_from_scratch() {
    let base = [
        AMBIENT_NS,
        ROOT,
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod("shop", "db", "", "10.244.1.6"),
        &pod("legacy", "old", "", "10.244.1.7"),
    ]
    .concat();
    let mut f = Follower::new(&base);

    // Pods: added, relabelled into a service's selector, deleted.
    f.apply(&pod("shop", "web", "", "10.244.1.8"));
    f.apply(&service("shop", "front", "role: front", ""));
    f.apply(&pod("shop", "web", ", role: front", "10.244.1.8"));
    f.apply(&pod("shop", "web", ", role: front", "10.244.1.9"));
    // Services: a selector that now matches other pods, then gone.
    f.apply(&service("shop", "front", "app: cart", ""));
    f.delete(key(Kind::Service, "shop", "front"));

    // Namespace labels: capture turned on for every pod of a namespace, then off.
    f.apply(&namespace("legacy", "istio.io/dataplane-mode: ambient"));
    f.apply(&namespace("legacy", ""));

    // Selector policies in a namespace and in the root namespace (which select mesh-wide).
    f.apply(&selector_policy("shop", "cart-only", "cart"));
    f.apply(&selector_policy("shop", "cart-only", "db"));
    f.apply(&selector_policy("istio-system", "mesh-cart", "cart"));
    f.apply(&policy("shop", "ns-wide", "  rules: [{}]"));
    f.delete(key(Kind::AuthorizationPolicy, "shop", "cart-only"));
    f.delete(key(Kind::AuthorizationPolicy, "istio-system", "mesh-cart"));

    // PeerAuthentication at workload, namespace and mesh level.
    f.apply(&peer_authentication(
        "shop",
        "db-strict",
        "selector: {matchLabels: {app: db}}, ",
        "STRICT",
    ));
    f.apply(&peer_authentication("shop", "ns", "", "DISABLE"));
    f.apply(&peer_authentication("istio-system", "mesh", "", "STRICT"));
    f.delete(key(Kind::PeerAuthentication, "shop", "ns"));

    // Waypoints: named by a namespace, in another namespace, created after the label, changed.
    f.apply(&namespace(
        "shop",
        "istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: infra",
    ));
    f.apply(&service("shop", "front", "app: web", ""));
    f.apply(&waypoint("infra", "wp", "ambit-waypoint", "all"));
    f.apply(&waypoint("infra", "wp", "ambit-waypoint", "workload"));
    f.apply(&waypoint("infra", "wp", "other-class", "all"));
    f.apply(&pod(
        "shop",
        "wp-pod",
        ", gateway.networking.k8s.io/gateway-name: wp2",
        "10.244.1.20",
    ));
    f.apply(&waypoint("shop", "wp2", "istio-waypoint", "service"));
    f.delete(key(Kind::Gateway, "infra", "wp"));

    // A waypoint for one service account: a service all of whose pods run as it follows it, a
    // pod of another account joining the service takes it off, and leaving puts it back.
    f.apply(&account_waypoint("shop", "cart-wp", "cart-sa"));
    f.apply(&service("shop", "carts", "tier: carts", ""));
    f.apply(&pod("shop", "cart", ", tier: carts", "10.244.1.5"));
    f.apply(&pod("shop", "db", ", tier: carts", "10.244.1.6"));
    f.apply(&pod("shop", "db", "", "10.244.1.6"));
    f.delete(key(Kind::Pod, "shop", "cart"));
    f.apply(&pod("shop", "cart", ", tier: carts", "10.244.1.5"));

    // A route attaches through the listener's namespace selector once its namespace is labelled.
    f.apply(&gateway_route("legacy", "via-cart-wp", "shop", "cart-wp"));
    f.apply(&namespace("legacy", "routes: 'yes'"));
    f.apply(&namespace("legacy", ""));
    f.apply(&gateway_route("legacy", "via-cart-wp", "shop", "wp2"));
    f.delete(key(Kind::Gateway, "shop", "cart-wp"));

    // Routes and the faults they name (created before and after the route), backend policies.
    f.apply(&http_fault("shop", "flaky", 503));
    f.apply(&http_route("shop", "front", "flaky"));
    f.apply(&http_route("shop", "late", "not-yet"));
    f.apply(&http_fault("shop", "not-yet", 500));
    f.apply(&http_fault("shop", "flaky", 502));
    f.delete(key(Kind::HttpFault, "shop", "flaky"));
    f.apply(&destination_rule("shop", "front", "front", "RANDOM"));
    f.apply(&destination_rule(
        "shop",
        "front",
        "front.shop.svc.cluster.local",
        "LEAST_REQUEST",
    ));
    f.delete(key(Kind::DestinationRule, "shop", "front"));
    f.delete(key(Kind::HttpRoute, "shop", "late"));

    // Kinds translation does not read change nothing.
    f.apply("apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n");
    f.apply("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: cart-sa, namespace: shop}\n");

    // A namespace and its pods go.
    f.delete(key(Kind::Pod, "legacy", "old"));
    f.delete(key(Kind::Namespace, "", "legacy"));
    assert!(f.changed > 30, "the steps changed {} resources", f.changed);
}

#[test]
fn a_long_random_sequence_matches_a_translation_from_scratch() {
    let mut rng = StdRng::seed_from_u64(7);
    let namespaces = ["a", "b", "istio-system"];
    let apps = ["x", "y", "z"];
    let mut f = Follower::new("");
    for step in 0..600 {
        // Several changes at once, as when the pipeline coalesces a burst.
        if rng.random_range(0..3) == 0 {
            f.check(&format!("the changes up to step {step}"));
        }
        let ns = namespaces[rng.random_range(0..namespaces.len())];
        let app = apps[rng.random_range(0..apps.len())];
        let n = rng.random_range(0..4);
        let yaml = match rng.random_range(0..12) {
            0..=2 => {
                let mode = [
                    "",
                    ", istio.io/dataplane-mode: none",
                    ", istio.io/use-waypoint: wp",
                ][rng.random_range(0..3)];
                pod(
                    ns,
                    &format!("p{n}"),
                    &format!(", role: {app}{mode}"),
                    &format!("10.0.{step}.{n}"),
                )
            }
            3 => namespace(
                ns,
                [
                    "",
                    "istio.io/dataplane-mode: ambient",
                    "istio.io/dataplane-mode: ambient, istio.io/use-waypoint: wp",
                    "istio.io/use-waypoint: wp, istio.io/use-waypoint-namespace: a",
                    "routes: 'yes'",
                ][rng.random_range(0..5)],
            ),
            4 => service(ns, &format!("s{n}"), &format!("role: {app}"), ""),
            5 => selector_policy(
                ns,
                &format!("sel{n}"),
                &format!("p{}", rng.random_range(0..4)),
            ),
            6 => peer_authentication(
                ns,
                &format!("pa{n}"),
                ["", "selector: {matchLabels: {role: x}}, "][rng.random_range(0..2)],
                ["STRICT", "PERMISSIVE", "DISABLE", "UNSET"][rng.random_range(0..4)],
            ),
            7 if n == 3 => account_waypoint(ns, "wp", &format!("p{}-sa", rng.random_range(0..4))),
            7 => waypoint(
                ns,
                "wp",
                "ambit-waypoint",
                ["service", "workload", "all", "none"][n],
            ),
            8 if n == 3 => gateway_route(ns, "r3", namespaces[rng.random_range(0..2)], "wp"),
            8 => http_route(
                ns,
                &format!("r{n}"),
                &format!("f{}", rng.random_range(0..2)),
            ),
            9 => http_fault(ns, &format!("f{}", n % 2), 500 + n as u32),
            10 => destination_rule(ns, &format!("d{n}"), &format!("s{n}"), "RANDOM"),
            _ => {
                // Delete something that may or may not exist.
                let kinds = [
                    Kind::Pod,
                    Kind::Service,
                    Kind::AuthorizationPolicy,
                    Kind::Gateway,
                    Kind::HttpRoute,
                    Kind::HttpFault,
                ];
                let kind = kinds[rng.random_range(0..kinds.len())];
                let name = match kind {
                    Kind::Pod => format!("p{n}"),
                    Kind::Service => format!("s{n}"),
                    Kind::AuthorizationPolicy => format!("sel{n}"),
                    Kind::HttpRoute => format!("r{n}"),
                    Kind::HttpFault => format!("f{}", n % 2),
                    _ => "wp".to_string(),
                };
                f.state.remove(&key(kind, ns, &name));
                continue;
            }
        };
        f.state.upsert(object(&yaml));
    }
    f.check("the last changes");
    assert!(f.changed > 200, "the steps changed {} resources", f.changed);
}
