//! HBONE data-path benchmark, on loopback, in one run:
//!
//! 1. AEAD seal speed of the two rustls crypto providers (why Ambit uses aws-lc-rs);
//! 2. single-stream throughput, plain TCP vs through an HBONE client + server;
//! 3. request/response round trips (p50/p99), plain TCP vs a tunnel;
//! 4. new tunnels per second with a fresh TLS handshake each, and new streams per second on one
//!    pooled connection.
//!
//! Run: `cargo run --release -p ambit-bench --bin hbone-bench`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_bench::{Table, micros, percentiles};
use ambit_proto::drain;
use ambit_proto::hbone::{Client, ClientSettings, ConnectRequest, Server, ServerSettings};
use ambit_proto::testing::{self, DialAuthority};
use ambit_proto::tls::WorkloadCertificate;
use anyhow::{Context, Result, ensure};
use clap::Parser;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Parser)]
struct Args {
    /// Bytes per throughput run.
    #[arg(long, default_value_t = 4 << 30)]
    bytes: u64,
    /// Round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// Seconds per connection-rate run.
    #[arg(long, default_value_t = 3)]
    rate_seconds: u64,
    /// Run only these sections (default: all).
    #[arg(long, value_delimiter = ',', value_parser = ["aead", "throughput", "latency", "rate"])]
    only: Vec<String>,
}

impl Args {
    fn runs(&self, section: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|s| s == section)
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs("aead") {
        println!("## AEAD seal speed, 16 KiB records, one core\n");
        aead::report();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Spawned, so the sender runs on a worker too: block_on would add a third busy thread.
    rt.block_on(async { tokio::spawn(run(args)).await? })
}

struct Setup {
    hbone: SocketAddr,
    source: Arc<WorkloadCertificate>,
    server: Arc<WorkloadCertificate>,
    _drain: drain::Trigger,
}

impl Setup {
    async fn new() -> Result<Self> {
        let ca = testing::ca();
        let server = testing::cert(&ca, "bench", "server");
        let source = testing::cert(&ca, "bench", "client");
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let config = Arc::new(server.server_config()?);
        let srv = Server::new(
            listener,
            config,
            DialAuthority::default(),
            ServerSettings::default(),
        );
        let hbone = srv.local_addr()?;
        let (trigger, watch) = drain::channel();
        tokio::spawn(srv.run(watch));
        Ok(Setup {
            hbone,
            source,
            server,
            _drain: trigger,
        })
    }

    /// A TLS connection (same certificates and provider as HBONE) to a server that relays the
    /// plaintext to `upstream`: the crypto share of the tunnel's cost, without HTTP/2.
    async fn tls_only(&self, upstream: SocketAddr) -> Result<impl AsyncRead + AsyncWrite + Unpin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(self.server.server_config()?));
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            let mut tls = acceptor.accept(tcp).await?;
            let mut up = TcpStream::connect(upstream).await?;
            ambit_proto::relay::relay(ambit_proto::relay::Io(&mut tls), &mut up).await?;
            anyhow::Ok(())
        });
        let config = Arc::new(self.source.client_config(&[self.server.identity().clone()]));
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        Ok(tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await?)
    }

    fn request(&self, authority: SocketAddr) -> ConnectRequest {
        ConnectRequest {
            source: self.source.clone(),
            destination_identities: vec![self.server.identity().clone()],
            hbone_address: self.hbone,
            source_address: None,
            authority,
            forwarded_for: None,
            headers: Vec::new(),
        }
    }
}

async fn run(args: Args) -> Result<()> {
    let setup = Setup::new().await?;
    let client = Client::new(ClientSettings::default());

    if args.runs("throughput") {
        throughput_section(&args, &setup, &client).await?;
    }
    if args.runs("latency") {
        latency_section(&args, &setup, &client).await?;
    }
    if args.runs("rate") {
        rate_section(&args, &setup, &client).await?;
    }
    Ok(())
}

async fn throughput_section(args: &Args, setup: &Setup, client: &Client) -> Result<()> {
    println!(
        "\n## Single-stream throughput ({} MiB per run)\n",
        args.bytes >> 20
    );
    let sink = sink_server().await?;
    let table = Table::new(&["path", "Gbit/s", "vs plain TCP"]);
    let plain = throughput(TcpStream::connect(sink).await?, args.bytes).await?;
    table.row(&["plain TCP".into(), format!("{plain:.2}"), "100%".into()]);
    let tls = throughput(setup.tls_only(sink).await?, args.bytes).await?;
    table.row(&[
        "TLS only (no HTTP/2)".into(),
        format!("{tls:.2}"),
        format!("{:.0}%", tls / plain * 100.0),
    ]);
    let tunnel = throughput(client.connect(setup.request(sink)).await?, args.bytes).await?;
    let ratio = tunnel / plain;
    table.row(&[
        "HBONE tunnel".into(),
        format!("{tunnel:.2}"),
        format!("{:.0}%", ratio * 100.0),
    ]);
    println!(
        "\ntarget: tunnel >= 40% of plain TCP: {}",
        verdict(ratio >= 0.40)
    );
    Ok(())
}

async fn latency_section(args: &Args, setup: &Setup, client: &Client) -> Result<()> {
    println!(
        "\n## Request/response round trip, 64 bytes, {} round trips\n",
        args.round_trips
    );
    let echo = echo_server().await?;
    let table = Table::new(&["path", "p50", "p99"]);
    let p = round_trips(TcpStream::connect(echo).await?, args.round_trips).await?;
    table.row(&["plain TCP".into(), micros(p.p50), micros(p.p99)]);
    let t = round_trips(client.connect(setup.request(echo)).await?, args.round_trips).await?;
    table.row(&["HBONE tunnel".into(), micros(t.p50), micros(t.p99)]);
    Ok(())
}

async fn rate_section(args: &Args, setup: &Setup, client: &Client) -> Result<()> {
    let echo = echo_server().await?;

    println!("\n## New connections ({} s per run)\n", args.rate_seconds);
    let window = Duration::from_secs(args.rate_seconds);
    let table = Table::new(&["what", "per second"]);
    let plain = rate(window, || async {
        one_exchange(TcpStream::connect(echo).await?).await
    })
    .await?;
    table.row(&["plain TCP connections".into(), format!("{plain:.0}")]);
    let fresh = rate(window, || async {
        // A client of its own each time: a new TCP connection and a full TLS handshake.
        let client = Client::new(ClientSettings::default());
        one_exchange(client.connect(setup.request(echo)).await?).await
    })
    .await?;
    table.row(&[
        "HBONE tunnels, fresh TLS each".into(),
        format!("{fresh:.0}"),
    ]);
    let pooled = rate(window, || async {
        one_exchange(client.connect(setup.request(echo)).await?).await
    })
    .await?;
    table.row(&[
        "HBONE streams on a pooled connection".into(),
        format!("{pooled:.0}"),
    ]);
    Ok(())
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// Accepts connections and discards everything.
async fn sink_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                let _ = conn.write_all(b"k").await;
            });
        }
    });
    Ok(addr)
}

/// Echoes every connection.
async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let _ = conn.set_nodelay(true);
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// Sends `bytes` and waits for the sink's acknowledgement after our FIN; returns Gbit/s.
async fn throughput(mut s: impl AsyncRead + AsyncWrite + Unpin, bytes: u64) -> Result<f64> {
    let block = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bytes {
        s.write_all(&block).await?;
        sent += block.len() as u64;
    }
    s.shutdown().await?;
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack)
        .await
        .context("sink acknowledgement")?;
    Ok(sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9)
}

async fn round_trips(
    mut s: impl AsyncRead + AsyncWrite + Unpin,
    n: usize,
) -> Result<ambit_bench::Percentiles> {
    let msg = [7u8; 64];
    let mut buf = [0u8; 64];
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let start = Instant::now();
        s.write_all(&msg).await?;
        s.read_exact(&mut buf).await?;
        // The first tenth warms up connections and caches.
        if i >= n / 10 {
            samples.push(start.elapsed());
        }
    }
    Ok(percentiles(&mut samples))
}

async fn one_exchange(mut s: impl AsyncRead + AsyncWrite + Unpin) -> Result<()> {
    s.write_all(b"x").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    ensure!(b == *b"x", "echo mismatch");
    Ok(())
}

/// Runs `op` sequentially for `window`; returns completions per second.
async fn rate<F, Fut>(window: Duration, mut op: F) -> Result<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < window {
        op().await?;
        done += 1;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

mod aead {
    use std::time::Instant;

    use ambit_bench::Table;

    const RECORD: usize = 16 * 1024;
    const ROUNDS: usize = 40_000;

    pub fn report() {
        let table = Table::new(&[
            "provider",
            "AES-128-GCM Gbit/s",
            "AES-256-GCM Gbit/s",
            "ChaCha20-Poly1305 Gbit/s",
        ]);
        table.row(&[
            "aws-lc-rs".into(),
            gbit(lc(&aws_lc_rs::aead::AES_128_GCM)),
            gbit(lc(&aws_lc_rs::aead::AES_256_GCM)),
            gbit(lc(&aws_lc_rs::aead::CHACHA20_POLY1305)),
        ]);
        table.row(&[
            "ring".into(),
            gbit(rg(&ring::aead::AES_128_GCM)),
            gbit(rg(&ring::aead::AES_256_GCM)),
            gbit(rg(&ring::aead::CHACHA20_POLY1305)),
        ]);
    }

    fn gbit(mut seal: impl FnMut(&mut Vec<u8>)) -> String {
        let mut buf = vec![0u8; RECORD];
        seal(&mut buf); // warm up
        let start = Instant::now();
        for _ in 0..ROUNDS {
            buf.truncate(RECORD);
            seal(&mut buf);
        }
        let bits = (RECORD * ROUNDS * 8) as f64;
        format!("{:.1}", bits / start.elapsed().as_secs_f64() / 1e9)
    }

    fn lc(alg: &'static aws_lc_rs::aead::Algorithm) -> impl FnMut(&mut Vec<u8>) {
        use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(alg, &vec![1u8; alg.key_len()]).unwrap());
        move |buf| {
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), buf)
                .unwrap()
        }
    }

    fn rg(alg: &'static ring::aead::Algorithm) -> impl FnMut(&mut Vec<u8>) {
        use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(alg, &vec![1u8; alg.key_len()]).unwrap());
        move |buf| {
            key.seal_in_place_append_tag(Nonce::assume_unique_for_key([0; 12]), Aad::empty(), buf)
                .unwrap()
        }
    }
}
