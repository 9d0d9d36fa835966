//! `ambit-ztunnel`: the per-node agent.

use std::process::ExitCode;

use ambit_ztunnel::config::Config;

fn main() -> ExitCode {
    ambit_runtime::alloc::tune_for_proxy();
    ambit_runtime::process::main::<Config, _, _>("ambit-ztunnel", ambit_ztunnel::app::run)
}
