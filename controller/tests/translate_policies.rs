//! AuthorizationPolicy translation: scopes, selector binding, field-by-field rules, rejections.

mod translate_common;

use std::path::Path;

use ambit_controller::source::yaml::parse_file;
use ambit_proto::api;
use translate_common::*;

#[test]
fn authorization_policy_scopes_and_selector_binding() {
    let yaml = [
        AMBIENT_NS,
        &pod("shop", "cart", "", "10.244.1.5"),
        &pod("shop", "db", "", "10.244.1.6"),
        &pod("legacy", "old", "", "10.244.1.7"),
        &policy("istio-system", "mesh-deny", "  action: DENY\n  rules: [{from: [{source: {namespaces: [evil]}}]}]"),
        &policy("istio-system", "root-selector", "  selector: {matchLabels: {app: old}}\n  rules: [{}]"),
        &policy("shop", "ns-wide", "  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/*]}}]}]"),
        &policy("shop", "db-only", "  selector: {matchLabels: {app: db}}\n  action: AUDIT\n  rules: [{}]"),
        &policy("shop", "via-waypoint", "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}]\n  rules: [{to: [{operation: {paths: [/admin*]}}]}]"),
        &policy("shop", "allow-nothing", "  {}"),
    ]
    .concat();
    let s = snapshot(&yaml);
    let scope = |key: &str| api::Scope::try_from(s.authorizations[key].scope).unwrap();
    assert_eq!(scope("istio-system/mesh-deny"), api::Scope::Global);
    assert_eq!(scope("shop/ns-wide"), api::Scope::Namespace);
    assert_eq!(scope("shop/db-only"), api::Scope::WorkloadSelector);
    assert_eq!(scope("shop/via-waypoint"), api::Scope::Waypoint);
    assert_eq!(
        s.authorizations["shop/via-waypoint"].targets,
        ["Gateway/shop/wp"]
    );
    assert_eq!(
        s.authorizations["shop/db-only"].action,
        api::Action::Audit as i32
    );
    assert_eq!(
        s.authorizations["istio-system/mesh-deny"].action,
        api::Action::Deny as i32
    );
    assert!(
        s.authorizations["shop/allow-nothing"].rules.is_empty(),
        "ALLOW with no rules allows nothing"
    );

    assert_eq!(
        workload(&s, "shop", "db").authorization_policies,
        ["shop/db-only"]
    );
    assert!(
        workload(&s, "shop", "cart")
            .authorization_policies
            .is_empty()
    );
    assert_eq!(
        workload(&s, "legacy", "old").authorization_policies,
        ["istio-system/root-selector"],
        "root-namespace selectors reach every namespace"
    );
}

#[test]
fn authorization_rules_translate_field_by_field() {
    use api::string_match::Kind;
    let yaml = policy(
        "shop",
        "p",
        r#"  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/shop/sa/cart, "*-admin"]
        notNamespaces: [test*]
        ipBlocks: [10.244.0.0/16, 10.0.0.1]
        notIpBlocks: ["fd00::/8"]
    to:
    - operation: {ports: ["8080"], notPorts: ["9090"], methods: [GET], paths: [/api/*], hosts: ["*"]}
    when:
    - {key: source.ip, values: [10.244.1.0/24]}
    - {key: "request.headers[x-tenant]", notValues: [blocked]}
    - {key: remote.ip, values: [10.1.0.0/16]}"#,
    );
    let s = snapshot(&yaml);
    let rule = &s.authorizations["shop/p"].rules[0];
    let from = &rule.from[0];
    assert_eq!(
        from.principals[0].kind,
        Some(Kind::Exact("cluster.local/ns/shop/sa/cart".into()))
    );
    assert_eq!(from.principals[1].kind, Some(Kind::Suffix("-admin".into())));
    assert_eq!(
        from.not_namespaces[0].kind,
        Some(Kind::Prefix("test".into()))
    );
    let cidrs: Vec<(String, u32)> = from
        .ip_blocks
        .iter()
        .map(|c| (c.address.clone(), c.prefix_len))
        .collect();
    assert_eq!(
        cidrs,
        [("10.244.0.0".to_string(), 16), ("10.0.0.1".to_string(), 32)]
    );
    assert_eq!(from.not_ip_blocks[0].prefix_len, 8);
    let to = &rule.to[0];
    assert_eq!(
        (to.ports.clone(), to.not_ports.clone()),
        (vec![8080], vec![9090])
    );
    assert_eq!(to.paths[0].kind, Some(Kind::Prefix("/api/".into())));
    assert_eq!(to.hosts[0].kind, Some(Kind::Presence(true)));
    assert_eq!(rule.when[1].key, "request.headers[x-tenant]");
    assert_eq!(
        rule.when[2].key, "source.ip",
        "remote.ip is the source inside the mesh"
    );
}

#[test]
fn invalid_policies_are_rejected_with_the_field() {
    let cases = [
        ("  action: CUSTOM\n  provider: {name: ext}", "spec.action"),
        (
            "  rules: [{when: [{key: \"request.auth.claims[iss]\", values: [x]}]}]",
            "spec.rules[0].when[0].key",
        ),
        (
            "  rules: [{when: [{key: source.ip}]}]",
            "spec.rules[0].when[0].values",
        ),
        (
            "  rules: [{when: [{key: destination.port, values: [http]}]}]",
            "spec.rules[0].when[0].values[0]",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [10.0.0.0/33]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [not-an-ip]}}]}]",
            "spec.rules[0].from[0].source.ipBlocks[0]",
        ),
        (
            "  rules: [{to: [{operation: {ports: [\"70000\"]}}]}]",
            "spec.rules[0].to[0].operation.ports[0]",
        ),
        (
            "  rules: [{to: [{operation: {paths: [/a*b]}}]}]",
            "spec.rules[0].to[0].operation.paths[0]",
        ),
        (
            "  rules: [{from: [{source: {requestPrincipals: [\"*\"]}}]}]",
            "spec.rules[0].from[0].source.requestPrincipals",
        ),
        (
            "  selector: {matchLabels: {app: x}}\n  targetRefs: [{kind: Service, name: x}]",
            "spec.selector",
        ),
        (
            "  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: x}]",
            "spec.targetRefs[0].kind",
        ),
        (
            "  targetRefs: [{kind: Service, name: x, namespace: other}]",
            "spec.targetRefs[0].namespace",
        ),
        // A misspelt key must not be ignored: it would widen the policy.
        (
            "  rules: [{from: [{source: {principal: [x]}}]}]",
            "spec.rules[0].from[0].source",
        ),
    ];
    for (spec, field) in cases {
        let parsed = parse_file(Path::new("p.yaml"), &policy("shop", "bad", spec));
        assert!(parsed.objects.is_empty(), "accepted: {spec}");
        assert_eq!(parsed.errors.len(), 1, "{spec}");
        let err = &parsed.errors[0];
        assert!(
            err.field.starts_with(field),
            "{spec}: field {:?}, wanted {field}: {}",
            err.field,
            err.reason
        );
        assert!(!err.reason.is_empty());
    }
}
