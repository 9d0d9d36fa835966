//! HBONE's data path: transfers, half-close, pooling, errors and hostile peers.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use ambit_proto::drain;
use ambit_proto::hbone::HboneError;
use ambit_proto::testing::{self, DialAuthority};
use common::*;
use http::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A deterministic but non-repeating byte stream, so reordered or duplicated chunks change the hash.
fn fill(block: &mut [u8], state: &mut u64) {
    for chunk in block.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
}

/// Reads a connection to its end and answers with the SHA-256 of what it read.
async fn hashing_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = conn.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                }
                conn.write_all(&hasher.finalize()).await.unwrap();
                conn.shutdown().await.unwrap();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gibibyte_arrives_intact() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let upstream = hashing_upstream().await;
        let mut tunnel = client()
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();

        const TOTAL: usize = 1 << 30;
        let mut block = vec![0u8; 1 << 20];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut sent = Sha256::new();
        for _ in 0..TOTAL / block.len() {
            fill(&mut block, &mut state);
            sent.update(&block);
            tunnel.write_all(&block).await.unwrap();
        }
        // Half-close: the upstream only answers after our FIN, over the still-open other half.
        tunnel.shutdown().await.unwrap();
        let mut received = Vec::new();
        tunnel.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, sent.finalize().to_vec());
    })
    .await
}

#[tokio::test]
async fn half_close_works_in_both_directions() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let client = client();

        // Client closes first; the upstream keeps talking afterwards.
        let mut tunnel = client
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();
        let (mut up, _) = listener.accept().await.unwrap();
        tunnel.write_all(b"request").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request", "upstream must see the client's FIN");
        up.write_all(b"response after your FIN").await.unwrap();
        up.shutdown().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"response after your FIN");

        // Upstream closes first; the client keeps talking afterwards.
        let mut tunnel = client
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();
        let (mut up, _) = listener.accept().await.unwrap();
        up.write_all(b"banner").await.unwrap();
        up.shutdown().await.unwrap();
        let mut got = Vec::new();
        tunnel.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"banner", "client must see the upstream's FIN");
        tunnel.write_all(b"late request").await.unwrap();
        tunnel.shutdown().await.unwrap();
        let mut got = Vec::new();
        up.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"late request");
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_streams_share_one_connection() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let recorder = Recorder::default();
        let (hbone, _drain) = serve(&server, recorder.clone()).await;
        let upstream = echo_upstream().await;
        let client = client();

        let tasks: Vec<_> = (0..100)
            .map(|i| {
                let (client, req) = (
                    client.clone(),
                    request(&source, server.identity(), hbone, upstream),
                );
                tokio::spawn(async move {
                    let mut tunnel = client.connect(req).await.unwrap();
                    let msg = format!("stream {i} ").repeat(1000);
                    let echoed = exchange(&mut tunnel, msg.as_bytes()).await;
                    assert_eq!(echoed, msg.as_bytes(), "stream {i} mixed up");
                    tunnel
                })
            })
            .collect();
        // Keep every tunnel open until all have been opened, so all 100 are concurrent.
        let mut open = Vec::new();
        for t in tasks {
            open.push(t.await.unwrap());
        }
        assert_eq!(client.pooled_connections(), 1);
        let peers: HashSet<_> = recorder
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.peer_addr)
            .collect();
        assert_eq!(
            peers.len(),
            1,
            "the server saw {} TCP connections",
            peers.len()
        );
        assert_eq!(recorder.seen.lock().unwrap().len(), 100);
    })
    .await
}

#[tokio::test]
async fn upstream_refused_is_an_error_status_not_a_hang() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let err = client()
            .connect(request(
                &source,
                server.identity(),
                hbone,
                closed_port().await,
            ))
            .await
            .err()
            .expect("tunnel to a closed port succeeded");
        match err {
            HboneError::Refused { status, reason, .. } => {
                assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
                assert!(reason.unwrap().contains("refused"));
            }
            other => panic!("expected a 503, got {other}"),
        }
    })
    .await
}

#[tokio::test]
async fn hbone_server_that_is_down_is_a_connect_failure() {
    within(async {
        let ca = testing::ca();
        let source = testing::cert(&ca, "frontend", "client");
        let dst = testing::identity("backend", "server");
        let err = client()
            .connect(request(
                &source,
                &dst,
                closed_port().await,
                closed_port().await,
            ))
            .await
            .err()
            .unwrap();
        assert!(err.is_connect_failure(), "{err}");
    })
    .await
}

#[tokio::test]
async fn garbage_peers_are_dropped_and_others_keep_being_served() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let upstream = echo_upstream().await;
        let client = client();

        // One good tunnel stays open throughout.
        let mut before = client
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();

        // Not TLS at all: plain HTTP, random bytes, a truncated ClientHello.
        let garbage: [&[u8]; 3] = [
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            &[0xde, 0xad, 0xbe, 0xef].repeat(4096),
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc],
        ];
        for bytes in garbage {
            let mut raw = TcpStream::connect(hbone).await.unwrap();
            let _ = raw.write_all(bytes).await;
            let _ = raw.shutdown().await;
            let mut sink = Vec::new();
            // The server must close on us (EOF or reset), not keep the socket.
            let _ = raw.read_to_end(&mut sink).await;
        }

        // Valid TLS, then bytes that are not HTTP/2.
        let tls_config = std::sync::Arc::new(source.client_config(&[server.identity().clone()]));
        let tcp = TcpStream::connect(hbone).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(tls_config)
            .connect(
                rustls::pki_types::ServerName::IpAddress(hbone.ip().into()),
                tcp,
            )
            .await
            .unwrap();
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff")
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tls.read_to_end(&mut sink).await;

        // The open tunnel and new tunnels still work.
        assert_eq!(exchange(&mut before, b"still here").await, b"still here");
        let mut after = client
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();
        assert_eq!(exchange(&mut after, b"and new ones").await, b"and new ones");
    })
    .await
}

#[tokio::test]
async fn silent_peer_is_cut_off_at_the_handshake_deadline() {
    within(async {
        let ca = testing::ca();
        let server = testing::cert(&ca, "backend", "server");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let settings = ambit_proto::hbone::ServerSettings {
            handshake_timeout: Duration::from_millis(200),
            ..Default::default()
        };
        let config = std::sync::Arc::new(server.server_config().unwrap());
        let srv =
            ambit_proto::hbone::Server::new(listener, config, DialAuthority::default(), settings);
        let addr = srv.local_addr().unwrap();
        let (_trigger, watch) = drain::channel();
        tokio::spawn(srv.run(watch));

        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut sink = Vec::new();
        // Resolves only because the server closes the connection.
        let _ = silent.read_to_end(&mut sink).await;
    })
    .await
}

#[tokio::test]
async fn drain_stops_accepting_and_lets_open_tunnels_finish() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, trigger) = serve(&server, DialAuthority::default()).await;
        let upstream = echo_upstream().await;
        let client = client();
        let mut open = client
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();

        let drained = tokio::spawn(trigger.drain(Duration::from_secs(30)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !drained.is_finished(),
            "drain finished while a tunnel was open"
        );
        // The open tunnel still carries data both ways.
        assert_eq!(exchange(&mut open, b"finishing").await, b"finishing");
        drop(open);
        assert_eq!(drained.await.unwrap(), drain::DrainOutcome::Complete);
        // New connections are no longer accepted.
        let fresh = ambit_proto::hbone::Client::new(Default::default());
        assert!(
            fresh
                .connect(request(&source, server.identity(), hbone, upstream))
                .await
                .is_err()
        );
    })
    .await
}

#[tokio::test]
async fn malformed_connect_requests_get_4xx_and_the_connection_survives() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let upstream = echo_upstream().await;

        let tls_config = std::sync::Arc::new(source.client_config(&[server.identity().clone()]));
        let tcp = TcpStream::connect(hbone).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(tls_config)
            .connect(
                rustls::pki_types::ServerName::IpAddress(hbone.ip().into()),
                tcp,
            )
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        let status = |req: http::Request<()>| {
            let send = send.clone();
            async move {
                let mut send = send.ready().await.unwrap();
                let (resp, _) = send.send_request(req, true).unwrap();
                resp.await.unwrap().status()
            }
        };
        let get = http::Request::get(format!("http://{upstream}/"))
            .body(())
            .unwrap();
        assert_eq!(status(get).await, StatusCode::METHOD_NOT_ALLOWED);
        let by_name = http::Request::builder()
            .method("CONNECT")
            .uri("backend.default.svc:80")
            .body(())
            .unwrap();
        assert_eq!(status(by_name).await, StatusCode::BAD_REQUEST);
        // Same connection, a well-formed CONNECT: 200.
        let good = http::Request::builder()
            .method("CONNECT")
            .uri(upstream.to_string())
            .body(())
            .unwrap();
        assert_eq!(status(good).await, StatusCode::OK);
    })
    .await
}
