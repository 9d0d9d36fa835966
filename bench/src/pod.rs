//! Running benchmark code inside a lab pod's network namespace.

use std::future::Future;

use ambit_cli::lab::netns::in_netns;
use anyhow::Result;

/// Runs `load` on a single-threaded runtime inside `netns`, so its sockets live there.
pub fn in_pod<T, F>(netns: &str, load: impl FnOnce() -> F + Send + 'static) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = std::io::Result<T>>,
{
    let result = in_netns(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(load())
    })?;
    Ok(result)
}

/// A listening socket made inside `netns`; it stays there whichever thread serves it.
pub fn listen_in(netns: &str, addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
    let listener = in_netns(netns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })?;
    Ok(listener)
}
