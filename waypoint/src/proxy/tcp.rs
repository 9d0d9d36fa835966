//! Opaque TCP through the waypoint: the L4 part of the waypoint's policies decides (a rule
//! naming HTTP attributes cannot match bytes the waypoint cannot parse: `authz` treats such an
//! ALLOW rule as matching nothing), then the bytes are relayed to one endpoint, balanced like
//! HTTP requests.

use std::time::Instant;

use ambit_proto::api::LoadBalancer;
use ambit_proto::authz::{self, Attributes};
use ambit_proto::drain;
use ambit_proto::relay::{self, RelayEnd, Transferred, relay_with};
use tracing::info;

use super::{Context, Downstream, upstream};
use crate::metrics::TcpLabels;
use crate::state::{self, Endpoint, Target};

pub async fn proxy<S>(ctx: &Context, down: Downstream, client: S, drain: drain::Watch)
where
    S: relay::Endpoint + Send,
{
    let start = Instant::now();
    let state = ctx.config.current();
    let mut labels = TcpLabels {
        reporter: "waypoint".into(),
        source_workload: down
            .source
            .as_ref()
            .map(|w| w.spec.name.clone())
            .unwrap_or_else(|| "unknown".into()),
        source_workload_namespace: down
            .source
            .as_ref()
            .map(|w| w.spec.namespace.clone())
            .unwrap_or_else(|| "unknown".into()),
        source_principal: down.source_identity.to_string(),
        connection_security_policy: "mutual_tls".into(),
        ..TcpLabels::default()
    };
    let outcome = async {
        let target = Target::resolve(&state, down.authority).ok_or_else(|| {
            (
                "NR",
                format!("{} is not a known destination", down.authority),
            )
        })?;
        labels.destination_service = target
            .service()
            .map(|s| s.spec.hostname.clone())
            .unwrap_or_else(|| "unknown".into());
        let policies = ctx.config.policies(&state, &target);
        let decision = authz::evaluate(
            policies.iter().map(|p| p.as_ref()),
            &Attributes {
                source_identity: Some(&down.source_identity),
                source_ip: down.source_addr.ip(),
                destination_ip: down.authority.ip(),
                destination_port: down.authority.port(),
                http: None,
            },
        );
        if !decision.allowed() {
            return Err(("DENY", decision.explain()));
        }
        let endpoints: Vec<Endpoint> = match &target {
            Target::Service(svc, port) => {
                state::endpoints(&state, &svc.spec.namespace, &svc.spec.hostname, *port)
                    .map(|(_, e)| e)
                    .unwrap_or_default()
            }
            Target::Workload(w, port) => w
                .addresses
                .first()
                .map(|ip| Endpoint {
                    workload: w.clone(),
                    addr: std::net::SocketAddr::new(*ip, *port),
                })
                .into_iter()
                .collect(),
        };
        let service_state = ctx.backends.service(&labels.destination_service);
        let (endpoint, _) = ctx
            .backends
            .pick(&service_state, &endpoints, LoadBalancer::RoundRobin, &[])
            .ok_or_else(|| ("UH", "no healthy endpoint".to_string()))?;
        labels.destination_workload = endpoint.workload.spec.name.clone();
        labels.destination_workload_namespace = endpoint.workload.spec.namespace.clone();
        labels.destination_principal = endpoint.workload.identity.to_string();
        let upstream = upstream::connect(ctx, &down, &endpoint)
            .await
            .map_err(|e| ("UF", e.to_string()))?;
        ctx.metrics.tcp_opened.get_or_create(&labels).inc();
        let stop = async move {
            drain.signaled().await;
            "the waypoint is shutting down".to_string()
        };
        Ok(relay_with(client, upstream, ctx.settings.tcp_timeouts, stop).await)
    }
    .await;
    let (transferred, result, reason) = match outcome {
        Ok((t, RelayEnd::Complete)) => (t, "ok", String::new()),
        Ok((t, RelayEnd::Error(e))) => (t, "error", e.to_string()),
        Ok((t, end)) => (t, "ok", format!("{end:?}")),
        Err((flag, reason)) => {
            labels.response_flags = flag.into();
            ctx.metrics.refused(flag);
            ctx.metrics.tcp_opened.get_or_create(&labels).inc();
            (Transferred::default(), "refused", reason)
        }
    };
    let m = &ctx.metrics;
    m.tcp_closed.get_or_create(&labels).inc();
    m.tcp_sent_bytes
        .get_or_create(&labels)
        .inc_by(transferred.a_to_b);
    m.tcp_received_bytes
        .get_or_create(&labels)
        .inc_by(transferred.b_to_a);
    info!(
        target: "access",
        src_addr = %down.source_addr,
        src_identity = %down.source_identity,
        dst_addr = %down.authority,
        dst_service = %labels.destination_service,
        dst_workload = %labels.destination_workload,
        protocol = "tcp",
        bytes_sent = transferred.a_to_b,
        bytes_received = transferred.b_to_a,
        duration_ms = start.elapsed().as_millis() as u64,
        result,
        flags = %labels.response_flags,
        reason = %reason,
        "connection complete"
    );
}
