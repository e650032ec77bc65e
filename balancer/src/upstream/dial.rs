//! One attempt on one backend: TCP connect (with the daemon's `SO_MARK` so
//! iptables rules can exclude it), then the SOCKS5 CONNECT for the target,
//! each under its own timeout.

use std::{io, net::SocketAddr, time::Duration};

use socket2::SockRef;
use tokio::net::{TcpSocket, TcpStream};

use crate::{
    backend::{Backend, FailureCategory},
    clock,
    socks5::{self, ClientError, Credentials, TargetAddr},
};

/// How the daemon dials backends.
#[derive(Clone, Debug)]
pub struct DialOptions {
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
    /// `SO_MARK` on every backend connection; `None` leaves it unset.
    pub mark: Option<u32>,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("resolving backend address {address}: {source}")]
    Resolve { address: String, source: io::Error },
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connecting to {addr}: no answer within {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("SOCKS5 handshake with {addr}: {source}")]
    Handshake {
        addr: SocketAddr,
        source: ClientError,
    },
    #[error("SOCKS5 handshake with {addr}: no answer within {timeout:?}")]
    HandshakeTimeout { addr: SocketAddr, timeout: Duration },
}

impl DialError {
    /// The one classification of this failure.
    pub fn category(&self) -> FailureCategory {
        match self {
            Self::Resolve { .. } => FailureCategory::ConnectRefused,
            Self::Connect { source, .. } => match source.kind() {
                io::ErrorKind::TimedOut => FailureCategory::ConnectTimeout,
                _ => FailureCategory::ConnectRefused,
            },
            Self::ConnectTimeout { .. } => FailureCategory::ConnectTimeout,
            Self::HandshakeTimeout { .. } => FailureCategory::Handshake,
            Self::Handshake { source, .. } => match source {
                ClientError::Reply(code) => FailureCategory::BackendReply(u8::from(*code)),
                error if error.is_auth() => FailureCategory::Auth,
                _ => FailureCategory::Handshake,
            },
        }
    }
}

/// Connects to `backend` and, when `target` is given, asks it to CONNECT
/// there. Returns the stream positioned right after the backend's reply
/// (nothing read ahead) and the connect+handshake latency.
pub async fn dial(
    backend: &Backend,
    target: Option<&TargetAddr>,
    options: &DialOptions,
) -> Result<(TcpStream, Duration), DialError> {
    let started = clock::now();
    let addr = resolve(backend.address()).await?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| DialError::Connect { addr, source })?;
    if let Some(mark) = options.mark {
        SockRef::from(&socket)
            .set_mark(mark)
            .map_err(|source| DialError::Connect { addr, source })?;
    }
    socket
        .set_nodelay(true)
        .map_err(|source| DialError::Connect { addr, source })?;
    let mut stream = tokio::time::timeout(options.connect_timeout, socket.connect(addr))
        .await
        .map_err(|_| DialError::ConnectTimeout {
            addr,
            timeout: options.connect_timeout,
        })?
        .map_err(|source| DialError::Connect { addr, source })?;

    if let Some(target) = target {
        let credentials = backend
            .username()
            .map(|user| Credentials::new(user, backend.password().unwrap_or_default()));
        tokio::time::timeout(
            options.handshake_timeout,
            socks5::client::connect(&mut stream, target, credentials.as_ref()),
        )
        .await
        .map_err(|_| DialError::HandshakeTimeout {
            addr,
            timeout: options.handshake_timeout,
        })?
        .map_err(|source| DialError::Handshake { addr, source })?;
    }
    Ok((stream, clock::now().saturating_duration_since(started)))
}

async fn resolve(address: &str) -> Result<SocketAddr, DialError> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let resolve_error = |source| DialError::Resolve {
        address: address.to_owned(),
        source,
    };
    tokio::net::lookup_host(address)
        .await
        .map_err(resolve_error)?
        .next()
        .ok_or_else(|| resolve_error(io::Error::new(io::ErrorKind::NotFound, "no address")))
}
