//! Which waypoint traffic goes through, beyond `istio.io/use-waypoint` (translate.rs has those
//! rules): Istio 1.18-1.21's per-service-account waypoints, and which waypoint Gateways a route
//! attaches to through their listeners.

mod translate_common;

use std::path::Path;

use ambit_controller::source::yaml::parse_file;
use translate_common::{snapshot, waypoint_host, workload};

fn pod(name: &str, app: &str, account: &str, extra_labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: {app}{extra_labels}}}}}\n\
         spec: {{nodeName: node-1, serviceAccountName: {account}, containers: [{{name: a, image: x}}]}}\n\
         status: {{podIP: 10.244.1.{}}}\n---\n",
        name.len() * 7 % 250
    )
}

fn service(name: &str, selector: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\n\
         spec: {{clusterIP: 10.96.0.{}, selector: {{{selector}}}, ports: [{{port: 80}}]}}\n---\n",
        name.len() * 11 % 250
    )
}

/// A waypoint for the service account `account`, as `ambit waypoint apply --service-account`
/// writes it.
fn account_waypoint(name: &str, account: &str, waypoint_for: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: {name}, namespace: shop, labels: {{istio.io/waypoint-for: {waypoint_for}}},\n  \
         annotations: {{istio.io/for-service-account: {account}}}}}\n\
         spec: {{gatewayClassName: ambit-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]}}\n---\n"
    )
}

const SHOP: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: \
    {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: ns-wp}}\n---\n\
    apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
    metadata: {name: ns-wp, namespace: shop, labels: {istio.io/waypoint-for: all}}\n\
    spec: {gatewayClassName: ambit-waypoint}\n---\n";

fn mesh(reviews_waypoint_for: &str) -> String {
    [
        SHOP,
        &account_waypoint("reviews-waypoint", "reviews", reviews_waypoint_for),
        &pod("reviews-v1", "reviews", "reviews", ", tier: back"),
        &pod("reviews-v2", "reviews", "reviews", ""),
        &pod("ratings", "ratings", "ratings", ", tier: back"),
        &pod(
            "pinned",
            "reviews",
            "reviews",
            ", istio.io/use-waypoint: none",
        ),
        &service("reviews", "app: reviews"),
        &service("ratings", "app: ratings"),
        &service("back", "tier: back"),
        &service("nobody", "app: nobody"),
    ]
    .concat()
}

const SA_WAYPOINT: &str = "reviews-waypoint.shop.svc.cluster.local";
const NS_WAYPOINT: &str = "ns-wp.shop.svc.cluster.local";

#[test]
fn a_service_account_waypoint_serves_that_accounts_workloads_before_the_namespaces() {
    let s = snapshot(&mesh("all"));
    let via = |name: &str| waypoint_host(&workload(&s, "shop", name).waypoint);
    let service = |name: &str| {
        waypoint_host(&s.services[&format!("shop/{name}.shop.svc.cluster.local")].waypoint)
    };
    // The account's workloads, addressed directly, go through its waypoint, not the namespace's.
    assert_eq!(via("reviews-v1").as_deref(), Some(SA_WAYPOINT));
    assert_eq!(via("reviews-v2").as_deref(), Some(SA_WAYPOINT));
    assert_eq!(via("ratings").as_deref(), Some(NS_WAYPOINT));
    // The pod's own label still wins: `none` opts out of both.
    assert_eq!(via("pinned"), None);
    // A Service whose pods all run as the account goes through its waypoint; one over several
    // accounts (agents pick one waypoint per service) or none keeps the namespace's.
    assert_eq!(service("reviews").as_deref(), Some(SA_WAYPOINT));
    assert_eq!(service("ratings").as_deref(), Some(NS_WAYPOINT));
    assert_eq!(service("back").as_deref(), Some(NS_WAYPOINT));
    assert_eq!(service("nobody").as_deref(), Some(NS_WAYPOINT));

    // `istio.io/waypoint-for` still says which traffic: a service-only account waypoint leaves
    // traffic addressed to the pods to the namespace's waypoint.
    let s = snapshot(&mesh("service"));
    assert_eq!(
        waypoint_host(&workload(&s, "shop", "reviews-v1").waypoint).as_deref(),
        Some(NS_WAYPOINT)
    );
    assert_eq!(
        waypoint_host(&s.services["shop/reviews.shop.svc.cluster.local"].waypoint).as_deref(),
        Some(SA_WAYPOINT)
    );
}

#[test]
fn an_account_waypoint_serves_only_its_own_namespace_and_never_itself() {
    let other = "apiVersion: v1\nkind: Pod\nmetadata: {name: reviews, namespace: elsewhere, labels: {app: reviews}}\n\
        spec: {nodeName: node-1, serviceAccountName: reviews, containers: [{name: a, image: x}]}\n\
        status: {podIP: 10.244.2.9}\n---\n";
    // The waypoint's own pod runs as its Gateway's account and carries the gateway-name label.
    let own = pod(
        "reviews-waypoint-abc",
        "wp",
        "reviews-waypoint",
        ", gateway.networking.k8s.io/gateway-name: reviews-waypoint",
    );
    let s = snapshot(&[mesh("all"), other.into(), own].concat());
    assert_eq!(workload(&s, "elsewhere", "reviews").waypoint, None);
    let wp = workload(&s, "shop", "reviews-waypoint-abc");
    assert_eq!(wp.waypoint, None);
    assert_eq!(wp.waypoint_for, "all");
}

#[test]
fn an_account_waypoint_named_like_its_account_is_refused() {
    let errors = |yaml: &str| parse_file(Path::new("gw.yaml"), yaml).errors;
    let named_like = errors(&account_waypoint("reviews", "reviews", "all"));
    assert_eq!(named_like.len(), 1, "{named_like:?}");
    let message = named_like[0].to_string();
    assert!(
        message.contains("metadata.annotations[istio.io/for-service-account]")
            && message.contains("reviews-waypoint"),
        "{message}"
    );
    assert_eq!(errors(&account_waypoint("wp", "\"\"", "all")).len(), 1);
    assert!(errors(&account_waypoint("reviews-waypoint", "reviews", "all")).is_empty());
}

/// A waypoint Gateway with a listener admitting routes from `from`, and routes attached to it
/// from two namespaces (and by section name and port).
fn attached(from: &str) -> String {
    let route = |ns: &str, name: &str, parent: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{parentRefs: [{parent}], rules: [{{backendRefs: [{{name: api, port: 80}}]}}]}}\n---\n"
        )
    };
    [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team, labels: {mesh-routes: allowed}}\n---\n",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: wp, namespace: shop}}\n\
             spec: {{gatewayClassName: ambit-waypoint, listeners: [{{name: mesh, port: 15008, protocol: HBONE,\n  \
             allowedRoutes: {{namespaces: {from}}}}}]}}\n---\n"
        ),
        &route("shop", "same", "{name: wp}"),
        &route("team", "other", "{name: wp, namespace: shop}"),
        &route("shop", "by-section", "{name: wp, sectionName: mesh, port: 15008}"),
        &route("shop", "wrong-section", "{name: wp, sectionName: http}"),
        &route("shop", "wrong-port", "{name: wp, port: 80}"),
    ]
    .concat()
}

#[test]
fn a_route_reaches_a_waypoint_only_through_a_listener_that_admits_it() {
    let parents = |yaml: &str, route: &str| -> usize { snapshot(yaml).routes[route].parents.len() };
    // Same namespace only, by default (and with `from: Same`).
    for from in ["{}", "{from: Same}"] {
        let yaml = attached(from);
        assert_eq!(parents(&yaml, "shop/same"), 1, "{from}");
        assert_eq!(parents(&yaml, "team/other"), 0, "{from}");
        assert_eq!(parents(&yaml, "shop/by-section"), 1, "{from}");
        assert_eq!(parents(&yaml, "shop/wrong-section"), 0, "{from}");
        assert_eq!(parents(&yaml, "shop/wrong-port"), 0, "{from}");
    }
    let all = attached("{from: All}");
    assert_eq!(parents(&all, "team/other"), 1);
    let selected = attached("{from: Selector, selector: {matchLabels: {mesh-routes: allowed}}}");
    assert_eq!(parents(&selected, "team/other"), 1);
    assert_eq!(parents(&selected, "shop/same"), 0, "shop is not selected");
    let expression = attached(
        "{from: Selector, selector: {matchExpressions: [{key: mesh-routes, operator: Exists}]}}",
    );
    assert_eq!(parents(&expression, "team/other"), 1);
}
