use std::net::IpAddr;

use super::*;
use crate::api::{Authorization, Cidr, Condition, Destination, Rule, Source, StringMatch};

fn exact(s: &str) -> StringMatch {
    StringMatch {
        kind: Some(Kind::Exact(s.into())),
    }
}

fn prefix(s: &str) -> StringMatch {
    StringMatch {
        kind: Some(Kind::Prefix(s.into())),
    }
}

fn policy(name: &str, action: Action, rules: Vec<Rule>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "prod".into(),
        action: action as i32,
        rules,
        ..Default::default()
    }
}

fn from(source: Source) -> Rule {
    Rule {
        from: vec![source],
        ..Default::default()
    }
}

fn to(destination: Destination) -> Rule {
    Rule {
        to: vec![destination],
        ..Default::default()
    }
}

struct Conn {
    identity: Option<Identity>,
    ip: IpAddr,
    port: u16,
}

fn conn(identity: Option<&str>, ip: &str, port: u16) -> Conn {
    Conn {
        identity: identity.map(|i| i.parse().unwrap()),
        ip: ip.parse().unwrap(),
        port,
    }
}

impl Conn {
    fn attrs(&self) -> Attributes<'_> {
        Attributes {
            source_identity: self.identity.as_ref(),
            source_ip: self.ip,
            destination_ip: "10.244.2.5".parse().unwrap(),
            destination_port: self.port,
            http: None,
        }
    }
}

const SLEEP: &str = "spiffe://cluster.local/ns/prod/sa/sleep";
const OTHER: &str = "spiffe://cluster.local/ns/test/sa/client";

#[test]
fn no_policy_allows_and_deny_beats_allow() {
    let c = conn(Some(SLEEP), "10.244.1.4", 8080);
    assert_eq!(evaluate([], &c.attrs()), Decision::AllowNoPolicy);
    let allow = policy(
        "allow-sleep",
        Action::Allow,
        vec![from(Source {
            principals: vec![exact("cluster.local/ns/prod/sa/sleep")],
            ..Default::default()
        })],
    );
    let deny = policy(
        "deny-8080",
        Action::Deny,
        vec![to(Destination {
            ports: vec![8080],
            ..Default::default()
        })],
    );
    let d = evaluate([&allow], &c.attrs());
    assert_eq!(
        d,
        Decision::Allow {
            policy: "prod/allow-sleep".into(),
            rule: 0
        }
    );
    let d = evaluate([&allow, &deny], &c.attrs());
    assert_eq!(
        d,
        Decision::Deny {
            policy: "prod/deny-8080".into(),
            rule: 0
        }
    );
    assert!(d.explain().contains("DENY policy prod/deny-8080"));
    // Another principal is not allowed once an ALLOW policy exists.
    let other = conn(Some(OTHER), "10.244.1.9", 8080);
    assert!(matches!(
        evaluate([&allow], &other.attrs()),
        Decision::DenyNoMatch { .. }
    ));
}

#[test]
fn namespaces_ip_blocks_and_negations() {
    let p = policy(
        "p",
        Action::Allow,
        vec![from(Source {
            not_namespaces: vec![exact("test")],
            ip_blocks: vec![Cidr {
                address: "10.244.1.0".into(),
                prefix_len: 24,
            }],
            ..Default::default()
        })],
    );
    assert!(evaluate([&p], &conn(Some(SLEEP), "10.244.1.4", 80).attrs()).allowed());
    assert!(!evaluate([&p], &conn(Some(OTHER), "10.244.1.4", 80).attrs()).allowed());
    assert!(!evaluate([&p], &conn(Some(SLEEP), "10.244.2.4", 80).attrs()).allowed());
    // Plaintext: no identity; a namespace-less rule still judges by address.
    assert!(evaluate([&p], &conn(None, "10.244.1.4", 80).attrs()).allowed());
    let needs_identity = policy(
        "any-principal",
        Action::Allow,
        vec![from(Source {
            principals: vec![StringMatch {
                kind: Some(Kind::Presence(true)),
            }],
            ..Default::default()
        })],
    );
    assert!(!evaluate([&needs_identity], &conn(None, "10.244.1.4", 80).attrs()).allowed());
    assert!(
        evaluate(
            [&needs_identity],
            &conn(Some(OTHER), "10.1.1.1", 80).attrs()
        )
        .allowed()
    );
}

#[test]
fn http_rules_fail_safe_without_http() {
    let l7_allow = policy(
        "get-only",
        Action::Allow,
        vec![to(Destination {
            methods: vec![exact("GET")],
            ..Default::default()
        })],
    );
    let c = conn(Some(SLEEP), "10.244.1.4", 8080);
    // The node agent cannot see the method: the ALLOW rule matches nothing, so it denies.
    assert!(!evaluate([&l7_allow], &c.attrs()).allowed());
    // A DENY rule with HTTP fields is judged by its L4 fields: port 8080 -> denied outright.
    let l7_deny = policy(
        "no-admin",
        Action::Deny,
        vec![to(Destination {
            ports: vec![8080],
            paths: vec![prefix("/admin")],
            ..Default::default()
        })],
    );
    assert!(!evaluate([&l7_deny], &c.attrs()).allowed());
    assert!(evaluate([&l7_deny], &conn(Some(SLEEP), "10.244.1.4", 9090).attrs()).allowed());

    // A waypoint sees the request and decides precisely.
    let headers = HeaderMap::new();
    let mut attrs = c.attrs();
    attrs.http = Some(HttpAttributes {
        method: "GET",
        path: "/public",
        host: "reviews.prod.svc.cluster.local:8080",
        headers: &headers,
    });
    assert!(evaluate([&l7_allow, &l7_deny], &attrs).allowed());
    attrs.http = Some(HttpAttributes {
        method: "GET",
        path: "/admin/users",
        host: "reviews",
        headers: &headers,
    });
    assert!(!evaluate([&l7_allow, &l7_deny], &attrs).allowed());
}

#[test]
fn when_conditions_and_audit() {
    let p = policy(
        "cond",
        Action::Allow,
        vec![Rule {
            when: vec![
                Condition {
                    key: "source.ip".into(),
                    values: vec![exact("10.244.1.0/24")],
                    not_values: vec![exact("10.244.1.66")],
                },
                Condition {
                    key: "destination.port".into(),
                    values: vec![exact("8080")],
                    not_values: vec![],
                },
            ],
            ..Default::default()
        }],
    );
    assert!(evaluate([&p], &conn(None, "10.244.1.4", 8080).attrs()).allowed());
    assert!(!evaluate([&p], &conn(None, "10.244.1.66", 8080).attrs()).allowed());
    assert!(!evaluate([&p], &conn(None, "10.244.1.4", 9090).attrs()).allowed());
    let audit = policy("audit", Action::Audit, vec![Rule::default()]);
    assert_eq!(
        evaluate([&audit], &conn(None, "1.2.3.4", 1).attrs()),
        Decision::AllowNoPolicy
    );
    // An ALLOW policy with no rules allows nothing; a DENY policy with no rules denies nothing.
    let empty_allow = policy("empty", Action::Allow, vec![]);
    let empty_deny = policy("empty-deny", Action::Deny, vec![]);
    assert!(!evaluate([&empty_allow], &conn(None, "1.2.3.4", 1).attrs()).allowed());
    assert!(evaluate([&empty_deny], &conn(None, "1.2.3.4", 1).attrs()).allowed());
}
