//! Bodies as they pass through: the one boxed body type both directions use, a request body that
//! keeps a copy while it is sent (so an attempt can be retried or mirrored), and a response body
//! that finishes the request's record when its last frame (or its drop) passes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|e| match e {}).boxed_unsync()
}

/// What a [`Tee`] kept of the body it forwarded.
#[derive(Default)]
struct Copy {
    data: BytesMut,
    trailers: Option<HeaderMap>,
    complete: bool,
    /// The body was longer than the limit: no copy.
    overflow: bool,
}

/// A request body that can be sent more than once when it was short enough: the first send
/// streams it (nothing waits for the whole body, so a streaming gRPC call is not held up) and
/// keeps a copy; later sends replay the copy, if the body had fully passed and fit the limit.
pub struct Replayable {
    first: Option<Body>,
    copy: Arc<Mutex<Copy>>,
    /// Bytes the client sent (for `istio_request_bytes`).
    pub received: Arc<AtomicU64>,
}

impl Replayable {
    pub fn new<B>(body: B, limit: usize) -> Self
    where
        B: HttpBody<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // An empty body (a GET) may never be polled at all: it is complete from the start.
        let copy = Arc::new(Mutex::new(Copy {
            complete: body.is_end_stream(),
            ..Copy::default()
        }));
        let received = Arc::new(AtomicU64::new(0));
        let tee = Tee {
            inner: body.map_err(Into::into).boxed_unsync(),
            copy: copy.clone(),
            limit,
            received: received.clone(),
        };
        Replayable {
            first: Some(tee.boxed_unsync()),
            copy,
            received,
        }
    }

    /// The body for the next attempt; `None` when it cannot be sent again.
    pub fn take(&mut self) -> Option<Body> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        self.replay()
    }

    /// A copy for a mirror or a retry, if the body has fully passed and fit.
    pub fn replay(&self) -> Option<Body> {
        let copy = self.copy.lock().expect("copy");
        if !copy.complete || copy.overflow {
            return None;
        }
        let data = copy.data.clone().freeze();
        let trailers = copy.trailers.clone();
        let frames = [Some(Frame::data(data)), trailers.map(Frame::trailers)];
        let stream = futures::stream::iter(frames.into_iter().flatten().map(Ok::<_, BoxError>));
        Some(http_body_util::StreamBody::new(stream).boxed_unsync())
    }

    /// Puts back a body that was never sent (the connection refused the request unsent).
    pub fn restore(&mut self, body: Body) {
        if self.first.is_none() {
            self.first = Some(body);
        }
    }

    /// Whether the body could be sent again now.
    pub fn replayable(&self) -> bool {
        self.first.is_some() || {
            let copy = self.copy.lock().expect("copy");
            copy.complete && !copy.overflow
        }
    }
}

struct Tee {
    inner: Body,
    copy: Arc<Mutex<Copy>>,
    limit: usize,
    received: Arc<AtomicU64>,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        let mut copy = self.copy.lock().expect("copy");
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.received
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                    if !copy.overflow && copy.data.len() + data.len() <= self.limit {
                        copy.data.extend_from_slice(data);
                    } else {
                        copy.overflow = true;
                        copy.data = BytesMut::new();
                    }
                } else if let Some(trailers) = f.trailers_ref() {
                    copy.trailers = Some(trailers.clone());
                }
            }
            None => copy.complete = true,
            Some(Err(_)) => copy.overflow = true,
        }
        if self.inner.is_end_stream() {
            copy.complete = true;
        }
        drop(copy);
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Called once with the response's size and gRPC status when the response body ends or is
/// dropped (the client went away).
pub type OnEnd = Box<dyn FnOnce(u64, Option<String>) + Send>;

/// A response body that reports its end.
pub struct Recorded {
    inner: Body,
    sent: u64,
    grpc_status: Option<String>,
    on_end: Option<OnEnd>,
}

impl Recorded {
    pub fn wrap(inner: Body, grpc_status: Option<String>, on_end: OnEnd) -> Body {
        let mut recorded = Recorded {
            inner,
            sent: 0,
            grpc_status,
            on_end: Some(on_end),
        };
        if recorded.inner.is_end_stream() {
            recorded.end();
        }
        recorded.boxed_unsync()
    }

    fn end(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end(self.sent, self.grpc_status.take());
        }
    }
}

impl HttpBody for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    self.sent += data.len() as u64;
                } else if let Some(status) = f
                    .trailers_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                {
                    self.grpc_status = Some(status.to_string());
                }
            }
            None | Some(Err(_)) => self.end(),
        }
        if self.inner.is_end_stream() {
            self.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.end();
    }
}
