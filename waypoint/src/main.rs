//! `ambit-waypoint`: the shared L7 proxy.

use std::process::ExitCode;

use ambit_waypoint::config::Config;

fn main() -> ExitCode {
    ambit_runtime::process::main::<Config, _, _>("ambit-waypoint", ambit_waypoint::app::run)
}
