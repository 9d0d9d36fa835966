//! nginx as the waypoint benchmark's peer L7 proxy, in lab pods: the configuration every instance
//! shares (no access log, keep-alive without a request limit, temp paths in the scratch
//! directory), a TLS certificate for the instances that speak TLS, and starting one.
//!
//! Two peers are measured. `plain` is nginx as it is usually run inside a cluster: plain
//! HTTP/1.1 on both sides. `tls` does the waypoint's work with nginx's means: a front instance
//! (in the client's place of the client's agent) originates TLS to the measured instance, which
//! terminates it, routes 90/10, and originates TLS again to a back instance (in the place of the
//! server's agent) that hands plain HTTP to the servers. Only the measured instance's CPU counts,
//! as only the waypoint's does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use ambit_cli::lab::netns::command_in;
use anyhow::{Context, Result};

/// TLS 1.3 with AES-128-GCM, what the mesh's HBONE negotiates between these peers. Client
/// certificates are not asked for: with keep-alive, a handshake's cost is spread over thousands
/// of requests on both paths, and what is compared is the cost per request.
const TLS_SERVER: &str =
    "ssl_protocols TLSv1.3; ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;";
const TLS_UPSTREAM: &str = "proxy_ssl_protocols TLSv1.3; proxy_ssl_session_reuse on; \
                            proxy_ssl_conf_command Ciphersuites TLS_AES_128_GCM_SHA256;";
/// HTTP/1.1 to the upstream with its connections kept (nginx closes them by default).
const KEEP_UPSTREAM: &str = "proxy_http_version 1.1; proxy_set_header Connection \"\";";

/// An upstream block: `servers` as (address, weight), connections kept without a request limit.
pub fn upstream(name: &str, servers: &[(SocketAddr, u32)]) -> String {
    let list: String = servers
        .iter()
        .map(|(addr, weight)| format!("server {addr} weight={weight}; "))
        .collect();
    format!("upstream {name} {{ {list}keepalive 64; keepalive_requests 1000000; }}\n")
}

/// A server block listening on `port` (with TLS when `tls` holds the certificate and key) and
/// proxying everything to `upstream` (over TLS when `upstream_tls`).
pub fn server(port: u16, tls: Option<&Tls>, upstream: &str, upstream_tls: bool) -> String {
    let listen = match tls {
        Some(t) => format!(
            "listen {port} ssl; ssl_certificate {}; ssl_certificate_key {}; {TLS_SERVER}",
            t.cert.display(),
            t.key.display()
        ),
        None => format!("listen {port};"),
    };
    let (scheme, upstream_settings) = match upstream_tls {
        true => ("https", TLS_UPSTREAM),
        false => ("http", ""),
    };
    format!(
        "server {{ {listen} location / {{ proxy_pass {scheme}://{upstream}; {KEEP_UPSTREAM} \
         {upstream_settings} }} }}\n"
    )
}

/// A certificate and key on disk, self-signed (nginx does not verify upstreams unless told to).
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn generate(dir: &Path) -> Result<Tls> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert =
            rcgen::CertificateParams::new(vec!["nginx.bench".to_string()])?.self_signed(&key)?;
        let tls = Tls {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&tls.cert, cert.pem())?;
        std::fs::write(&tls.key, key.serialize_pem())?;
        Ok(tls)
    }
}

/// Starts nginx in `netns` with `blocks` (upstreams and servers) inside the shared `http` block;
/// its files live in `dir`. One worker per core, as `worker_processes auto` gives.
pub fn start(netns: &str, dir: &Path, blocks: &str) -> Result<Child> {
    std::fs::create_dir_all(dir)?;
    let d = dir.display();
    let conf = format!(
        "worker_processes auto;\nuser root;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
           keepalive_requests 1000000;\n{blocks}}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    command_in(netns, "nginx")
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx (apt-get install nginx-light)")
}
