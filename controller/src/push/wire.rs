//! The config service on the wire: `ambit.v1.ConfigDiscoveryService/DeltaConfig` with responses
//! assembled from resources encoded once.
//!
//! The generated server would need each response as an owned `DeltaDiscoveryResponse`: a deep
//! copy of every resource it carries, encoded again for every client. At 10k pods and 50 clients
//! that is 50 copies and encodings of the whole mesh at start (about a gigabyte at peak). Here a
//! response holds pointers to [`Versioned`] resources and its encoder copies their stored bytes.
//! The bytes are a valid `DeltaDiscoveryResponse` (a repeated message field is its elements'
//! encodings, each behind its tag and length), so clients use the generated types unchanged.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ambit_proto::api::{self, DeltaDiscoveryRequest};
use futures::Stream;
use prost::Message;
use prost::bytes::BufMut;
use prost::encoding::{encoded_len_varint, key_len};
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body as HttpBody, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use super::resources::{Versioned, put_bytes};
use super::server::ConfigServer;

const METHOD: &str = "/ambit.v1.ConfigDiscoveryService/DeltaConfig";

/// A `DeltaDiscoveryResponse` whose resources are already encoded.
#[derive(Debug, Clone, Default)]
pub struct DeltaResponse {
    pub system_version_info: String,
    pub resources: Vec<Arc<Versioned>>,
    pub type_url: String,
    pub removed_resources: Vec<Arc<str>>,
    pub nonce: String,
}

impl DeltaResponse {
    /// Writes the `DeltaDiscoveryResponse` encoding (field numbers from discovery.proto).
    pub fn encode(&self, buf: &mut impl BufMut) {
        let text = |field, value: &str, buf: &mut _| {
            // proto3 leaves empty strings out.
            if !value.is_empty() {
                put_bytes(field, value.as_bytes(), buf);
            }
        };
        text(1, &self.system_version_info, buf);
        for r in &self.resources {
            put_bytes(2, &r.encoded, buf);
        }
        text(3, &self.type_url, buf);
        for name in &self.removed_resources {
            put_bytes(4, name.as_bytes(), buf);
        }
        text(5, &self.nonce, buf);
    }

    pub fn encoded_len(&self) -> usize {
        let field = |field, len: usize| key_len(field) + encoded_len_varint(len as u64) + len;
        let text = |f, value: &str| (!value.is_empty()).then(|| field(f, value.len()));
        text(1, &self.system_version_info).unwrap_or(0)
            + self
                .resources
                .iter()
                .map(|r| field(2, r.encoded.len()))
                .sum::<usize>()
            + text(3, &self.type_url).unwrap_or(0)
            + self
                .removed_resources
                .iter()
                .map(|n| field(4, n.len()))
                .sum::<usize>()
            + text(5, &self.nonce).unwrap_or(0)
    }

    /// The same response as the generated type (what a client decodes).
    pub fn to_message(&self) -> api::DeltaDiscoveryResponse {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes);
        api::DeltaDiscoveryResponse::decode(bytes.as_slice()).expect("our own encoding")
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct DeltaCodec;

impl Codec for DeltaCodec {
    type Encode = DeltaResponse;
    type Decode = DeltaDiscoveryRequest;
    type Encoder = DeltaCodec;
    type Decoder = DeltaCodec;

    fn encoder(&mut self) -> Self::Encoder {
        DeltaCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        DeltaCodec
    }
}

impl Encoder for DeltaCodec {
    type Item = DeltaResponse;
    type Error = Status;

    fn encode(&mut self, item: DeltaResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst);
        Ok(())
    }
}

impl Decoder for DeltaCodec {
    type Item = DeltaDiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        DeltaDiscoveryRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(format!("decoding a DeltaDiscoveryRequest: {e}")))
    }
}

pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<DeltaResponse, Status>> + Send>>;

/// The config server as a gRPC service, for `tonic::transport::Server::add_service`.
#[derive(Clone)]
pub struct ConfigDiscoveryService(pub ConfigServer);

impl NamedService for ConfigDiscoveryService {
    const NAME: &'static str = api::config_discovery_service_server::SERVICE_NAME;
}

impl StreamingService<DeltaDiscoveryRequest> for ConfigDiscoveryService {
    type Response = DeltaResponse;
    type ResponseStream = ResponseStream;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<ResponseStream>, Status>> + Send + 'static>>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { server.delta_config(request).await })
    }
}

impl<B> Service<http::Request<B>> for ConfigDiscoveryService
where
    B: HttpBody + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move {
            if request.uri().path() != METHOD {
                return Ok(
                    Status::unimplemented(format!("no method {}", request.uri().path()))
                        .into_http(),
                );
            }
            Ok(Grpc::new(DeltaCodec).streaming(service, request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::Generation;
    use crate::translate::Changes;

    #[test]
    fn a_response_encodes_exactly_as_the_generated_message_would() {
        let mut changes = Changes::default();
        let workload = api::Workload {
            uid: "Kubernetes//Pod/shop/cart".into(),
            name: "cart".into(),
            node: "node-1".into(),
            addresses: vec!["10.0.0.1".into()],
            ..Default::default()
        };
        changes
            .workloads
            .insert(workload.uid.clone(), Some(Arc::new(workload.clone())));
        let generation = Generation::empty().apply(&changes, std::time::Instant::now());
        let resources: Vec<_> = generation
            .resources(api::type_url::WORKLOAD)
            .unwrap()
            .values()
            .cloned()
            .collect();
        let response = DeltaResponse {
            system_version_info: "1".into(),
            resources,
            type_url: api::type_url::WORKLOAD.into(),
            removed_resources: vec!["Kubernetes//Pod/shop/gone".into()],
            nonce: "1-1".into(),
        };
        let version = response.resources[0].version.to_string();
        let expected = api::DeltaDiscoveryResponse {
            system_version_info: "1".into(),
            resources: vec![api::Resource {
                name: workload.uid.clone(),
                version,
                kind: Some(api::resource::Kind::Workload(workload)),
            }],
            type_url: api::type_url::WORKLOAD.into(),
            removed_resources: vec!["Kubernetes//Pod/shop/gone".into()],
            nonce: "1-1".into(),
        };
        let mut bytes = Vec::new();
        response.encode(&mut bytes);
        assert_eq!(bytes, expected.encode_to_vec());
        assert_eq!(response.encoded_len(), bytes.len());
        assert_eq!(response.to_message(), expected);
    }
}
