//! `main` for every binary (controller, node agent, waypoint): flags (every problem reported, exit
//! 64), logging whose level can change at run time, the multi-threaded runtime, and SIGTERM/Ctrl-C
//! as shutdown.

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

/// Changes the log filter (an `EnvFilter` directive such as `info,access=debug`).
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Resolves when the process should drain and stop.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Cross-field checks of a binary's settings.
pub trait Validate {
    /// Every problem, not just the first.
    fn validate(&self) -> Result<(), Vec<String>>;
}

/// Parses and validates `C`, sets up logging and the runtime, and runs `run` until it returns.
pub fn main<C, F, Fut>(name: &str, run: F) -> ExitCode
where
    C: Parser + Validate,
    F: FnOnce(C, SetLogLevel, Shutdown) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config = match C::try_parse() {
        Ok(config) => config,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(64); // EX_USAGE, like every other bad setting
        }
    };
    if let Err(errors) = config.validate() {
        for e in &errors {
            eprintln!("{name}: {e}");
        }
        return ExitCode::from(64);
    }
    let set_log_level = init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config, set_log_level, Box::pin(shutdown_signal()))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` (default `info`), colours only on a terminal, and a handle to change the filter.
fn init_logging() -> SetLogLevel {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_ansi(ansi))
        .init();
    Arc::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| format!("bad level {level:?}: {e}"))?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
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
