//! The gRPC sample app: `ambit app grpc-echo` serves `ambit.lab.v1.Echo` (cleartext HTTP/2, as
//! pods behind a mesh serve it), `ambit app grpc` calls it from a lab pod. Every answer names the
//! server, the message and the peer the server saw, so a test through a waypoint sees that a
//! unary call, a stream and a status code each went all the way.
//!
//! A stream is driven in lock step: the client sends a message only once the answer to the
//! previous one arrived. Anything on the way that held a stream's messages back (a proxy
//! buffering a request body before forwarding it) would stop the call, not just slow it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_stream::{Stream, StreamExt};
use tonic::{Code, Request, Response, Status, Streaming};

use super::{BindError, listen, say};

/// The generated types and stubs of `proto/ambit/lab/v1/echo.proto`.
pub mod pb {
    tonic::include_proto!("ambit.lab.v1");
}

use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{SayReply, SayRequest};

#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("serving gRPC")]
    Serve(#[source] tonic::transport::Error),
    #[error("connecting to {addr}")]
    Connect {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("no complete answer from {addr} within {timeout:?}")]
    TimedOut { addr: SocketAddr, timeout: Duration },
    #[error("{addr}: the stream ended after {answers} of {sent} answers")]
    Short {
        addr: SocketAddr,
        answers: usize,
        sent: usize,
    },
    #[error("writing the answers")]
    Output(#[source] std::io::Error),
}

/// Listens on `addr` and serves until the process ends.
pub async fn serve(addr: SocketAddr, name: &str) -> Result<(), GrpcError> {
    serve_on(listen(addr).await?, name).await
}

/// Serves the Echo service on `listener`.
pub async fn serve_on(listener: TcpListener, name: &str) -> Result<(), GrpcError> {
    let service = EchoService {
        name: Arc::from(name),
    };
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(service))
        .serve_with_incoming(TcpListenerStream::new(listener))
        .await
        .map_err(GrpcError::Serve)
}

struct EchoService {
    name: Arc<str>,
}

/// The answer to `request`, the `sequence`-th of its call; prints what was answered.
fn answer(
    name: &str,
    peer: &str,
    rpc: &str,
    sequence: u64,
    request: SayRequest,
) -> Result<SayReply, Status> {
    if request.code != 0 {
        let code = Code::from(request.code as i32);
        say(&format!(
            "answered {} {rpc} {}",
            request.code, request.message
        ));
        return Err(Status::new(
            code,
            format!("asked for code {}", request.code),
        ));
    }
    say(&format!("answered 0 {rpc} {}", request.message));
    Ok(SayReply {
        server: name.to_owned(),
        message: request.message,
        peer: peer.to_owned(),
        sequence,
    })
}

fn peer_of<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_owned(), |a| a.to_string())
}

type Answers = Pin<Box<dyn Stream<Item = Result<SayReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let peer = peer_of(&request);
        answer(&self.name, &peer, "Say", 1, request.into_inner()).map(Response::new)
    }

    type ChatStream = Answers;

    async fn chat(
        &self,
        request: Request<Streaming<SayRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let peer = peer_of(&request);
        let name = Arc::clone(&self.name);
        let mut sequence = 0;
        // An error answer ends the stream: tonic sends it as the trailers' status.
        let answers = request.into_inner().map(move |message| {
            sequence += 1;
            answer(&name, &peer, "Chat", sequence, message?)
        });
        Ok(Response::new(Box::pin(answers)))
    }
}

/// What `ambit app grpc` was asked to do.
#[derive(Debug, Clone)]
pub struct CallConfig {
    pub addr: SocketAddr,
    pub messages: Vec<String>,
    /// All messages on one bidirectional stream rather than a unary call each.
    pub stream: bool,
    /// Non-zero: the last message asks the server to end its call with this status.
    pub code: u32,
    /// For everything: connecting and every call.
    pub timeout: Duration,
}

/// Makes the calls and writes one line per answer to `out`: `reply sequence=<n> server=<name>
/// message="<text>" peer=<addr>`, or `status code=<n> message="<text>"` for a call that ended
/// with a status (the one the server was asked for, or one from on the way: a proxy's refusal
/// is an answer too, as an HTTP error status is for `ambit app connect`).
pub async fn call<W: AsyncWrite + Unpin>(
    config: &CallConfig,
    out: &mut W,
) -> Result<(), GrpcError> {
    let addr = config.addr;
    let timeout = config.timeout;
    match tokio::time::timeout(timeout, calls(config, out)).await {
        Ok(result) => result,
        Err(_elapsed) => Err(GrpcError::TimedOut { addr, timeout }),
    }
}

async fn calls<W: AsyncWrite + Unpin>(config: &CallConfig, out: &mut W) -> Result<(), GrpcError> {
    let addr = config.addr;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("an ip:port makes a valid URI")
        .connect()
        .await
        .map_err(|source| GrpcError::Connect { addr, source })?;
    let mut client = EchoClient::new(channel);
    let last = config.messages.len().saturating_sub(1);
    let requests = config.messages.iter().enumerate().map(|(i, m)| SayRequest {
        message: m.clone(),
        code: if i == last { config.code } else { 0 },
    });
    if !config.stream {
        for request in requests {
            let line = match client.say(request).await {
                Ok(reply) => reply_line(&reply.into_inner()),
                Err(status) => status_line(&status),
            };
            write_line(out, &line).await?;
        }
        return Ok(());
    }
    let mut requests = requests.collect::<Vec<_>>().into_iter();
    let (send, receive) = tokio::sync::mpsc::channel(1);
    let mut answers = match client.chat(ReceiverStream::new(receive)).await {
        Ok(answers) => answers.into_inner(),
        Err(status) => return write_line(out, &status_line(&status)).await,
    };
    let sent = config.messages.len();
    for answered in 0..sent {
        let Some(request) = requests.next() else {
            break;
        };
        // The stream only ends with the client's last message, so a send fails only if the
        // call is over; the answer (or its status) says why.
        let _ = send.send(request).await;
        match answers.message().await {
            Ok(Some(reply)) => write_line(out, &reply_line(&reply)).await?,
            Ok(None) => {
                return Err(GrpcError::Short {
                    addr,
                    answers: answered,
                    sent,
                });
            }
            Err(status) => return write_line(out, &status_line(&status)).await,
        }
    }
    drop(send);
    match answers.message().await {
        Ok(None) => Ok(()),
        Ok(Some(extra)) => write_line(out, &reply_line(&extra)).await,
        Err(status) => write_line(out, &status_line(&status)).await,
    }
}

fn reply_line(reply: &SayReply) -> String {
    format!(
        "reply sequence={} server={} message={:?} peer={}",
        reply.sequence, reply.server, reply.message, reply.peer
    )
}

fn status_line(status: &Status) -> String {
    format!(
        "status code={} message={:?}",
        status.code() as i32,
        status.message()
    )
}

async fn write_line<W: AsyncWrite + Unpin>(out: &mut W, line: &str) -> Result<(), GrpcError> {
    out.write_all(format!("{line}\n").as_bytes())
        .await
        .and(out.flush().await)
        .map_err(GrpcError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { serve_on(listener, "g").await });
        addr
    }

    async fn run(config: CallConfig) -> Result<Vec<String>, GrpcError> {
        let mut out = Vec::new();
        call(&config, &mut out).await?;
        Ok(String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn config(addr: SocketAddr, messages: &[&str], stream: bool, code: u32) -> CallConfig {
        CallConfig {
            addr,
            messages: messages.iter().map(|m| m.to_string()).collect(),
            stream,
            code,
            timeout: Duration::from_secs(5),
        }
    }

    /// The answer lines without the peer, which is the client's port of the moment.
    fn without_peer(lines: Vec<String>) -> Vec<String> {
        lines
            .into_iter()
            .map(|l| l.split(" peer=127.0.0.1:").next().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn unary_calls_are_answered_one_by_one_and_a_code_ends_the_last() {
        let addr = server().await;
        let lines = run(config(addr, &["hello", "again", "fail"], false, 7))
            .await
            .unwrap();
        assert_eq!(
            without_peer(lines),
            [
                "reply sequence=1 server=g message=\"hello\"",
                "reply sequence=1 server=g message=\"again\"",
                "status code=7 message=\"asked for code 7\"",
            ]
        );
    }

    #[tokio::test]
    async fn a_stream_is_answered_message_by_message() {
        let addr = server().await;
        let lines = run(config(addr, &["one", "two", "three"], true, 0))
            .await
            .unwrap();
        assert_eq!(
            without_peer(lines),
            [
                "reply sequence=1 server=g message=\"one\"",
                "reply sequence=2 server=g message=\"two\"",
                "reply sequence=3 server=g message=\"three\"",
            ]
        );
        let lines = run(config(addr, &["one", "stop"], true, 9)).await.unwrap();
        assert_eq!(
            without_peer(lines),
            [
                "reply sequence=1 server=g message=\"one\"",
                "status code=9 message=\"asked for code 9\"",
            ]
        );
    }

    #[tokio::test]
    async fn nobody_listening_is_a_connect_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let err = run(config(addr, &["x"], false, 0)).await.unwrap_err();
        assert!(matches!(err, GrpcError::Connect { .. }), "{err}");
    }
}
