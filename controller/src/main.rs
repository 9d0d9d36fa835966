//! `ambit-controller`, the control plane. Config translation, incremental push and the CA service
//! arrive with the controller issue (the CA's signing half is already `ambit_proto::tls::authority`);
//! until then this binary refuses to start rather than pretend to serve config.

fn main() -> std::process::ExitCode {
    eprintln!(
        "ambit-controller: the control plane is not implemented yet. See README.md for what works \
         today."
    );
    std::process::ExitCode::from(69) // EX_UNAVAILABLE
}
