//! `ambit-ztunnel`, the per-node agent. Its data path (TPROXY capture, HBONE tunnelling, L4
//! authorization) is built on `ambit-proto` by the ztunnel issue; until then this binary refuses
//! to start rather than pretend to run a node.

fn main() -> std::process::ExitCode {
    eprintln!(
        "ambit-ztunnel: the node agent is not implemented yet; the HBONE and mTLS layer it builds \
         on is in ambit-proto. See README.md for what works today."
    );
    std::process::ExitCode::from(69) // EX_UNAVAILABLE
}
