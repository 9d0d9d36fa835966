//! `ambit-controller`: Ambit's control plane and mesh CA.

use std::process::ExitCode;

use ambit_controller::config::Config;
use clap::Parser;

fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(errors) = config.validate() {
        for e in &errors {
            eprintln!("ambit-controller: {e}");
        }
        return ExitCode::from(64); // EX_USAGE
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ambit-controller: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ambit_controller::app::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ambit-controller: {e:#}");
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
