//! `ambit-controller`: Ambit's control plane and mesh CA.

use std::process::ExitCode;

use ambit_controller::config::Config;

fn main() -> ExitCode {
    ambit_runtime::process::main::<Config, _, _>("ambit-controller", ambit_controller::app::run)
}
