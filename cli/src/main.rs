//! `ambit`, the operator command. Today it only has `demo`, which says plainly that the local lab
//! is not built yet; the lab, the Kubernetes-style verbs and `explain` arrive with the CLI issue.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Demo => {
            eprintln!(
                "ambit demo: the local lab (network-namespace nodes, node agents, a controller and \
                 sample apps) is not built yet.\n\
                 What works today is the wire layer: SPIFFE identities, mTLS and HBONE tunnels in \
                 ambit-proto,\nexercised by `bash scripts/test` and measured by \
                 `cargo run --release -p ambit-bench --bin hbone-bench`."
            );
            ExitCode::from(69) // EX_UNAVAILABLE
        }
    }
}
