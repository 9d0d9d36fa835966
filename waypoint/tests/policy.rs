//! L7 and L4 authorization at the waypoint, with the policies the controller sends it
//! (SCOPE_WAYPOINT, bound by targetRefs), evaluated by `ambit_proto::authz`.

mod common;

use ambit_proto::api::{self, resource::Kind, string_match, type_url};
use ambit_proto::hbone::REASON_HEADER;
use ambit_waypoint::proxy::Protocol;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn exact(s: &str) -> api::StringMatch {
    api::StringMatch {
        kind: Some(string_match::Kind::Exact(s.into())),
    }
}

fn prefix(s: &str) -> api::StringMatch {
    api::StringMatch {
        kind: Some(string_match::Kind::Prefix(s.into())),
    }
}

fn policy(name: &str, action: api::Action, target: &str, rules: Vec<api::Rule>) -> api::Resource {
    resource(
        &format!("{NS}/{name}"),
        Kind::Authorization(api::Authorization {
            name: name.into(),
            namespace: NS.into(),
            scope: api::Scope::Waypoint as i32,
            action: action as i32,
            rules,
            targets: vec![target.into()],
        }),
    )
}

fn to(d: api::Destination) -> api::Rule {
    api::Rule {
        to: vec![d],
        ..Default::default()
    }
}

#[tokio::test]
async fn l7_deny_by_path_and_by_method_gives_403_naming_the_policy() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "shop", Behaviour::default()).await;
        mesh.service("shop", "10.96.2.10", &[&b]);
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![policy(
                "no-admin",
                api::Action::Deny,
                "Service/shop/shop",
                vec![
                    to(api::Destination {
                        paths: vec![prefix("/admin")],
                        ..Default::default()
                    }),
                    to(api::Destination {
                        methods: vec![exact("DELETE")],
                        ..Default::default()
                    }),
                ],
            )],
        );
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let mut client = mesh.http("10.96.2.10", protocol).await;
            let a = client.get("/admin/users").await;
            assert_eq!(a.status, 403);
            assert!(a.body.contains("shop/no-admin"), "{}", a.body);
            assert!(
                a.header(REASON_HEADER)
                    .contains("DENY policy shop/no-admin")
            );
            let delete = get("/cart").method("DELETE").body(Full::default()).unwrap();
            assert_eq!(client.send(delete).await.status, 403);
            assert_eq!(client.get("/cart").await.status, 200);
        }
        assert_eq!(b.requests.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert!(mesh.metrics().contains("response_flags=\"RBAC\""));
    })
    .await;
}

#[tokio::test]
async fn allow_policies_judge_the_original_client_and_bind_to_their_target() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "a", Behaviour::default()).await;
        let other = Backend::start(&mesh, "b", Behaviour::default()).await;
        mesh.service("a", "10.96.2.20", &[&b]);
        mesh.service("b", "10.96.2.21", &[&other]);
        let from = |principal: &str| api::Rule {
            from: vec![api::Source {
                principals: vec![exact(principal)],
                ..Default::default()
            }],
            ..Default::default()
        };
        // The client's identity, as the agent proved it to the waypoint: allowed.
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![policy(
                "only-frontend",
                api::Action::Allow,
                "Service/shop/a",
                vec![from("cluster.local/ns/frontend/sa/client")],
            )],
        );
        let mut client = mesh.http("10.96.2.20", Protocol::Http1).await;
        assert_eq!(client.get("/").await.status, 200);
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![policy(
                "only-frontend",
                api::Action::Allow,
                "Service/shop/a",
                vec![from("cluster.local/ns/frontend/sa/someone-else")],
            )],
        );
        let a = client.get("/").await;
        assert_eq!(a.status, 403);
        assert!(a.body.contains("none of their rules matched"), "{}", a.body);
        // Bound to service a only: service b through the same waypoint is not judged by it.
        let mut to_b = mesh.http("10.96.2.21", Protocol::Http1).await;
        assert_eq!(to_b.get("/").await.status, 200);
    })
    .await;
}

#[tokio::test]
async fn a_policy_bound_to_the_waypoint_judges_every_service_and_a_new_config_version_is_recompiled()
 {
    within(async {
        let mesh = Mesh::start().await;
        let a = Backend::start(&mesh, "a", Behaviour::default()).await;
        let b = Backend::start(&mesh, "b", Behaviour::default()).await;
        mesh.service("a", "10.96.2.30", &[&a]);
        mesh.service("b", "10.96.2.31", &[&b]);
        let deny_path = |p: &str| api::Rule {
            to: vec![api::Destination {
                paths: vec![prefix(p)],
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut both = policy(
            "no-admin",
            api::Action::Deny,
            &format!("Gateway/{NS}/waypoint"),
            vec![deny_path("/admin")],
        );
        if let Some(Kind::Authorization(p)) = &mut both.kind {
            p.targets.push("Service/shop/a".into());
        }
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![
                both,
                policy(
                    "a-no-debug",
                    api::Action::Deny,
                    "Service/shop/a",
                    vec![deny_path("/debug")],
                ),
            ],
        );
        let mut to_a = mesh.http("10.96.2.30", Protocol::Http1).await;
        let mut to_b = mesh.http("10.96.2.31", Protocol::Http1).await;
        // Bound to the waypoint: both services are judged by it.
        for client in [&mut to_a, &mut to_b] {
            let denied = client.get("/admin/users").await;
            assert_eq!(denied.status, 403);
            assert!(denied.body.contains("no-admin"), "{}", denied.body);
            assert_eq!(client.get("/").await.status, 200);
        }
        // Bound to service a: b's /debug passes, a's is denied.
        assert_eq!(to_a.get("/debug").await.status, 403);
        assert_eq!(to_b.get("/debug").await.status, 200);
        // The policy is gone with the config version that removed it.
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![policy(
                "no-admin",
                api::Action::Allow,
                "Service/shop/b",
                vec![deny_path("/")],
            )],
        );
        assert_eq!(to_a.get("/admin/users").await.status, 200);
    })
    .await;
}

/// A TCP server on a fresh loopback address that echoes each connection.
async fn tcp_echo(mesh: &Mesh) -> std::net::SocketAddr {
    let listener = TcpListener::bind((mesh.next_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn opaque_tcp_passes_with_l4_policy() {
    within(async {
        let mesh = Mesh::start().await;
        let echo = tcp_echo(&mesh).await;
        mesh.apply(type_url::SERVICE, vec![service("db", "10.96.2.30")]);
        let host = hostname("db");
        mesh.apply(
            type_url::WORKLOAD,
            vec![workload(
                "db-1",
                NS,
                "backend",
                &echo.ip().to_string(),
                &[(&host, 80, echo.port())],
            )],
        );
        let vip = "10.96.2.30:80".parse().unwrap();
        let mut tunnel = mesh.tunnel(vip).await;
        tunnel.write_all(b"hello, not HTTP\n").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut back = Vec::new();
        tunnel.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"hello, not HTTP\n");

        // An L4 DENY on the client's namespace closes the tunnel without a byte through.
        mesh.apply(
            type_url::AUTHORIZATION,
            vec![policy(
                "no-frontend",
                api::Action::Deny,
                "Service/shop/db",
                vec![api::Rule {
                    from: vec![api::Source {
                        namespaces: vec![exact("frontend")],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            )],
        );
        let mut tunnel = mesh.tunnel(vip).await;
        tunnel.write_all(b"hello again\n").await.unwrap();
        let mut back = Vec::new();
        let _ = tunnel.read_to_end(&mut back).await;
        assert!(back.is_empty());
        let metrics = mesh.metrics();
        assert!(
            metrics.contains("istio_tcp_connections_closed_total{reporter=\"waypoint\""),
            "{metrics}"
        );
    })
    .await;
}
