//! `ambit`, the operator command: the local lab (`lab`), Kubernetes-style verbs against it
//! (`apply`, `delete`, `label`, `exec`, `get`), looking into the mesh (`check`,
//! `ztunnel-config`, `explain`), the guided tour (`demo`), and the sample apps lab pods run
//! (`app`). Against a Kubernetes cluster: `install`, `uninstall`, `waypoint`, `check`,
//! `ztunnel-config`, `explain`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ambit_cli::apps::command::{self as app, App};
use ambit_cli::apps::connect;
use ambit_cli::cluster::{self, render, waypoint};
use ambit_cli::cmd;
use ambit_cli::cmd::explain::{Placement, Request};
use ambit_cli::cmd::ztunnel_config::Section;
use ambit_cli::lab::lifecycle;
use ambit_cli::lab::state::LabDir;
use ambit_cli::target::Target;
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
    /// Guided tour of a local two-node mesh: builds a lab, shows plaintext, mTLS, a DENY
    /// policy, a waypoint's L7 policy (403 and 200) and HTTPRoute canary split, and the agents'
    /// metrics, then removes the lab. Exits non-zero if anything seen is not what it should be.
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
    /// Checks the lab's prerequisites, or a cluster's (CRDs, controller, agents on every node),
    /// and says how to fix what is missing. The cluster is checked when KUBECONFIG,
    /// ~/.kube/config or an in-cluster config is present, the lab otherwise.
    Check {
        /// Check the cluster of the current kubeconfig context.
        #[arg(long, conflicts_with = "lab")]
        kubernetes: bool,
        /// Check the local lab's prerequisites even when a cluster is configured.
        #[arg(long)]
        lab: bool,
    },
    /// Installs Ambit into the cluster (server-side apply of deploy/base with the values).
    Install {
        /// Print the manifests instead of applying them.
        #[arg(long)]
        dry_run: bool,
        /// key=value, repeatable (deploy/README.md lists the keys; an unknown key lists them too).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Removes Ambit from the cluster: the agents first (each removes its node's rules), then
    /// the controller and the rest. CRDs are kept unless --crds.
    Uninstall {
        /// Also delete Ambit's CRDs, and with them every policy of those kinds.
        #[arg(long)]
        crds: bool,
        /// How long the agents get to stop (250ms, 30s, 2m).
        #[arg(long, default_value = "2m", value_parser = connect::parse_duration)]
        timeout: Duration,
    },
    /// Waypoints of a cluster's namespaces (Gateway API Gateways of class ambit-waypoint).
    #[command(subcommand)]
    Waypoint(WaypointCommand),
    /// Shows what the node agents hold: the lab's, or a cluster's (read through a port-forward
    /// to each agent's admin port). A running lab is the target, else a configured cluster.
    #[command(name = "ztunnel-config")]
    ZtunnelConfig {
        #[arg(value_enum)]
        section: Section,
        /// One node's agent (the lab's node1, node2, ...; a cluster's node names).
        #[arg(long)]
        node: Option<String>,
        /// `json` for the raw dump.
        #[arg(short = 'o', long = "output")]
        output: Option<String>,
        #[command(flatten)]
        target: TargetFlags,
    },
    /// Explains the path and policy decision of a connection from a pod and, through a
    /// waypoint, what it does with one HTTP request. A running lab is the target, else a
    /// configured cluster.
    Explain {
        /// The source pod (`<namespace>/<name>`, or the name alone when unique).
        source: String,
        /// A pod, service name or IP, with an optional `:port`.
        destination: String,
        /// The request's method, for a waypoint's routes and L7 policies.
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request's path, with an optional `?query`.
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header, `name=value`, repeatable (`host=...` sets the Host, else it is the
        /// destination as written).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
        #[command(flatten)]
        target: TargetFlags,
    },
    /// Sample applications, run inside lab pods.
    #[command(subcommand)]
    App(App),
}

/// Lab or cluster, for commands that read a running mesh.
#[derive(clap::Args, Clone, Copy)]
struct TargetFlags {
    /// Read the local lab even when a cluster is configured.
    #[arg(long, conflicts_with = "kubernetes")]
    lab: bool,
    /// Read the cluster of the current kubeconfig context even when a lab is running.
    #[arg(long)]
    kubernetes: bool,
}

impl TargetFlags {
    fn target(self) -> Target {
        let lab_running = LabDir::from_env().state_file().is_file();
        Target::choose_running(self.lab, self.kubernetes, lab_running)
    }
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
enum WaypointCommand {
    /// Creates or updates a namespace's waypoint.
    Apply {
        /// Default: the kubeconfig context's namespace.
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Default: waypoint, or <service-account>-waypoint.
        #[arg(long)]
        name: Option<String>,
        /// Which traffic it takes (istio.io/waypoint-for).
        #[arg(long = "for", value_enum, default_value = "service")]
        traffic: waypoint::For,
        /// Serve only this service account's workloads in the namespace (annotation
        /// istio.io/for-service-account, as Istio 1.18-1.21); no label needed.
        #[arg(long)]
        service_account: Option<String>,
        /// Also label the namespace istio.io/use-waypoint=<name>.
        #[arg(long)]
        enroll_namespace: bool,
    },
    /// Lists waypoints.
    List {
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Deletes a waypoint (and un-enrolls its namespace if enrolled in it).
    Delete {
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        #[arg(long, default_value = "waypoint")]
        name: String,
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
        Command::App(command) => app::run(command),
        Command::Check {
            kubernetes: false,
            lab,
        } if Target::choose(lab, false) == Target::Lab => run(Command::Check {
            kubernetes: false,
            lab,
        }),
        command @ (Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Waypoint(_)
        | Command::Check { .. }) => run_cluster(command),
        command @ (Command::ZtunnelConfig { target, .. } | Command::Explain { target, .. })
            if target.target() == Target::Cluster =>
        {
            run_cluster(command)
        }
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
        Command::Lab(Lab::Up { nodes, file }) => Ok(cmd::lab_up(&dir, nodes, file.as_deref())),
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
        Command::Check { .. } => {
            let (report, ok) = cmd::check::report(&cmd::check::run());
            print!("{report}");
            Ok(exit(ok))
        }
        Command::ZtunnelConfig {
            section,
            node,
            output,
            ..
        } => {
            let json = json_output(output.as_deref())?;
            let dumps = cmd::ztunnel_config::lab_dumps(&dir, section, node.as_deref())?;
            print(cmd::ztunnel_config::output(section, dumps, json))
        }
        Command::Explain {
            source,
            destination,
            method,
            path,
            headers,
            ..
        } => {
            let request = Request::new(&method, &path, &headers).map_err(anyhow::Error::msg)?;
            let (state, mesh) = cmd::load_lab(&dir)?;
            let pods = Placement::from_lab(&state);
            print(cmd::explain(&pods, &mesh, &source, &destination, &request))
        }
        Command::App(_)
        | Command::Install { .. }
        | Command::Uninstall { .. }
        | Command::Waypoint(_) => unreachable!("handled in main"),
    }
}

/// `-o`: a table (the default) or json.
fn json_output(output: Option<&str>) -> anyhow::Result<bool> {
    match output {
        None | Some("table") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => anyhow::bail!("-o {other}: use json (or leave it out for a table)"),
    }
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The commands against a cluster, on a current-thread runtime (they make one request at a
/// time).
fn run_cluster(command: Command) -> anyhow::Result<ExitCode> {
    // Values are checked before anything connects: a typo fails fast, even with no cluster.
    let install = match &command {
        Command::Install { set, dry_run } => {
            let objects = render::render(&render::Values::from_sets(set)?)?;
            if *dry_run {
                print!("{}", render::to_yaml(&objects));
                return Ok(ExitCode::SUCCESS);
            }
            objects
        }
        _ => Vec::new(),
    };
    let json = match &command {
        Command::ZtunnelConfig { output, .. } => json_output(output.as_deref())?,
        _ => false,
    };
    let request = match &command {
        Command::Explain {
            method,
            path,
            headers,
            ..
        } => Request::new(method, path, headers).map_err(anyhow::Error::msg)?,
        _ => Request::default(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = cluster::client().await.map_err(|e| match command {
            // Chosen because a cluster configuration exists, but it may not be the intent.
            Command::Check { .. } => {
                anyhow::anyhow!("{e}\n(`ambit check --lab` checks the local lab instead)")
            }
            _ => e.into(),
        })?;
        let namespace =
            |ns: Option<String>| ns.unwrap_or_else(|| client.default_namespace().into());
        let out = match command {
            Command::Install { .. } => {
                let mut out = cluster::install::install(client.clone(), &install).await?;
                out += "installed; `ambit check --kubernetes` shows when every node is ready\n";
                out
            }
            Command::Uninstall { crds, timeout } => {
                let objects = render::render(&render::Values::default())?;
                let options = cluster::install::Uninstall {
                    crds,
                    wait: timeout,
                    poll: Duration::from_secs(1),
                };
                cluster::install::uninstall(client.clone(), &objects, &options).await?
            }
            Command::Waypoint(WaypointCommand::Apply {
                namespace: ns,
                name,
                traffic,
                service_account: sa,
                enroll_namespace,
            }) => {
                let ns = namespace(ns);
                let sa = sa.as_deref();
                let name = name.unwrap_or_else(|| waypoint::default_name(sa));
                waypoint::apply(client.clone(), &ns, &name, traffic, sa, enroll_namespace).await?
            }
            Command::Waypoint(WaypointCommand::List {
                namespace: ns,
                all_namespaces,
            }) => {
                let ns = (!all_namespaces).then(|| namespace(ns));
                waypoint::list(client.clone(), ns.as_deref()).await?
            }
            Command::Waypoint(WaypointCommand::Delete {
                namespace: ns,
                name,
            }) => {
                let ns = namespace(ns);
                waypoint::delete(client.clone(), &ns, &name).await?
            }
            Command::Check { .. } => {
                let checks = cluster::check::run(client.clone()).await?;
                let (report, ok) = cmd::check::report_with(
                    &checks,
                    "Ambit is installed and running on every node.",
                );
                print!("{report}");
                return Ok(exit(ok));
            }
            Command::ZtunnelConfig { section, node, .. } => {
                let dumps = cluster::agents::dumps(&client, section, node.as_deref()).await?;
                cmd::ztunnel_config::output(section, dumps, json)?
            }
            Command::Explain {
                source,
                destination,
                ..
            } => {
                let (objects, mesh) = cluster::mesh::load(&client).await?;
                let pods = Placement::from_cluster(&objects);
                cmd::explain(&pods, &mesh, &source, &destination, &request)?
            }
            _ => unreachable!("only cluster commands come here"),
        };
        print!("{out}");
        Ok(ExitCode::SUCCESS)
    })
}
