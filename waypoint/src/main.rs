//! `ambit-waypoint`, the shared L7 proxy. HTTP routing, resilience and L7 authorization arrive with
//! the waypoint issue; until then this binary refuses to start rather than pretend to proxy.

fn main() -> std::process::ExitCode {
    eprintln!(
        "ambit-waypoint: the L7 proxy is not implemented yet. See README.md for what works today."
    );
    std::process::ExitCode::from(69) // EX_UNAVAILABLE
}
