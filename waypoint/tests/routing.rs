//! Routing through a real waypoint: default routing, weighted canaries, header matches, 404s,
//! rewrites, redirects, header changes, malformed requests.

mod common;

use std::net::SocketAddr;

use ambit_proto::api::{self, filter};
use ambit_proto::hbone::REASON_HEADER;
use ambit_waypoint::proxy::Protocol;
use common::*;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn without_routes_requests_reach_the_addressed_service_over_hbone() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "echo-1", Behaviour::default()).await;
        mesh.service("echo", "10.96.0.10", &[&b]);
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let mut client = mesh.http("10.96.0.10", protocol).await;
            let a = client.get("/hello?x=1").await;
            assert_eq!(a.status, 200, "{protocol:?}: {}", a.body);
            assert_eq!(a.header("x-backend"), "echo-1");
            assert_eq!(a.header("x-seen-path"), "/hello?x=1");
            assert_eq!(a.header("x-seen-host"), "svc.test");
        }
        // The destination agent saw the waypoint's identity and the original client.
        let seen = mesh.agent.seen.lock().unwrap().clone();
        assert!(!seen.is_empty());
        for tunnel in seen {
            assert_eq!(tunnel.peer_identity, mesh.waypoint_identity);
            assert_eq!(tunnel.authority, b.addr);
            let client: SocketAddr = format!("{CLIENT_IP}:40000").parse().unwrap();
            assert_eq!(tunnel.forwarded_for, Some(client));
        }
    })
    .await;
}

#[tokio::test]
async fn a_90_10_canary_split_holds_over_1000_requests() {
    within(async {
        let mesh = Mesh::start().await;
        let v1 = Backend::start(&mesh, "v1", Behaviour::default()).await;
        let v2 = Backend::start(&mesh, "v2", Behaviour::default()).await;
        mesh.service("reviews", "10.96.0.20", &[&v1]);
        mesh.service("reviews-v2", "10.96.0.21", &[&v2]);
        mesh.route(route(
            "canary",
            "reviews",
            vec![api::RouteRule {
                backends: vec![backend_ref("reviews", 90), backend_ref("reviews-v2", 10)],
                ..Default::default()
            }],
        ));
        let mut client = mesh.http("10.96.0.20", Protocol::Http1).await;
        let mut to_v2 = 0;
        for _ in 0..1000 {
            let a = client.get("/").await;
            assert_eq!(a.status, 200);
            if a.header("x-backend") == "v2" {
                to_v2 += 1;
            }
        }
        // Binomial(1000, 0.1): mean 100, sd 9.5; 60..=140 is more than 4 sd either way.
        assert!((60..=140).contains(&to_v2), "{to_v2} of 1000 went to v2");
    })
    .await;
}

#[tokio::test]
async fn headers_and_methods_pick_the_rule() {
    within(async {
        let mesh = Mesh::start().await;
        let v1 = Backend::start(&mesh, "v1", Behaviour::default()).await;
        let v2 = Backend::start(&mesh, "v2", Behaviour::default()).await;
        mesh.service("reviews", "10.96.0.30", &[&v1]);
        mesh.service("reviews-v2", "10.96.0.31", &[&v2]);
        let by_header = api::RouteMatch {
            headers: vec![api::ValueMatch {
                name: "x-canary".into(),
                kind: Some(api::value_match::Kind::Exact("yes".into())),
            }],
            ..Default::default()
        };
        let by_query = api::RouteMatch {
            query_params: vec![api::ValueMatch {
                name: "version".into(),
                kind: Some(api::value_match::Kind::Regex("v2|two".into())),
            }],
            method: "GET".into(),
            ..Default::default()
        };
        mesh.route(route(
            "by-header",
            "reviews",
            vec![
                api::RouteRule {
                    backends: vec![backend_ref("reviews", 1)],
                    ..Default::default()
                },
                api::RouteRule {
                    matches: vec![by_header, by_query],
                    backends: vec![backend_ref("reviews-v2", 1)],
                    ..Default::default()
                },
            ],
        ));
        let mut client = mesh.http("10.96.0.30", Protocol::Http2).await;
        let canary = get("/")
            .header("x-canary", "yes")
            .body(Full::default())
            .unwrap();
        assert_eq!(client.send(canary).await.header("x-backend"), "v2");
        assert_eq!(client.get("/?version=two").await.header("x-backend"), "v2");
        assert_eq!(client.get("/").await.header("x-backend"), "v1");
        let post = get("/?version=v2")
            .method("POST")
            .body(Full::default())
            .unwrap();
        assert_eq!(client.send(post).await.header("x-backend"), "v1");
    })
    .await;
}

#[tokio::test]
async fn unmatched_and_unknown_destinations_get_404_naming_why() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "api", Behaviour::default()).await;
        mesh.service("api", "10.96.0.40", &[&b]);
        mesh.route(route(
            "only-api",
            "api",
            vec![api::RouteRule {
                matches: vec![path_prefix("/api")],
                backends: vec![backend_ref("api", 1)],
                ..Default::default()
            }],
        ));
        let mut client = mesh.http("10.96.0.40", Protocol::Http1).await;
        assert_eq!(client.get("/api/users").await.status, 200);
        let a = client.get("/apiary").await;
        assert_eq!(a.status, 404);
        assert!(a.header(REASON_HEADER).contains("no route"), "{}", a.body);

        let mut nowhere = mesh.http("10.96.9.9", Protocol::Http1).await;
        let a = nowhere.get("/").await;
        assert_eq!(a.status, 404);
        assert!(a.header(REASON_HEADER).contains("10.96.9.9:80"));
    })
    .await;
}

#[tokio::test]
async fn filters_rewrite_redirect_and_change_headers() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "web", Behaviour::default()).await;
        mesh.service("web", "10.96.0.50", &[&b]);
        let header = |name: &str, value: &str| api::Header {
            name: name.into(),
            value: value.into(),
        };
        let rewrite = api::Filter {
            kind: Some(filter::Kind::UrlRewrite(api::Rewrite {
                hostname: "web.internal".into(),
                path: Some(api::PathRewrite {
                    kind: Some(api::path_rewrite::Kind::ReplacePrefixMatch("/v2".into())),
                }),
            })),
        };
        let request_headers = api::Filter {
            kind: Some(filter::Kind::RequestHeaderModifier(api::HeaderModifier {
                set: vec![header("x-env", "canary")],
                add: vec![header("x-added", "1")],
                remove: vec!["x-secret".into()],
            })),
        };
        let response_headers = api::Filter {
            kind: Some(filter::Kind::ResponseHeaderModifier(api::HeaderModifier {
                set: vec![header("x-served-by", "waypoint")],
                ..Default::default()
            })),
        };
        let redirect = api::Filter {
            kind: Some(filter::Kind::RequestRedirect(api::Redirect {
                scheme: "https".into(),
                hostname: "new.example".into(),
                status_code: 301,
                ..Default::default()
            })),
        };
        mesh.route(route(
            "web",
            "web",
            vec![
                api::RouteRule {
                    matches: vec![path_prefix("/v1")],
                    filters: vec![rewrite, request_headers, response_headers],
                    backends: vec![backend_ref("web", 1)],
                    ..Default::default()
                },
                api::RouteRule {
                    matches: vec![path_prefix("/old")],
                    filters: vec![redirect],
                    ..Default::default()
                },
            ],
        ));
        let mut client = mesh.http("10.96.0.50", Protocol::Http1).await;
        let req = get("/v1/items?page=2")
            .header("x-secret", "hunter2")
            .header("x-env", "prod")
            .body(Full::default())
            .unwrap();
        let a = client.send(req).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.header("x-seen-path"), "/v2/items?page=2");
        assert_eq!(a.header("x-seen-host"), "web.internal");
        assert_eq!(a.header("x-req-x-env"), "canary");
        assert_eq!(a.header("x-req-x-added"), "1");
        assert_eq!(a.header("x-req-x-secret"), "");
        assert_eq!(a.header("x-served-by"), "waypoint");

        let a = client.get("/old/page").await;
        assert_eq!(a.status, 301);
        assert_eq!(a.header("location"), "https://new.example/old/page");
    })
    .await;
}

#[tokio::test]
async fn a_mirrored_request_reaches_the_shadow_backend_marked_shadow_and_only_the_primary_answers()
{
    within(async {
        let mesh = Mesh::start().await;
        let web = Backend::start(&mesh, "web", Behaviour::default()).await;
        let shadow = Backend::start(&mesh, "shadow", Behaviour::default()).await;
        mesh.service("web", "10.96.0.60", &[&web]);
        mesh.service("shadow", "10.96.0.61", &[&shadow]);
        let mirror = api::Filter {
            kind: Some(filter::Kind::RequestMirror(api::Mirror {
                backend: Some(backend_ref("shadow", 1)),
                ..Default::default()
            })),
        };
        mesh.route(route(
            "web",
            "web",
            vec![api::RouteRule {
                filters: vec![mirror],
                backends: vec![backend_ref("web", 1)],
                ..Default::default()
            }],
        ));
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let mut client = mesh.http("10.96.0.60", protocol).await;
            for _ in 0..3 {
                let a = client.get("/items").await;
                assert_eq!(a.status, 200, "{}", a.body);
                assert_eq!(a.header("x-backend"), "web");
            }
        }
        // The copies are sent and forgotten: they arrive, but not before the answers.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while shadow.requests.load(std::sync::atomic::Ordering::Relaxed) < 6 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the copies never arrived"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(web.requests.load(std::sync::atomic::Ordering::Relaxed), 6);
        let hosts = shadow.hosts.lock().unwrap().clone();
        assert_eq!(hosts.len(), 6, "{hosts:?}");
        for host in &hosts {
            assert!(host.contains("-shadow"), "{hosts:?}");
        }
        assert!(
            web.hosts
                .lock()
                .unwrap()
                .iter()
                .all(|h| !h.contains("-shadow"))
        );
    })
    .await;
}

#[tokio::test]
async fn malformed_http1_gets_400() {
    within(async {
        let mesh = Mesh::start().await;
        let b = Backend::start(&mesh, "echo", Behaviour::default()).await;
        mesh.service("echo", "10.96.0.60", &[&b]);
        let mut tunnel = mesh.tunnel("10.96.0.60:80".parse().unwrap()).await;
        tunnel
            .write_all(b"GET / HTTP/1.1\r\nthis is not a header\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64];
        let n = tunnel.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    })
    .await;
}
