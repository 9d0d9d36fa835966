//! `ambit`, the operator command. `demo` still only says that the local lab is not built yet;
//! `app` runs the sample applications that lab pods and end-to-end tests use.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ambit_cli::apps::{connect, echo};
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "ambit", version, about = "Ambit: an ambient-mode service mesh")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Guided tour of a local multi-node mesh (not available yet).
    Demo,
    /// Sample applications, run inside lab pods.
    #[command(subcommand)]
    App(App),
}

#[derive(Subcommand)]
enum App {
    /// TCP server: answers HTTP/1.x with a report of the request; greets raw TCP clients with
    /// their address and echoes their bytes. Prints `listening on ADDR`, then `accepted PEER`
    /// for each connection.
    Echo {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// Name to report as `server=` and in the greeting.
        #[arg(long, default_value = "echo")]
        name: String,
    },
    /// Connects, sends, prints what the server sends.
    #[command(
        after_help = "Exit status: 0 the server answered; 3 connection refused; \
                            4 timed out; 5 connection reset; 1 any other failure; 64 bad usage."
    )]
    Connect {
        addr: SocketAddr,
        /// Text to send, followed by a half-close; prints everything until the server closes.
        /// Without --send or --http, prints the server's first line.
        #[arg(long, conflicts_with = "http")]
        send: Option<String>,
        /// Path to GET over HTTP/1.1; prints the whole response.
        #[arg(long)]
        http: Option<String>,
        /// Limit for the whole exchange (250ms, 5s, 2m).
        #[arg(long, default_value = "5s", value_parser = connect::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are not errors; anything else is bad usage (EX_USAGE).
        Err(err) if !err.use_stderr() => err.exit(),
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(64);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Demo => demo(),
        Command::App(app) => match run_app(app) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("ambit: {err:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn demo() -> ExitCode {
    eprintln!(
        "ambit demo: the local lab (network-namespace nodes, node agents, a controller and \
         sample apps) is not built yet.\n\
         What works today is the wire layer: SPIFFE identities, mTLS and HBONE tunnels in \
         ambit-proto,\nexercised by `bash scripts/test` and measured by \
         `cargo run --release -p ambit-bench --bin hbone-bench`."
    );
    ExitCode::from(69) // EX_UNAVAILABLE
}

fn run_app(app: App) -> anyhow::Result<ExitCode> {
    // One thread is plenty for a sample app, and a lab runs many of them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match app {
            App::Echo { listen, name } => {
                echo::run(listen, &name).await?;
                Ok(ExitCode::SUCCESS)
            }
            App::Connect {
                addr,
                send,
                http,
                timeout,
            } => {
                let payload = match (send, http) {
                    (Some(text), _) => Some(connect::Payload::Raw(text.into_bytes())),
                    (None, Some(path)) => Some(connect::Payload::HttpGet(path)),
                    (None, None) => None,
                };
                let config = connect::ConnectConfig {
                    addr,
                    payload,
                    timeout,
                };
                match connect::run(&config, &mut tokio::io::stdout()).await {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(err) => {
                        eprintln!("ambit app connect: {err}");
                        Ok(ExitCode::from(err.exit_code()))
                    }
                }
            }
        }
    })
}
