//! `ambit app ...`: the sample apps' command line (flags, defaults, exit statuses), kept with
//! the apps rather than in `main` so the binary's file stays about the whole command.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{connect, echo, grpc, otlp};

/// The sample applications, run inside lab pods.
#[derive(Subcommand)]
pub enum App {
    /// TCP server: answers HTTP/1.x with a report of the request; greets raw TCP clients with
    /// their address and echoes their bytes. Prints `listening on ADDR`, then `accepted PEER`
    /// for each connection and `answered STATUS METHOD TARGET` for each HTTP answer.
    Echo {
        /// Address to listen on (port 0 picks a free one).
        #[arg(long)]
        listen: SocketAddr,
        /// Name to report as `server=` and in the greeting.
        #[arg(long, default_value = "echo")]
        name: String,
        /// Answer every N-th HTTP request (counted across connections) with --fail-status,
        /// whatever it asked for: a backend failing 1 in N. 0 fails none.
        #[arg(long, default_value_t = 0, value_name = "N")]
        fail_every: u64,
        /// The status of the requests --fail-every fails.
        #[arg(long, default_value_t = 503, value_parser = clap::value_parser!(u16).range(200..=599))]
        fail_status: u16,
        /// Wait this long before every HTTP answer (250ms, 5s, 2m): a slow backend.
        #[arg(long, default_value = "0s", value_parser = connect::parse_duration)]
        delay: Duration,
    },
    /// Connects, sends, prints what the server sends.
    #[command(
        after_help = "Exit status: 0 the server answered; 3 connection refused; \
                            4 timed out; 5 connection reset; 1 any other failure; 64 bad usage."
    )]
    Connect {
        /// `ip:port` or `name:port` (names resolve through the pod's /etc/hosts).
        #[arg(value_parser = connect::parse_target)]
        addr: String,
        /// Text to send, followed by a half-close; prints everything until the server closes.
        /// Without --send or --http, prints the server's first line.
        #[arg(long, conflicts_with = "http")]
        send: Option<String>,
        /// Path to request over HTTP/1.1; prints the whole response.
        #[arg(long)]
        http: Option<String>,
        /// The method of the --http request.
        #[arg(long, default_value = "GET", requires = "http")]
        method: String,
        /// Send the --http request N times, each on a new connection, and print a tally
        /// instead of the responses: `count=<n> status=<code> server=<name>` per outcome.
        #[arg(long, value_name = "N", requires = "http",
              value_parser = clap::value_parser!(u64).range(1..))]
        repeat: Option<u64>,
        /// With --repeat: this many requests in flight at once.
        #[arg(long, value_name = "N", default_value_t = 1, requires = "repeat",
              value_parser = clap::value_parser!(u64).range(1..=256))]
        concurrency: u64,
        /// A header for --http, `name=value`, repeatable.
        #[arg(long = "header", value_name = "NAME=VALUE", requires = "http",
              value_parser = connect::parse_header)]
        headers: Vec<(String, String)>,
        /// Limit for the whole exchange (250ms, 5s, 2m).
        #[arg(long, default_value = "5s", value_parser = connect::parse_duration)]
        timeout: Duration,
    },
    /// gRPC server (`ambit.lab.v1.Echo`, cleartext HTTP/2): answers unary calls and each
    /// message of a stream with the server's name, the message and the peer it saw. Prints
    /// `listening on ADDR`, then `answered CODE RPC MESSAGE` for each answer.
    GrpcEcho {
        #[arg(long)]
        listen: SocketAddr,
        /// Name to report in every answer.
        #[arg(long, default_value = "grpc-echo")]
        name: String,
    },
    /// Calls a gRPC echo server: a unary call per message, or one stream with --stream (each
    /// message sent once the previous one is answered). Prints a line per answer.
    #[command(
        after_help = "Exit status: 0 every call ended (an answer or a status, printed);                             1 the calls could not be made or were cut short; 64 bad usage."
    )]
    Grpc {
        /// `ip:port` or `name:port`.
        #[arg(value_parser = connect::parse_target)]
        addr: String,
        /// The messages to send.
        #[arg(required = true)]
        messages: Vec<String>,
        /// Send every message on one bidirectional stream.
        #[arg(long)]
        stream: bool,
        /// Ask the server to end the last call (or the stream, at the last message) with this
        /// gRPC status code.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
        code: u32,
        /// Limit for everything: connecting and every call.
        #[arg(long, default_value = "5s", value_parser = connect::parse_duration)]
        timeout: Duration,
    },
    /// OTLP/HTTP collector: takes trace exports (`POST /v1/traces`, protobuf) and prints every
    /// span as one line, `span trace=.. id=.. parent=.. kind=.. name=.. ...`.
    OtlpCollector {
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// Runs a sample app to its end; its exit status (see each subcommand's help).
pub fn run(app: App) -> anyhow::Result<ExitCode> {
    // One thread is plenty for a sample app, and a lab runs many of them.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match app {
            App::Echo {
                listen,
                name,
                fail_every,
                fail_status,
                delay,
            } => {
                let behaviour = echo::Behaviour {
                    fail_every,
                    fail_status,
                    delay,
                };
                echo::run(listen, echo::Server::new(&name, behaviour)).await?;
                Ok(ExitCode::SUCCESS)
            }
            App::Connect {
                addr,
                send,
                http,
                method,
                repeat,
                concurrency,
                headers,
                timeout,
            } => {
                let addr = connect::resolve(&addr).await?;
                let payload = match (send, http) {
                    (Some(text), _) => Some(connect::Payload::Raw(text.into_bytes())),
                    (None, Some(path)) => Some(connect::Payload::Http {
                        method,
                        path,
                        headers,
                    }),
                    (None, None) => None,
                };
                let config = connect::ConnectConfig {
                    addr,
                    payload,
                    timeout,
                };
                let mut stdout = tokio::io::stdout();
                let result = match repeat {
                    Some(count) => {
                        connect::run_repeated(&config, count, concurrency, &mut stdout).await
                    }
                    None => connect::run(&config, &mut stdout).await,
                };
                match result {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(err) => {
                        eprintln!("ambit app connect: {}", crate::error_chain(&err));
                        Ok(ExitCode::from(err.exit_code()))
                    }
                }
            }
            App::GrpcEcho { listen, name } => {
                grpc::serve(listen, &name).await?;
                Ok(ExitCode::SUCCESS)
            }
            App::Grpc {
                addr,
                messages,
                stream,
                code,
                timeout,
            } => {
                let config = grpc::CallConfig {
                    addr: connect::resolve(&addr).await?,
                    messages,
                    stream,
                    code,
                    timeout,
                };
                grpc::call(&config, &mut tokio::io::stdout()).await?;
                Ok(ExitCode::SUCCESS)
            }
            App::OtlpCollector { listen } => {
                otlp::run(listen).await?;
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}
