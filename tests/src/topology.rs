//! Where the four sockets of a proxied connection live, and how to make
//! them: `client <-> (accepted | connected) <-> server`. The middle two are
//! what a forwarding `Engine` takes as a `Pair`.
//!
//! - [`TopologyKind::Loopback`]: everything on 127.0.0.1 in the host
//!   namespace.
//! - [`TopologyKind::Veth`]: client and server in namespace A, the proxy's
//!   two sockets in namespace B, joined by one veth pair, so both legs cross
//!   a real device (GRO, segmentation) instead of loopback.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use anyhow::{Context, Result};
use balancer::forward::{BackendEngine, BackendSlot, Pair};
use tokio::net::TcpStream;

use crate::netns::{NetNs, Veth};

/// Which network the sockets of a [`Topology`] use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopologyKind {
    Loopback,
    Veth,
}

/// Listeners for the proxy side and the server side, and the namespaces they
/// live in. Fields drop in order: listeners, veth, then namespaces.
#[derive(Debug)]
pub struct Topology {
    kind: TopologyKind,
    proxy_listener: TcpListener,
    server_listener: TcpListener,
    veth: Option<Veth>,
    /// Namespace of client and server (veth only).
    outer: Option<NetNs>,
    /// Namespace of the proxy's sockets (veth only).
    proxy: Option<NetNs>,
}

/// The four sockets of one proxied connection, all established.
#[derive(Debug)]
pub struct PairSockets {
    /// The application's end, connected to the proxy.
    pub client: TcpStream,
    /// The proxy's accepted socket (the `Pair`'s client side).
    pub accepted: TcpStream,
    /// The proxy's outgoing socket (the `Pair`'s backend side).
    pub connected: TcpStream,
    /// The server's end, accepted from the proxy's connect.
    pub server: TcpStream,
}

impl PairSockets {
    /// Splits into the engine's `Pair` and the two outer ends
    /// `(client, server)` the test drives.
    pub fn into_pair(self, slot: BackendSlot) -> (Pair, TcpStream, TcpStream) {
        let pair = Pair {
            client: self.accepted,
            backend: self.connected,
            slot,
            engine: BackendEngine::Auto,
        };
        (pair, self.client, self.server)
    }
}

impl Topology {
    /// Builds the topology; `Veth` creates two namespaces and a veth pair
    /// (needs root: see [`crate::require_root`]).
    pub fn new(kind: TopologyKind) -> Result<Self> {
        match kind {
            TopologyKind::Loopback => Ok(Self {
                kind,
                proxy_listener: bind(Ipv4Addr::LOCALHOST)?,
                server_listener: bind(Ipv4Addr::LOCALHOST)?,
                veth: None,
                outer: None,
                proxy: None,
            }),
            TopologyKind::Veth => {
                let outer = NetNs::new()?;
                let proxy = NetNs::new()?;
                let veth = Veth::new(&outer, &proxy)?;
                let (outer_addr, proxy_addr) = (veth.a_addr, veth.b_addr);
                let server_listener = outer.run(move || bind(outer_addr))??;
                let proxy_listener = proxy.run(move || bind(proxy_addr))??;
                Ok(Self {
                    kind,
                    proxy_listener,
                    server_listener,
                    veth: Some(veth),
                    outer: Some(outer),
                    proxy: Some(proxy),
                })
            }
        }
    }

    pub fn kind(&self) -> TopologyKind {
        self.kind
    }

    /// The veth pair (`Veth` topology only).
    pub fn veth(&self) -> Option<&Veth> {
        self.veth.as_ref()
    }

    /// The namespace holding client and server (`Veth` topology only).
    pub fn outer_ns(&self) -> Option<&NetNs> {
        self.outer.as_ref()
    }

    /// The namespace holding the proxy's sockets (`Veth` topology only).
    pub fn proxy_ns(&self) -> Option<&NetNs> {
        self.proxy.as_ref()
    }

    /// Where clients connect to reach the proxy.
    pub fn proxy_addr(&self) -> Result<SocketAddr> {
        Ok(self.proxy_listener.local_addr()?)
    }

    /// Where the proxy connects to reach the server.
    pub fn server_addr(&self) -> Result<SocketAddr> {
        Ok(self.server_listener.local_addr()?)
    }

    /// Makes one proxied connection's four sockets. Must be called inside a
    /// tokio runtime; connects block briefly (local handshakes only).
    pub async fn pair_sockets(&self) -> Result<PairSockets> {
        let proxy_addr = self.proxy_addr()?;
        let server_addr = self.server_addr()?;
        let client = in_ns(self.outer.as_ref(), move || {
            std::net::TcpStream::connect(proxy_addr)
        })
        .context("client connects to the proxy")?;
        let (accepted, _) = self.proxy_listener.accept().context("proxy accepts")?;
        let connected = in_ns(self.proxy.as_ref(), move || {
            std::net::TcpStream::connect(server_addr)
        })
        .context("proxy connects to the server")?;
        let (server, _) = self.server_listener.accept().context("server accepts")?;
        Ok(PairSockets {
            client: tokio_stream(client)?,
            accepted: tokio_stream(accepted)?,
            connected: tokio_stream(connected)?,
            server: tokio_stream(server)?,
        })
    }
}

fn bind(ip: Ipv4Addr) -> Result<TcpListener> {
    let listener = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    listener.set_reuse_address(true)?;
    listener.bind(&SocketAddr::from((ip, 0)).into())?;
    // Room for bursts of concurrent pairs; each connect is accepted at once.
    listener.listen(4096)?;
    Ok(listener.into())
}

fn in_ns<T: Send>(ns: Option<&NetNs>, f: impl FnOnce() -> std::io::Result<T> + Send) -> Result<T> {
    match ns {
        Some(ns) => Ok(ns.run(f)??),
        None => Ok(f()?),
    }
}

fn tokio_stream(stream: std::net::TcpStream) -> Result<TcpStream> {
    stream.set_nonblocking(true)?;
    stream.set_nodelay(true)?;
    Ok(TcpStream::from_std(stream)?)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn ends_are_connected_as_drawn(kind: TopologyKind) {
        let topology = Topology::new(kind).expect("topology");
        let mut sockets = topology.pair_sockets().await.expect("sockets");
        sockets.client.write_all(b"c").await.expect("write");
        sockets.connected.write_all(b"p").await.expect("write");
        let mut byte = [0];
        sockets.accepted.read_exact(&mut byte).await.expect("read");
        assert_eq!(&byte, b"c");
        sockets.server.read_exact(&mut byte).await.expect("read");
        assert_eq!(&byte, b"p");
    }

    #[tokio::test]
    async fn loopback_sockets_are_connected_as_drawn() {
        ends_are_connected_as_drawn(TopologyKind::Loopback).await;
    }

    #[tokio::test]
    async fn veth_sockets_are_connected_as_drawn() {
        crate::require_root("network namespaces and veth");
        ends_are_connected_as_drawn(TopologyKind::Veth).await;
    }
}
