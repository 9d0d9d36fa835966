//! HBONE's security properties: who may talk to whom.

mod common;

use std::sync::Arc;

use ambit_proto::hbone::HboneError;
use ambit_proto::testing::{self, DialAuthority};
use ambit_proto::tls::{SpiffeServerVerifier, TrustRoots, WorkloadCertificate, provider};
use common::*;
use http::{Method, Request, StatusCode};
use rcgen::SanType;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[tokio::test]
async fn round_trip_carries_identities_and_forwarded() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let recorder = Recorder::default();
        let (hbone, _drain) = serve(&server, recorder.clone()).await;
        let upstream = echo_upstream().await;

        let mut req = request(&source, server.identity(), hbone, upstream);
        req.forwarded_for = Some("10.244.1.7:40000".parse().unwrap());
        req.headers.push((
            "baggage".parse().unwrap(),
            "k8s.namespace.name=frontend".parse().unwrap(),
        ));
        let mut tunnel = client().connect(req).await.unwrap();
        assert_eq!(exchange(&mut tunnel, b"hello mesh").await, b"hello mesh");

        let seen = recorder.seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].peer_identity, *source.identity());
        assert_eq!(seen[0].authority, upstream);
        assert_eq!(seen[0].local_addr, hbone);
        assert_eq!(
            seen[0].forwarded_for,
            Some("10.244.1.7:40000".parse().unwrap())
        );
        assert_eq!(seen[0].headers["baggage"], "k8s.namespace.name=frontend");
    })
    .await
}

#[tokio::test]
async fn wrong_server_identity_is_refused() {
    within(async {
        let Pair { server, source, .. } = Pair::new();
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let upstream = echo_upstream().await;

        let expected = testing::identity("backend", "someone-else");
        let err = client()
            .connect(request(&source, &expected, hbone, upstream))
            .await
            .err()
            .expect("connected to a server with the wrong identity");
        assert!(matches!(err, HboneError::Handshake { .. }), "{err}");
        assert!(err.to_string().contains("UnexpectedIdentity"), "{err}");
    })
    .await
}

#[tokio::test]
async fn untrusted_root_is_refused_both_ways() {
    within(async {
        let ca = testing::ca();
        let rogue_ca = testing::ca();
        let upstream = echo_upstream().await;

        // A server whose certificate chains to another root.
        let rogue_server = testing::cert(&rogue_ca, "backend", "server");
        let (hbone, _d1) = serve(&rogue_server, DialAuthority::default()).await;
        let source = testing::cert(&ca, "frontend", "client");
        let err = client()
            .connect(request(&source, rogue_server.identity(), hbone, upstream))
            .await
            .err()
            .expect("trusted a server from an unknown root");
        // Two test roots share a subject name, so webpki may report either.
        let msg = err.to_string();
        assert!(
            msg.contains("UnknownIssuer") || msg.contains("BadSignature"),
            "{err}"
        );

        // A client whose certificate chains to another root, though it trusts the real one.
        let server = testing::cert(&ca, "backend", "server");
        let recorder = Recorder::default();
        let (hbone, _d2) = serve(&server, recorder.clone()).await;
        let rogue_source =
            Arc::new(testing::cert(&rogue_ca, "frontend", "client").with_roots(ca.roots().clone()));
        let result = client()
            .connect(request(&rogue_source, server.identity(), hbone, upstream))
            .await;
        assert!(
            result.is_err(),
            "server accepted a client from an unknown root"
        );
        assert!(recorder.seen.lock().unwrap().is_empty());
    })
    .await
}

#[tokio::test]
async fn several_roots_are_trusted_during_rotation() {
    within(async {
        let old_ca = testing::ca();
        let new_ca = testing::ca();
        let both = TrustRoots::new(
            [old_ca.roots().certificates(), new_ca.roots().certificates()].concat(),
        )
        .unwrap();
        // The server already has a certificate from the new root; the client still has its old one.
        let server = Arc::new(testing::cert(&new_ca, "backend", "server").with_roots(both.clone()));
        let source = Arc::new(testing::cert(&old_ca, "frontend", "client").with_roots(both));
        let (hbone, _drain) = serve(&server, DialAuthority::default()).await;
        let upstream = echo_upstream().await;
        let mut tunnel = client()
            .connect(request(&source, server.identity(), hbone, upstream))
            .await
            .unwrap();
        assert_eq!(exchange(&mut tunnel, b"rotated").await, b"rotated");
    })
    .await
}

fn expired_cert(
    ca: &ambit_proto::tls::authority::CertificateAuthority,
    ns: &str,
    sa: &str,
) -> Arc<WorkloadCertificate> {
    let now = OffsetDateTime::now_utc();
    let (chain, key) = testing::raw_leaf(
        ca,
        vec![SanType::URI(
            testing::identity(ns, sa).to_string().try_into().unwrap(),
        )],
        now - time::Duration::hours(2),
        now - time::Duration::hours(1),
    )
    .unwrap();
    Arc::new(WorkloadCertificate::new(chain, key, ca.roots().clone()).unwrap())
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    within(async {
        let ca = testing::ca();
        let upstream = echo_upstream().await;

        let expired_server = expired_cert(&ca, "backend", "server");
        let (hbone, _d1) = serve(&expired_server, DialAuthority::default()).await;
        let source = testing::cert(&ca, "frontend", "client");
        let err = client()
            .connect(request(&source, expired_server.identity(), hbone, upstream))
            .await
            .err()
            .expect("accepted an expired server certificate");
        assert!(err.to_string().contains("expired"), "{err}");

        let server = testing::cert(&ca, "backend", "server");
        let recorder = Recorder::default();
        let (hbone, _d2) = serve(&server, recorder.clone()).await;
        let expired_source = expired_cert(&ca, "frontend", "client");
        assert!(
            client()
                .connect(request(&expired_source, server.identity(), hbone, upstream))
                .await
                .is_err()
        );
        assert!(recorder.seen.lock().unwrap().is_empty());
    })
    .await
}

/// Opens TLS to `hbone` as a client presenting `client_auth` (or no certificate), then tries one
/// CONNECT over HTTP/2. Returns the status, or the error that stopped it.
async fn raw_connect(
    hbone: std::net::SocketAddr,
    server: &WorkloadCertificate,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<StatusCode, String> {
    let verifier = SpiffeServerVerifier::new(
        server.roots().store().clone(),
        vec![server.identity().clone()],
    );
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(hbone).await.map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(hbone.ip().into()), tcp)
        .await
        .map_err(|e| e.to_string())?;
    // In TLS 1.3 the server judges the client certificate after the client thinks it is done,
    // so a refusal shows up on the first exchange of HTTP/2 frames.
    let (mut send, conn) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("127.0.0.1:1")
        .body(())
        .unwrap();
    let (resp, _body) = send.send_request(req, false).map_err(|e| e.to_string())?;
    resp.await.map(|r| r.status()).map_err(|e| e.to_string())
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    within(async {
        let ca = testing::ca();
        let server = testing::cert(&ca, "backend", "server");
        let recorder = Recorder::default();
        let (hbone, _drain) = serve(&server, recorder.clone()).await;
        let outcome = raw_connect(hbone, &server, None).await;
        assert!(outcome.is_err(), "got {outcome:?}");
        assert!(recorder.seen.lock().unwrap().is_empty());
    })
    .await
}

#[tokio::test]
async fn clients_without_a_valid_spiffe_identity_are_refused() {
    within(async {
        let ca = testing::ca();
        let server = testing::cert(&ca, "backend", "server");
        let recorder = Recorder::default();
        let (hbone, _drain) = serve(&server, recorder.clone()).await;
        let now = OffsetDateTime::now_utc();
        let (from, to) = (
            now - time::Duration::minutes(1),
            now + time::Duration::hours(1),
        );
        let uri = |s: &str| SanType::URI(s.try_into().unwrap());
        let bad_sans = [
            vec![SanType::DnsName("client.example.com".try_into().unwrap())],
            vec![uri("https://example.com/ns/frontend/sa/client")],
            vec![uri("spiffe://cluster.local/ns/frontend")],
            vec![uri("spiffe://cluster.local/ns/Front/sa/client")],
            vec![uri("spiffe://other.domain/ns/frontend/sa/client")],
            vec![
                uri("spiffe://cluster.local/ns/frontend/sa/client"),
                uri("spiffe://cluster.local/ns/admin/sa/root"),
            ],
        ];
        for sans in bad_sans {
            let leaf = testing::raw_leaf(&ca, sans.clone(), from, to).unwrap();
            let outcome = raw_connect(hbone, &server, Some(leaf)).await;
            assert!(outcome.is_err(), "{sans:?} was accepted: {outcome:?}");
        }
        assert!(recorder.seen.lock().unwrap().is_empty());

        // The same path with a valid identity does get through, so the refusals above are real.
        let good = testing::raw_leaf(
            &ca,
            vec![uri("spiffe://cluster.local/ns/frontend/sa/client")],
            from,
            to,
        )
        .unwrap();
        let outcome = raw_connect(hbone, &server, Some(good)).await;
        // 127.0.0.1:1 has no listener: the tunnel is refused by the handler, not by TLS.
        assert_eq!(outcome, Ok(StatusCode::SERVICE_UNAVAILABLE));
    })
    .await
}
