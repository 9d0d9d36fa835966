//! Tunnels from node agents: accept, learn who the client is, detect the protocol, hand the
//! tunnel to the HTTP server or the opaque-TCP relay.

use std::sync::Arc;

use ambit_proto::drain;
use ambit_proto::hbone::{self, InboundRequest, IncomingTunnel};
use tracing::{Instrument, debug, field, info_span};

use super::{Context, Downstream, Protocol, detect, http, tcp};
use crate::metrics::ProtocolLabel;

pub struct Inbound {
    pub ctx: Arc<Context>,
    /// Cloned into every HTTP connection so draining can close them gracefully; the server
    /// drops this handler once it stopped and its connections ended, releasing the drain.
    pub drain: drain::Watch,
}

impl hbone::Handler for Inbound {
    async fn handle(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        let span = info_span!(
            "conn",
            src = %req.forwarded_for.unwrap_or(req.peer_addr),
            dst = %req.authority,
            peer = %req.peer_addr,
            peer_identity = %req.peer_identity,
            protocol = field::Empty,
        );
        self.tunnel(req, tunnel).instrument(span).await
    }
}

impl Inbound {
    async fn tunnel(&self, req: InboundRequest, tunnel: IncomingTunnel) {
        let ctx = &self.ctx;
        let state = ctx.config.current();
        // The agent sends its client's address in `forwarded` (and dials from it). Only agents
        // hold workload certificates, so the header is as trustworthy as the identity.
        let source_addr = req.forwarded_for.unwrap_or(req.peer_addr);
        let down = Downstream {
            source_addr,
            source: state.workload_by_ip(source_addr.ip()).cloned(),
            source_identity: req.peer_identity,
            authority: req.authority,
        };
        // Accepted before anything is known about the destination: an HTTP client is better
        // served by a 404 that says why than by a refused tunnel it cannot see.
        let stream = match tunnel.accept() {
            Ok(s) => s,
            Err(e) => {
                debug!("tunnel gone before it was accepted: {e}");
                return;
            }
        };
        let (protocol, stream) = match detect::detect(stream, ctx.settings.detect_timeout).await {
            Ok(detected) => detected,
            Err(e) => {
                debug!("reading the first bytes: {e}");
                return;
            }
        };
        tracing::Span::current().record("protocol", protocol.as_str());
        ctx.metrics
            .tunnels
            .get_or_create(&ProtocolLabel {
                protocol: protocol.as_str().into(),
            })
            .inc();
        match protocol {
            Protocol::Tcp => tcp::proxy(ctx, down, stream, self.drain.clone()).await,
            p => http::serve(ctx.clone(), down, p, stream, self.drain.clone()).await,
        }
    }
}
