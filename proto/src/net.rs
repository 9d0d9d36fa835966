//! Outbound sockets with the options a mesh data path needs.
//!
//! The node agent marks every socket it opens (SO_MARK) so its own traffic never matches the
//! capture rules, and binds some upstream sockets to a pod's address with IP_TRANSPARENT so the
//! destination sees the real client IP. Everything that dials goes through [`Dialer`] so no path
//! forgets either option.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, Clone, Copy, Default)]
pub struct Dialer {
    /// SO_MARK for every socket (needs CAP_NET_ADMIN).
    pub mark: Option<u32>,
    pub connect_timeout: Option<Duration>,
}

impl Dialer {
    pub fn new() -> Self {
        Dialer::default()
    }

    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = Some(mark);
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Connects to `dst`.
    pub async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        self.connect_from(dst, None).await
    }

    /// Connects to `dst` from `src`. With `transparent`, `src` may be an address this host does
    /// not own (a local pod's IP): IP_TRANSPARENT lets the kernel use it, and the capture rules
    /// route the replies back to this socket.
    pub async fn connect_from(
        &self,
        dst: SocketAddr,
        src: Option<(SocketAddr, bool)>,
    ) -> io::Result<TcpStream> {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(mark) = self.mark {
            socket.set_mark(mark)?;
        }
        if let Some((src, transparent)) = src {
            if transparent {
                match src {
                    SocketAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
                    SocketAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
                }
            }
            socket.set_reuse_address(true)?;
            socket.bind(&SockAddr::from(src))?;
        }
        let socket = TcpSocket::from_std_stream(socket.into());
        let connect = socket.connect(dst);
        let stream = match self.connect_timeout {
            Some(t) => tokio::time::timeout(t, connect)
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??,
            None => connect.await?,
        };
        Ok(stream)
    }
}
