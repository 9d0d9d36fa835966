//! HTTPRoute, HTTPFault and DestinationRule -> the waypoint's Route and BackendPolicy, and which
//! waypoint is sent which of them.

mod translate_common;

use std::path::Path;
use std::time::Instant;

use ambit_controller::auth::Caller;
use ambit_controller::push::Generation;
use ambit_controller::push::interest::Interest;
use ambit_controller::source::yaml::parse_file;
use ambit_proto::api::{self, filter, path_match, path_rewrite, type_url, value_match};
use translate_common::snapshot;

const CANARY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop, creationTimestamp: "2026-01-02T03:04:05Z"}
spec:
  parentRefs:
  - {group: "", kind: Service, name: reviews, port: 9080}
  - {name: waypoint}
  - {group: example.com, kind: Ingress, name: elsewhere}
  rules:
  - name: canary
    matches:
    - path: {type: PathPrefix, value: /api}
      headers: [{name: x-canary, value: "yes"}]
      queryParams: [{type: RegularExpression, name: v, value: "[0-9]+"}]
      method: POST
    - path: {type: Exact, value: /health}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: canary}], remove: [x-debug]}
    - type: RequestMirror
      requestMirror: {backendRef: {name: shadow, port: 9080}, fraction: {numerator: 1, denominator: 4}}
    - type: ExtensionRef
      extensionRef: {group: ambit.dev, kind: HTTPFault, name: slow}
    backendRefs:
    - {name: reviews-v1, port: 9080, weight: 90}
    - {name: reviews-v2, port: 9080, weight: 10}
    - {name: other-ns, namespace: payments, port: 9080}
    timeouts: {request: 10s, backendRequest: 500ms}
    retry: {attempts: 3, codes: [503], backoff: 100ms}
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}}]
    filters:
    - type: URLRewrite
      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new}}
    backendRefs: [{name: reviews-v1, port: 9080}]
  - filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, statusCode: 301, path: {type: ReplaceFullPath, replaceFullPath: /moved}}
    - type: ExtensionRef
      extensionRef: {group: ambit.dev, kind: HTTPFault, name: missing}
---
apiVersion: ambit.dev/v1alpha1
kind: HTTPFault
metadata: {name: slow, namespace: shop}
spec:
  delay: {fixedDelay: 2s, percentage: {value: 50}}
  abort: {httpStatus: 503}
---
"#;

#[test]
fn an_httproute_translates_field_by_field() {
    let s = snapshot(CANARY);
    let route = s.routes.get("shop/reviews").expect("translated");
    assert_eq!(route.creation_timestamp, 1_767_323_045);
    let parents: Vec<_> = route
        .parents
        .iter()
        .map(|p| {
            (
                p.kind.as_str(),
                p.namespace.as_str(),
                p.name.as_str(),
                p.port,
            )
        })
        .collect();
    // The Ingress parent belongs to some other implementation.
    assert_eq!(
        parents,
        [
            ("Service", "shop", "reviews", 9080),
            ("Gateway", "shop", "waypoint", 0)
        ]
    );
    let canary = &route.rules[0];
    assert_eq!(canary.name, "canary");
    let m = &canary.matches[0];
    assert_eq!(
        m.path.as_ref().unwrap().kind,
        Some(path_match::Kind::Prefix("/api".into()))
    );
    assert_eq!(m.headers[0].name, "x-canary");
    assert_eq!(
        m.headers[0].kind,
        Some(value_match::Kind::Exact("yes".into()))
    );
    assert_eq!(
        m.query_params[0].kind,
        Some(value_match::Kind::Regex("[0-9]+".into()))
    );
    assert_eq!(m.method, "POST");
    assert_eq!(
        canary.matches[1].path.as_ref().unwrap().kind,
        Some(path_match::Kind::Exact("/health".into()))
    );
    let backends: Vec<_> = canary
        .backends
        .iter()
        .map(|b| (b.namespace.as_str(), b.hostname.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(
        backends,
        [
            ("shop", "reviews-v1.shop.svc.cluster.local", 9080, 90),
            ("shop", "reviews-v2.shop.svc.cluster.local", 9080, 10),
            // Another namespace without a ReferenceGrant: its share is answered 500.
            ("", "", 9080, 1),
        ]
    );
    assert_eq!(
        canary.timeouts,
        Some(api::Timeouts {
            request_ms: 10_000,
            backend_request_ms: 500
        })
    );
    let retry = canary.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.codes.as_slice(), retry.backoff_ms),
        (3, &[503][..], 100)
    );
    match &canary.filters[0].kind {
        Some(filter::Kind::RequestHeaderModifier(h)) => {
            assert_eq!(
                (h.set[0].name.as_str(), h.set[0].value.as_str()),
                ("x-route", "canary")
            );
            assert_eq!(h.remove, ["x-debug"]);
        }
        other => panic!("first filter {other:?}"),
    }
    match &canary.filters[1].kind {
        Some(filter::Kind::RequestMirror(m)) => {
            assert_eq!(
                m.backend.as_ref().unwrap().hostname,
                "shadow.shop.svc.cluster.local"
            );
            assert!(m.percent_set);
            assert_eq!(m.percent, 25.0);
        }
        other => panic!("second filter {other:?}"),
    }
    assert_eq!(
        canary.filters.len(),
        2,
        "the fault is not a filter on the wire"
    );
    let fault = canary.fault.unwrap();
    assert_eq!(
        fault.delay,
        Some(api::FaultDelay {
            fixed_delay_ms: 2000,
            percentage: 50.0
        })
    );
    // Istio's rule: no percentage means every request.
    assert_eq!(
        fault.abort,
        Some(api::FaultAbort {
            http_status: 503,
            percentage: 100.0
        })
    );

    let rewrite = &route.rules[1];
    match &rewrite.filters[0].kind {
        Some(filter::Kind::UrlRewrite(r)) => assert_eq!(
            r.path.as_ref().unwrap().kind,
            Some(path_rewrite::Kind::ReplaceFullPath("/new".into()))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        rewrite.backends[0].weight, 1,
        "Gateway API's default weight"
    );

    let redirect = &route.rules[2];
    assert!(redirect.matches.is_empty() && redirect.backends.is_empty());
    match &redirect.filters[0].kind {
        Some(filter::Kind::RequestRedirect(r)) => {
            assert_eq!((r.scheme.as_str(), r.status_code), ("https", 301))
        }
        other => panic!("{other:?}"),
    }
    // A fault filter that names nothing fails its requests rather than being skipped.
    assert_eq!(
        redirect.fault.unwrap().abort,
        Some(api::FaultAbort {
            http_status: 500,
            percentage: 100.0
        })
    );
}

#[test]
fn a_destination_rule_becomes_a_backend_policy() {
    let s = snapshot(
        r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: ISTIO_MUTUAL}
    loadBalancer: {simple: LEAST_CONN}
    connectionPool:
      tcp: {maxConnections: 10}
      http: {http1MaxPendingRequests: 5, http2MaxRequests: 20}
    outlierDetection: {consecutiveGatewayErrors: 2, baseEjectionTime: 1m, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: remote, namespace: shop}
spec: {host: ratings.books.svc.cluster.local}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: short, namespace: shop}
spec: {host: details.books}
"#,
    );
    let p = &s.backend_policies["shop/reviews"];
    assert_eq!(
        (p.service_namespace.as_str(), p.service_hostname.as_str()),
        ("shop", "reviews.shop.svc.cluster.local")
    );
    assert_eq!(p.load_balancer, api::LoadBalancer::LeastRequest as i32);
    assert_eq!(
        p.connection_pool,
        Some(api::ConnectionPool {
            max_connections: 10,
            max_pending_requests: 5,
            max_requests: 20
        })
    );
    assert_eq!(
        p.outlier_detection,
        Some(api::OutlierDetection {
            // Istio's default once outlier detection is configured.
            consecutive_5xx: 5,
            consecutive_gateway_errors: 2,
            base_ejection_ms: 60_000,
            max_ejection_percent: 50
        })
    );
    let remote = &s.backend_policies["shop/remote"];
    assert_eq!(
        (
            remote.service_namespace.as_str(),
            remote.service_hostname.as_str()
        ),
        ("books", "ratings.books.svc.cluster.local")
    );
    assert_eq!(
        s.backend_policies["shop/short"].service_hostname,
        "details.books.svc.cluster.local"
    );
}

/// The first error `parse_file` reports for `yaml`, as "field: reason".
fn error(yaml: &str) -> String {
    let parsed = parse_file(Path::new("bad.yaml"), yaml);
    assert!(parsed.objects.is_empty(), "accepted: {yaml}");
    let e = &parsed.errors[0];
    format!("{}: {}", e.field, e.reason)
}

fn route(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\n\
         spec:\n  parentRefs: [{{group: '', kind: Service, name: s}}]\n  rules:\n{rules}\n"
    )
}

#[test]
fn routes_the_waypoint_could_not_serve_are_refused_with_the_field() {
    for (rules, expected) in [
        (
            "  - matches: [{path: {type: RegularExpression, value: '(unclosed'}}]",
            "spec.rules: ",
        ),
        (
            "  - filters: [{type: CORS, cors: {}}]",
            "spec.rules[0].filters[0].type: \"CORS\" is not supported",
        ),
        (
            "  - filters: [{type: RequestRedirect}]",
            "spec.rules[0].filters[0].type: a RequestRedirect filter needs its settings field",
        ),
        (
            "  - filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Lua, name: x}}]",
            "spec.rules[0].filters[0].extensionRef: example.com/Lua is not a filter Ambit knows",
        ),
        (
            "  - backendRefs: [{name: s, port: 80, filters: [{type: RequestHeaderModifier}]}]",
            "spec.rules[0].backendRefs[0].filters: per-backend filters are not supported",
        ),
        (
            "  - timeouts: {request: 10 seconds}",
            "spec.rules[0].timeouts.request: ",
        ),
        (
            "  - matches: [{headers: [{type: Prefix, name: a, value: b}]}]",
            "spec.rules[0].matches[0].headers.type: \"Prefix\" is not supported",
        ),
        (
            "  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: 'bad name', value: x}]}}]",
            "spec.rules: ",
        ),
    ] {
        let got = error(&route(rules));
        assert!(
            got.starts_with(expected),
            "{rules}\n  got {got}\n  want {expected}…"
        );
    }
}

#[test]
fn faults_and_destination_rules_are_checked_on_the_way_in() {
    let fault = |spec: &str| {
        error(&format!(
            "apiVersion: ambit.dev/v1alpha1\nkind: HTTPFault\nmetadata: {{name: f, namespace: shop}}\nspec: {spec}\n"
        ))
    };
    assert!(fault("{abort: {httpStatus: 999}}").starts_with("spec.abort.httpStatus: 999"));
    assert!(
        fault("{abort: {httpStatus: 503, percentage: {value: 120}}}")
            .starts_with("spec.abort.percentage.value: 120")
    );
    assert!(fault("{delay: {fixedDelay: soon}}").starts_with("spec.delay.fixedDelay"));
    // A misspelt key must not turn into "every request".
    assert!(fault("{abort: {httpStatus: 503, percent: 10}}").contains("percent"));
    assert!(fault("{}").contains("needs a delay, an abort or both"));

    let rule = |spec: &str| {
        error(&format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: d, namespace: shop}}\nspec: {spec}\n"
        ))
    };
    assert!(rule("{host: '*.shop.svc.cluster.local'}").contains("wildcard"));
    assert!(rule("{host: www.example.com}").contains("not a service of this cluster"));
    assert!(
        rule("{host: r, trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x}}}}")
            .contains("consistent hashing is not supported")
    );
    assert!(
        rule("{host: r, trafficPolicy: {loadBalancer: {simple: PASSTHROUGH}}}")
            .contains("PASSTHROUGH")
    );
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: shop}
spec: {gatewayClassName: ambit-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec: {clusterIP: 10.96.0.20, ports: [{port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop, labels: {istio.io/use-waypoint: other}}
spec: {clusterIP: 10.96.0.21, ports: [{port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews-v2, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules: [{backendRefs: [{name: ratings, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: by-host, namespace: shop}
spec:
  parentRefs: [{name: waypoint}]
  hostnames: [api.example.com]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: v2, namespace: shop}
spec: {host: reviews-v2, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: shop}
spec: {host: ratings, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
---
"#;

#[test]
fn each_waypoint_is_sent_its_own_routes_and_backend_policies() {
    let generation = Generation::empty().next(&snapshot(MESH), Instant::now());
    let waypoint = |name: &str| {
        Interest::from(Caller::Waypoint {
            namespace: "shop".into(),
            name: name.into(),
        })
    };
    let names = |who: &Interest, t: &str| -> Vec<String> {
        who.names(t, &generation)
            .expect("filtered")
            .into_iter()
            .collect()
    };
    // Its service's route and the route attached to it; the route of a service another
    // waypoint serves goes there.
    assert_eq!(
        names(&waypoint("waypoint"), type_url::ROUTE),
        ["shop/by-host", "shop/reviews"]
    );
    assert_eq!(names(&waypoint("other"), type_url::ROUTE), ["shop/ratings"]);
    // Backend policies: of the services its routes send to (reviews-v2), or it serves.
    assert_eq!(
        names(&waypoint("waypoint"), type_url::BACKEND_POLICY),
        ["shop/v2"]
    );
    assert_eq!(
        names(&waypoint("other"), type_url::BACKEND_POLICY),
        ["shop/ratings"]
    );
    // Node agents proxy no HTTP.
    let agent = Interest::from(Caller::NodeAgent {
        node: "node-1".into(),
    });
    assert!(names(&agent, type_url::ROUTE).is_empty());
    assert!(names(&agent, type_url::BACKEND_POLICY).is_empty());
    assert_eq!(
        agent.names(type_url::SERVICE, &generation),
        None,
        "not filtered"
    );
}
