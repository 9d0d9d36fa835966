//! Request mirroring (HTTPRoute `RequestMirror`): a copy of the request goes to another backend
//! and is forgotten, its host marked `-shadow` as Istio marks it.

use std::sync::Arc;

use ambit_proto::api;
use http::Version;
use http::header::{self, HeaderValue};
use http_body_util::BodyExt;
use tracing::{Instrument, debug};

use super::body::Body;
use super::forward::Head;
use super::{ConnState, Context, request, upstream};
use crate::state::Target;

/// Sends a copy to the mirror's backend and forgets it: its answer and its failures never touch
/// the client's request. Istio's convention marks the copy's host with `-shadow`.
pub(super) fn send(
    ctx: &Arc<Context>,
    conn: &Arc<ConnState>,
    state: &ambit_proto::mesh::MeshState,
    target: &Target,
    m: &api::Mirror,
    head: &Head,
    body: Option<Body>,
) {
    let (Some(body), Some(backend)) = (body, m.backend.as_ref()) else {
        debug!("not mirrored: the body was too long to keep");
        return;
    };
    let Ok(backend) = request::resolve(ctx, state, target, backend) else {
        return;
    };
    let Some((endpoint, _)) = ctx.backends.pick(
        &backend.state,
        &backend.endpoints,
        api::LoadBalancer::RoundRobin,
        &[],
    ) else {
        return;
    };
    let mut head = head.clone();
    shadow_host(&mut head);
    let (ctx, conn) = (ctx.clone(), conn.clone());
    tokio::spawn(
        async move {
            let cache = upstream::ConnCache::default();
            let req = head.request(body);
            match upstream::send(
                &ctx,
                &conn.down,
                &cache,
                &endpoint,
                conn.protocol,
                req,
                || Ok(None),
            )
            .await
            {
                Ok(response) => {
                    // Read the answer to the end so the connection closes cleanly.
                    let _ = response.into_body().collect().await;
                }
                Err((e, _)) => debug!(upstream = %endpoint.addr, "mirror failed: {e}"),
            }
        }
        .in_current_span(),
    );
}

fn shadow_host(head: &mut Head) {
    match head.version {
        Version::HTTP_2 => {
            if let Some(authority) = head.uri.authority() {
                let shadow = shadowed(authority.as_str());
                let pq = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                if let Ok(uri) = format!("http://{shadow}{pq}").parse() {
                    head.uri = uri;
                }
            }
        }
        _ => {
            if let Some(h) = head.headers.get(header::HOST).and_then(|v| v.to_str().ok())
                && let Ok(v) = HeaderValue::from_str(&shadowed(h))
            {
                head.headers.insert(header::HOST, v);
            }
        }
    }
}

fn shadowed(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => format!("{h}-shadow:{p}"),
        _ => format!("{host}-shadow"),
    }
}
