//! The controller's RBAC in `deploy/base/controller-rbac.yaml` against what the controller does:
//! every component that talks to the API server on Kubernetes (the source's watches, the CA's
//! Secret, TokenReview, leader election, the waypoint reconcile with its status writes and its
//! sweep) runs against the in-memory API server (`k8s_fake`), wired as `app.rs` wires them, and
//! every request it made is checked with Kubernetes' RBAC rules for the controller's
//! ServiceAccount: the ClusterRole cluster-wide, the Role in `ambit-system` only,
//! `resourceNames` only for requests that name an object (never a create). A forbidden request
//! fails the test, naming it; so does a write permission nothing used (least privilege).
//!
//! A real cluster checks the same rules, but only for what a test happens to run there; this
//! runs in every `cargo test`, so a new API call without its permission fails here first.

mod k8s_fake;

use std::collections::BTreeSet;
use std::time::Duration;

use ambit_controller::auth::Authenticator;
use ambit_controller::auth::token_review::{ServiceAccountName, TokenReviewer};
use ambit_controller::ca::secret;
use ambit_controller::leader::{self, LeaderConfig, LeaderMetrics};
use ambit_controller::model::ClusterState;
use ambit_controller::reconcile::objects::WaypointSettings;
use ambit_controller::reconcile::routes::Mesh;
use ambit_controller::reconcile::{ControllerAddress, Reconciler};
use ambit_controller::source::kubernetes::KubernetesSource;
use http::Method;
use k8s_fake::{
    CONFIG_MAPS, DEPLOYMENTS, FakeApi, GATEWAY_CLASSES, GATEWAYS, HTTP_ROUTES, Logged,
    SERVICE_ACCOUNTS, SERVICES,
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

const RBAC: &str = include_str!("../../deploy/base/controller-rbac.yaml");
const NAMESPACE: &str = "ambit-system";
const ACCOUNT: &str = "ambit-controller";

/// One RBAC rule: apiGroups, resources (`pods`, `gateways/status`), verbs, resourceNames, and
/// the namespace it is limited to (a Role's) or None (a ClusterRole's, bound cluster-wide).
#[derive(Debug)]
struct Rule {
    groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    names: Vec<String>,
    namespace: Option<String>,
}

/// What the API server authorizes a request as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Attributes {
    verb: String,
    group: String,
    /// With the subresource: `gateways/status`.
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
}

impl Rule {
    fn allows(&self, a: &Attributes) -> bool {
        let has = |list: &[String], v: &str| list.iter().any(|x| x == "*" || x == v);
        has(&self.groups, &a.group)
            && has(&self.resources, &a.resource)
            && has(&self.verbs, &a.verb)
            && self
                .namespace
                .as_ref()
                .is_none_or(|ns| a.namespace.as_ref() == Some(ns))
            // resourceNames restrict only requests that name an object in the URL.
            && (self.names.is_empty() || a.name.as_ref().is_some_and(|n| has(&self.names, n)))
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The rules the controller's ServiceAccount gets through its bindings in `deploy/base`.
fn granted() -> Vec<Rule> {
    let documents: Vec<Value> = serde_yaml::Deserializer::from_str(RBAC)
        .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
        .collect();
    let bound = |binding: &Value| {
        binding["subjects"].as_array().is_some_and(|subjects| {
            subjects.iter().any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == ACCOUNT && s["namespace"] == NAMESPACE
            })
        })
    };
    let mut rules = Vec::new();
    for binding in documents.iter().filter(|d| bound(d)) {
        let (role_kind, namespace) = match binding["kind"].as_str() {
            Some("ClusterRoleBinding") => ("ClusterRole", None),
            Some("RoleBinding") => match binding["roleRef"]["kind"].as_str() {
                Some("Role") => ("Role", binding["metadata"]["namespace"].as_str()),
                _ => ("ClusterRole", binding["metadata"]["namespace"].as_str()),
            },
            _ => continue,
        };
        let role = documents
            .iter()
            .find(|d| {
                d["kind"] == role_kind
                    && d["metadata"]["name"] == binding["roleRef"]["name"]
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"].as_str() == namespace)
            })
            .unwrap_or_else(|| panic!("the role of binding {}", binding["metadata"]["name"]));
        for rule in role["rules"].as_array().into_iter().flatten() {
            rules.push(Rule {
                groups: strings(&rule["apiGroups"]),
                resources: strings(&rule["resources"]),
                verbs: strings(&rule["verbs"]),
                names: strings(&rule["resourceNames"]),
                namespace: namespace.map(String::from),
            });
        }
    }
    assert!(!rules.is_empty(), "no rules bound to {NAMESPACE}/{ACCOUNT}");
    rules
}

/// The authorization attributes of a request, as the API server derives them from its URL and
/// method. A server-side apply may create the object, so it needs `create` as well as `patch`
/// (but not on a subresource, whose object exists).
fn attributes(request: &Logged) -> Vec<Attributes> {
    let (group, rest) = match request.path.strip_prefix("/api/v1/") {
        Some(rest) => (String::new(), rest),
        None => {
            let rest = request.path.strip_prefix("/apis/").expect("an API path");
            let mut parts = rest.splitn(3, '/');
            let group = parts.next().unwrap().to_string();
            let _version = parts.next();
            (group, parts.next().unwrap_or(""))
        }
    };
    let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, segments) = match segments.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        all => (None, all),
    };
    let resource = match segments {
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [resource, ..] => resource.to_string(),
        [] => panic!("no resource in {}", request.path),
    };
    let name = segments.get(1).map(|s| s.to_string());
    let sub = segments.len() > 2;
    let watch = request.query.split('&').any(|p| p == "watch=true");
    let verbs: &[&str] = match (&request.method, name.is_some()) {
        (&Method::GET, true) => &["get"],
        (&Method::GET, false) if watch => &["watch"],
        (&Method::GET, false) => &["list"],
        (&Method::POST, _) => &["create"],
        (&Method::PUT, _) => &["update"],
        // On a subresource (status) the object exists already: an apply patches it only.
        (&Method::PATCH, _) if request.content_type.contains("apply-patch") && !sub => {
            &["patch", "create"]
        }
        (&Method::PATCH, _) => &["patch"],
        (&Method::DELETE, true) => &["delete"],
        (&Method::DELETE, false) => &["deletecollection"],
        (other, _) => panic!("unexpected method {other}"),
    };
    verbs
        .iter()
        .map(|verb| Attributes {
            verb: verb.to_string(),
            group: group.clone(),
            resource: resource.clone(),
            namespace: namespace.clone(),
            // A create is authorized before the object exists: RBAC sees no name.
            name: if *verb == "create" {
                None
            } else {
                name.clone()
            },
        })
        .collect()
}

fn allowed(rules: &[Rule], a: &Attributes) -> bool {
    rules.iter().any(|r| r.allows(a))
}

#[test]
fn the_checker_follows_kubernetes_rbac() {
    let rules = granted();
    let at = |verb: &str, group: &str, resource: &str, ns: Option<&str>, name: Option<&str>| {
        Attributes {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(String::from),
            name: name.map(String::from),
        }
    };
    // Granted cluster-wide.
    assert!(allowed(&rules, &at("watch", "", "pods", None, None)));
    assert!(allowed(
        &rules,
        &at(
            "patch",
            "gateway.networking.k8s.io",
            "gateways/status",
            Some("shop"),
            Some("wp")
        )
    ));
    // The Role: its namespace only, named objects only, creates of any name.
    let ca = at("get", "", "secrets", Some(NAMESPACE), Some("ambit-ca"));
    assert!(allowed(&rules, &ca));
    assert!(!allowed(
        &rules,
        &at("get", "", "secrets", Some(NAMESPACE), Some("other"))
    ));
    assert!(!allowed(
        &rules,
        &at("get", "", "secrets", Some("shop"), Some("ambit-ca"))
    ));
    assert!(!allowed(
        &rules,
        &at("list", "", "secrets", Some(NAMESPACE), None)
    ));
    assert!(allowed(
        &rules,
        &at("create", "", "secrets", Some(NAMESPACE), None)
    ));
    // Never granted.
    assert!(!allowed(
        &rules,
        &at(
            "patch",
            "gateway.networking.k8s.io",
            "gateways",
            Some("shop"),
            Some("wp")
        )
    ));
    assert!(!allowed(
        &rules,
        &at("update", "", "pods", Some("shop"), Some("p"))
    ));
    assert!(!allowed(
        &rules,
        &at(
            "deletecollection",
            "apps",
            "deployments",
            Some("shop"),
            None
        )
    ));
}

/// Runs every component of the controller that calls the API server through a waypoint's life
/// and a leadership term; returns every request made.
async fn controller_at_work() -> Vec<Logged> {
    let (fake, client) = FakeApi::start();
    fake.put(
        SERVICES,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "ambit-controller", "namespace": NAMESPACE},
               "spec": {"clusterIP": "10.96.0.12", "ports": [{"port": 15012}]}}),
    );
    // Left by a Gateway deleted while the controller was down: the sweep deletes them.
    for collection in [DEPLOYMENTS, SERVICES, SERVICE_ACCOUNTS, CONFIG_MAPS] {
        fake.put(
            collection,
            json!({"metadata": {"name": "old", "namespace": "shop", "labels": {
                "gateway.networking.k8s.io/gateway-name": "old",
                "app.kubernetes.io/managed-by": "ambit-controller"}}}),
        );
    }

    // The source, as app.rs starts it: every kind listed, then watched.
    let (states_tx, states) = watch::channel(ClusterState::new());
    let (ready_tx, mut ready) = watch::channel(false);
    let mesh = Mesh {
        states: states.clone(),
        ready: ready.clone(),
    };
    tokio::spawn(KubernetesSource::new(client.clone()).run(states_tx, ready_tx));
    tokio::time::timeout(k8s_fake::PATIENCE, ready.wait_for(|r| *r))
        .await
        .expect("the source ready")
        .unwrap();

    // The CA root: created by the first replica, read by the next.
    let lifetime = Duration::from_secs(3600);
    secret::load_or_create(client.clone(), NAMESPACE, "cluster.local", lifetime)
        .await
        .expect("the CA created in its Secret");
    secret::load_or_create(client.clone(), NAMESPACE, "cluster.local", lifetime)
        .await
        .expect("the CA read from its Secret");

    // A caller's token, reviewed (the fake does not authenticate it: only the request counts).
    let agent =
        ServiceAccountName::from_username("system:serviceaccount:ambit-system:ambit-ztunnel")
            .unwrap();
    let reviewer = TokenReviewer::new(
        client.clone(),
        agent,
        vec!["ambit-controller".into()],
        states,
    );
    let _ = reviewer.authenticate("a-token").await;

    // Leader election and the reconcile it gates.
    let election = LeaderConfig {
        namespace: NAMESPACE.into(),
        lease_name: leader::LEASE_NAME.into(),
        identity: "ambit-controller-0".into(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
    };
    let (leading_tx, leading) = watch::channel(false);
    let (stop, stopped) = oneshot::channel::<()>();
    let elector = tokio::spawn(leader::run(
        kube::Api::namespaced(client.clone(), NAMESPACE),
        election,
        leading_tx,
        LeaderMetrics::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let settings = WaypointSettings {
        image: "example.com/ambit-waypoint:test".into(),
        trust_domain: "cluster.local".into(),
        cluster_domain: "cluster.local".into(),
        controller_namespace: NAMESPACE.into(),
        token_audience: Some("ambit-controller".into()),
        root_cert_pem: "PEM".into(),
    };
    let reconciler = Reconciler::new(client, settings, ControllerAddress::ServiceIp(15012))
        .with_sweep_interval(Duration::from_millis(200))
        .with_mesh(mesh);
    tokio::spawn(reconciler.run(leading));
    fake.put(
        GATEWAY_CLASSES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "ambit-waypoint"},
               "spec": {"controllerName": "ambit.dev/waypoint-controller"}}),
    );

    fake.put(
        GATEWAYS,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
               "metadata": {"name": "wp", "namespace": "shop"},
               "spec": {"gatewayClassName": "ambit-waypoint",
                        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}),
    );
    fake.wait_for("the waypoint deployed and the leftovers swept", |f| {
        f.get(DEPLOYMENTS, "shop", "wp").is_some()
            && f.get(CONFIG_MAPS, "shop", "wp-ambit-root-cert").is_some()
            && f.get(DEPLOYMENTS, "shop", "old").is_none()
            && f.get(CONFIG_MAPS, "shop", "old").is_none()
    })
    .await;
    fake.put(
        HTTP_ROUTES,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "to-wp", "namespace": "shop"},
               "spec": {"parentRefs": [{"name": "wp"}],
                        "rules": [{"backendRefs": [{"name": "echo", "port": 80}]}]}}),
    );
    fake.wait_for("the route's and the class's status", |f| {
        f.get(HTTP_ROUTES, "shop", "to-wp").is_some_and(|r| {
            r["status"]["parents"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        }) && f
            .get(GATEWAY_CLASSES, "", "ambit-waypoint")
            .is_some_and(|c| !c["status"]["conditions"].is_null())
    })
    .await;
    fake.update(DEPLOYMENTS, "shop", "wp", |d| {
        d["status"] = json!({"replicas": 1, "availableReplicas": 1});
    });
    fake.wait_for("the Gateway programmed", |f| {
        f.get(GATEWAYS, "shop", "wp").is_some_and(|gw| {
            gw["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Programmed" && c["status"] == "True")
            })
        })
    })
    .await;
    fake.delete(GATEWAYS, "shop", "wp");
    fake.wait_for("the waypoint swept with its Gateway", |f| {
        f.get(DEPLOYMENTS, "shop", "wp").is_none() && f.get(SERVICES, "shop", "wp").is_none()
    })
    .await;

    // Stepping down releases the Lease.
    let _ = stop.send(());
    tokio::time::timeout(k8s_fake::PATIENCE, elector)
        .await
        .expect("the elector stops")
        .unwrap();
    fake.requests()
}

#[tokio::test]
async fn every_request_the_controller_makes_is_allowed_and_every_write_it_is_granted_is_used() {
    let rules = granted();
    let requests = controller_at_work().await;
    let made: BTreeSet<Attributes> = requests.iter().flat_map(attributes).collect();

    let forbidden: Vec<String> = made
        .iter()
        .filter(|a| !allowed(&rules, a))
        .map(|a| format!("{a:?}"))
        .collect();
    assert!(
        forbidden.is_empty(),
        "deploy/base/controller-rbac.yaml forbids what the controller does:\n  {}",
        forbidden.join("\n  ")
    );

    // The run did exercise each component: it is no proof if nothing was asked.
    for (verb, resource) in [
        ("watch", "pods"),
        ("watch", "authorizationpolicies"),
        ("create", "tokenreviews"),
        ("create", "secrets"),
        ("get", "secrets"),
        ("create", "leases"),
        ("update", "leases"),
        ("patch", "deployments"),
        ("patch", "gateways/status"),
        ("patch", "httproutes/status"),
        ("watch", "gatewayclasses"),
        ("patch", "gatewayclasses/status"),
        ("delete", "configmaps"),
    ] {
        assert!(
            made.iter()
                .any(|a| a.verb == verb && a.resource == resource),
            "never {verb} {resource}: {made:#?}"
        );
    }

    // Least privilege: every write the RBAC grants is one the controller makes. (Reads are
    // granted as get/list/watch together, as is usual; only writes change the cluster.)
    let mut unused = Vec::new();
    for rule in &rules {
        for verb in rule
            .verbs
            .iter()
            .filter(|v| !["get", "list", "watch"].contains(&v.as_str()))
        {
            for resource in &rule.resources {
                let used = made
                    .iter()
                    .any(|a| &a.verb == verb && &a.resource == resource && rule.allows(a));
                if !used {
                    unused.push(format!("{verb} {resource} (group {:?})", rule.groups));
                }
            }
        }
    }
    assert!(
        unused.is_empty(),
        "deploy/base/controller-rbac.yaml grants writes nothing made:\n  {}",
        unused.join("\n  ")
    );
}
