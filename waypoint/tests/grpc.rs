//! gRPC through the waypoint (HTTP/2 with trailers): unary and bidirectional streaming calls with
//! tonic on both ends, and the request metrics they leave.

mod common;

use std::pin::Pin;

use ambit_proto::api::certificate_service_client::CertificateServiceClient;
use ambit_proto::api::certificate_service_server::{CertificateService, CertificateServiceServer};
use ambit_proto::api::config_discovery_service_client::ConfigDiscoveryServiceClient;
use ambit_proto::api::config_discovery_service_server::{
    ConfigDiscoveryService, ConfigDiscoveryServiceServer,
};
use ambit_proto::api::{self, CreateCertificateRequest, CreateCertificateResponse};
use common::*;
use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

struct Echo;

#[tonic::async_trait]
impl CertificateService for Echo {
    async fn create_certificate(
        &self,
        request: Request<CreateCertificateRequest>,
    ) -> Result<Response<CreateCertificateResponse>, Status> {
        let req = request.into_inner();
        if req.identity == "fail" {
            return Err(Status::permission_denied("asked to fail"));
        }
        Ok(Response::new(CreateCertificateResponse {
            cert_chain: vec![format!("signed {}", req.identity)],
            trust_roots: Vec::new(),
        }))
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<api::DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscoveryService for Echo {
    type DeltaConfigStream = Responses;

    /// Answers each request as it arrives, so the client can only go on once its previous
    /// message went all the way through.
    async fn delta_config(
        &self,
        request: Request<Streaming<api::DeltaDiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let answers = request.into_inner().map(|r| {
            r.map(|req| api::DeltaDiscoveryResponse {
                type_url: req.type_url,
                nonce: req.response_nonce,
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

async fn grpc_backend(mesh: &Mesh) -> Backend {
    let listener = TcpListener::bind((mesh.next_ip(), 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CertificateServiceServer::new(Echo))
            .add_service(ConfigDiscoveryServiceServer::new(Echo))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Backend {
        name: "grpc".into(),
        addr,
        requests: Default::default(),
        hosts: Default::default(),
    }
}

/// A gRPC channel whose every connection is an HBONE tunnel to the waypoint for `vip:80`.
async fn channel(mesh: &Mesh, vip: &str) -> tonic::transport::Channel {
    let client = mesh.client.clone();
    let request = mesh.connect_request(format!("{vip}:80").parse().unwrap());
    tonic::transport::Endpoint::from_static("http://grpc.shop.svc.cluster.local")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let (client, request) = (client.clone(), request.clone());
            async move {
                client
                    .connect(request)
                    .await
                    .map(TokioIo::new)
                    .map_err(std::io::Error::other)
            }
        }))
        .await
        .unwrap()
}

#[tokio::test]
async fn unary_and_streaming_grpc_pass_through_with_metrics() {
    within(async {
        let mesh = Mesh::start().await;
        let b = grpc_backend(&mesh).await;
        mesh.service("grpc", "10.96.3.10", &[&b]);
        // Retries configured: the request body is kept while it streams, never held back.
        mesh.route(route(
            "grpc",
            "grpc",
            vec![api::RouteRule {
                backends: vec![backend_ref("grpc", 1)],
                retry: Some(api::RetryPolicy {
                    attempts: 2,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        ));
        let channel = channel(&mesh, "10.96.3.10").await;

        let mut unary = CertificateServiceClient::new(channel.clone());
        let answer = unary
            .create_certificate(CreateCertificateRequest {
                identity: "alice".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.cert_chain, ["signed alice"]);
        let err = unary
            .create_certificate(CreateCertificateRequest {
                identity: "fail".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert_eq!(err.message(), "asked to fail");

        let mut streaming = ConfigDiscoveryServiceClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut answers = streaming
            .delta_config(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        for i in 0..5 {
            tx.send(api::DeltaDiscoveryRequest {
                type_url: "ping".into(),
                response_nonce: i.to_string(),
                ..Default::default()
            })
            .await
            .unwrap();
            let answer = answers
                .message()
                .await
                .unwrap()
                .expect("an answer per message");
            assert_eq!(answer.nonce, i.to_string());
        }
        drop(tx);
        assert!(answers.message().await.unwrap().is_none());

        let metrics = mesh.metrics();
        for expected in [
            "request_protocol=\"grpc\"",
            "grpc_response_status=\"0\"",
            "grpc_response_status=\"7\"",
        ] {
            assert!(metrics.contains(expected), "{expected} missing:\n{metrics}");
        }
    })
    .await;
}
