//! Pieces every admin server (controller, node agent, waypoint) shares.

/// The Prometheus text exposition of `registry` and its content type, for every admin server.
pub fn encode_metrics(
    registry: &prometheus_client::registry::Registry,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, registry)?;
    Ok((
        "application/openmetrics-text; version=1.0.0; charset=utf-8",
        body,
    ))
}
