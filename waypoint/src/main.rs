//! `ambit-waypoint`: the shared L7 proxy.

use std::process::ExitCode;
use std::sync::Arc;

use ambit_waypoint::config::Config;
use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(errors) = config.validate() {
        for e in &errors {
            eprintln!("ambit-waypoint: {e}");
        }
        return ExitCode::from(64); // EX_USAGE
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
        )
        .init();
    let set_log_level = Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("bad level {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-waypoint: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ambit_waypoint::app::run(
        config,
        set_log_level,
        shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-waypoint: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM (Kubernetes, the lab) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
}
