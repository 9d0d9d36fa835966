//! `ambit-waypoint`: the shared L7 proxy.

use std::process::ExitCode;

use ambit_waypoint::config::Config;

/// jemalloc rather than glibc's malloc: a waypoint allocates and frees many small objects per
/// request (header maps, hyper's buffers, futures), where glibc's malloc and free took a seventh
/// of the CPU under load and jemalloc measured 27-58% more requests per core for ~2 MiB more RSS
/// (bench/README.md). The memory budget of a waypoint allows it; the node agent's does not, and
/// it keeps glibc with fixed thresholds (`ambit_runtime::alloc`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    ambit_runtime::process::main::<Config, _, _>("ambit-waypoint", ambit_waypoint::app::run)
}
