//! `ambit`, the operator command: the local lab (`lab`), Kubernetes-style verbs against it
//! (`apply`, `delete`, `label`, `exec`, `get`), looking into the mesh (`check`,
//! `ztunnel-config`, `explain`), the guided tour (`demo`), and the sample apps lab pods run
//! (`app`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ambit_cli::apps::{connect, echo};
use ambit_cli::cmd;
use ambit_cli::cmd::ztunnel_config::Section;
use ambit_cli::lab::lifecycle;
use ambit_cli::lab::state::LabDir;
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
    /// Guided tour of a local multi-node mesh: builds a lab, shows plaintext, mTLS, a DENY
    /// policy and the agents' metrics, then removes the lab. Exits non-zero if anything seen
    /// is not what it should be.
    Demo {
        /// Leave the lab running at the end (remove it later with `ambit lab down`).
        #[arg(long)]
        keep: bool,
    },
    /// The local lab: nodes and pods as network namespaces, the controller, an agent per node.
    #[command(subcommand)]
    Lab(Lab),
    /// Creates or updates objects from a file or a directory of YAML.
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Deletes the objects a file or directory names.
    Delete {
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// Sets (key=value) or removes (key-) labels: `ambit label namespace demo
    /// istio.io/dataplane-mode=ambient`.
    Label {
        /// namespace, pod or service.
        kind: String,
        /// The object's name (`<namespace>/<name>` for pods and services).
        name: String,
        #[arg(required = true)]
        labels: Vec<String>,
    },
    /// Runs a command inside a pod's network namespace: `ambit exec client -- curl ...`.
    Exec {
        /// The pod (`<namespace>/<name>`, or the name alone when unique).
        pod: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Lists pods, services or policies.
    Get {
        /// pods, services or policies.
        what: String,
    },
    /// Checks the machine's prerequisites and says how to fix what is missing.
    Check,
    /// Shows what the node agents hold.
    #[command(name = "ztunnel-config")]
    ZtunnelConfig {
        #[arg(value_enum)]
        section: Section,
        /// One node's agent (node1, node2, ...).
        #[arg(long)]
        node: Option<String>,
        /// `json` for the raw dump.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
    },
    /// Explains the path and policy decision of a connection from a pod.
    Explain {
        /// The source pod.
        source: String,
        /// A pod, service name or IP, with an optional `:port`.
        destination: String,
    },
    /// Sample applications, run inside lab pods.
    #[command(subcommand)]
    App(App),
}

#[derive(Subcommand)]
enum Lab {
    /// Builds the lab and starts the mesh; with -f, places and runs the manifests' pods.
    Up {
        #[arg(long, default_value_t = 2)]
        nodes: u8,
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
    },
    /// Removes everything the lab made, from any state.
    Down,
    /// Nodes, agents, pods and waypoints.
    Status,
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
        /// `ip:port` or `name:port` (names resolve through the pod's /etc/hosts).
        #[arg(value_parser = connect::parse_target)]
        addr: String,
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
    let result = match cli.command {
        Command::App(app) => run_app(app),
        command => run(command),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("ambit: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a command's output on stdout.
fn print(text: anyhow::Result<String>) -> anyhow::Result<ExitCode> {
    print!("{}", text?);
    Ok(ExitCode::SUCCESS)
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    let dir = LabDir::from_env();
    match command {
        Command::Demo { keep } => Ok(ambit_cli::demo::run(&dir, keep)),
        Command::Lab(Lab::Up { nodes, file }) => {
            eprintln!(
                "Starting the lab ({} in {})",
                dir.prefix,
                dir.root.display()
            );
            if let Err(err) = lifecycle::up(&dir, nodes, file.as_deref()) {
                eprintln!("ambit: {err}");
                eprintln!("(what was built stays for inspection; `ambit lab down` removes it)");
                return Ok(ExitCode::FAILURE);
            }
            print(cmd::status(&dir))
        }
        Command::Lab(Lab::Down) => {
            let removed = lifecycle::down(&dir)?;
            println!(
                "lab removed: {} namespace(s), {} process(es) stopped",
                removed.namespaces, removed.processes
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Lab(Lab::Status) => print(cmd::status(&dir)),
        Command::Apply { file } => print(cmd::objects::apply(&dir, &file)),
        Command::Delete { file } => print(cmd::objects::delete(&dir, &file)),
        Command::Label { kind, name, labels } => {
            print(cmd::objects::label(&dir, &kind, &name, &labels))
        }
        Command::Exec { pod, command } => cmd::exec::exec(&dir, &pod, &command),
        Command::Get { what } => print(cmd::get(&dir, &what)),
        Command::Check => {
            let (report, ok) = cmd::check::report(&cmd::check::run());
            print!("{report}");
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::ZtunnelConfig {
            section,
            node,
            output,
        } => {
            let json = match output.as_deref() {
                None | Some("table") => false,
                Some("json") => true,
                Some(other) => anyhow::bail!("-o {other}: use json (or leave it out for a table)"),
            };
            print(cmd::ztunnel_config::run(
                &dir,
                section,
                node.as_deref(),
                json,
            ))
        }
        Command::Explain {
            source,
            destination,
        } => {
            let (state, mesh) = cmd::load_lab(&dir)?;
            let explanation = cmd::explain::explain(&state, &mesh.state, &source, &destination)
                .map_err(anyhow::Error::msg)?;
            println!("{}", explanation.lines.join("\n"));
            Ok(ExitCode::SUCCESS)
        }
        Command::App(_) => unreachable!("handled in main"),
    }
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
                let addr = connect::resolve(&addr).await?;
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
