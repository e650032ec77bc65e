//! One attempt on one backend: TCP connect (with the daemon's `SO_MARK` so
//! iptables rules can exclude it), then the SOCKS5 greeting and the CONNECT
//! for the target, the connect and the handshake each under its own
//! timeout. The two halves can run apart ([`open`], [`Opened::request`]) so
//! that the connect and greeting overlap the client's own handshake.

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

/// A backend connection ready to carry the client's bytes.
#[derive(Debug)]
pub struct Dialled {
    /// Positioned right after the backend's reply (nothing read ahead).
    pub stream: TcpStream,
    /// Connect and handshake time.
    pub latency: Duration,
    /// The address the backend reports it connects to the target from
    /// (`BND.ADDR`/`BND.PORT` of its reply), which is what the client's own
    /// reply should carry; `None` without a CONNECT (no target).
    pub bound: Option<TargetAddr>,
}

/// Connects to `backend` and, when `target` is given, asks it to CONNECT
/// there.
pub async fn dial(
    backend: &Backend,
    target: Option<&TargetAddr>,
    options: &DialOptions,
) -> Result<Dialled, DialError> {
    open(backend, target.is_some(), options)
        .await?
        .request(target, options)
        .await
}

/// A backend connection made before the target was known: connected and,
/// for SOCKS5, greeted (and authenticated), waiting for its CONNECT.
#[derive(Debug)]
pub struct Opened {
    stream: TcpStream,
    addr: SocketAddr,
    /// Connect and greeting time, without any wait for the target after it.
    spent: Duration,
    /// What is left of the handshake timeout for the CONNECT.
    handshake_left: Duration,
}

/// The first half of [`dial`]: TCP connect and, with `socks5`, the greeting.
pub async fn open(
    backend: &Backend,
    socks5: bool,
    options: &DialOptions,
) -> Result<Opened, DialError> {
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

    let mut handshake_left = options.handshake_timeout;
    if socks5 {
        let greeting_started = clock::now();
        let credentials = backend
            .username()
            .map(|user| Credentials::new(user, backend.password().unwrap_or_default()));
        handshake_step(
            addr,
            options.handshake_timeout,
            options.handshake_timeout,
            socks5::client::greet(&mut stream, credentials.as_ref()),
        )
        .await?;
        handshake_left =
            handshake_left.saturating_sub(clock::now().saturating_duration_since(greeting_started));
    }
    Ok(Opened {
        stream,
        addr,
        spent: clock::now().saturating_duration_since(started),
        handshake_left,
    })
}

impl Opened {
    /// The second half of [`dial`]: the CONNECT for `target` (nothing when
    /// there is no target), within what the greeting left of the handshake
    /// timeout. The latency is the backend's connect, greeting and reply,
    /// without the time the connection waited between.
    pub async fn request(
        self,
        target: Option<&TargetAddr>,
        options: &DialOptions,
    ) -> Result<Dialled, DialError> {
        let Self {
            mut stream,
            addr,
            spent,
            handshake_left,
        } = self;
        let Some(target) = target else {
            return Ok(Dialled {
                stream,
                latency: spent,
                bound: None,
            });
        };
        let started = clock::now();
        let bound = handshake_step(
            addr,
            handshake_left,
            options.handshake_timeout,
            socks5::client::request(&mut stream, target),
        )
        .await?;
        Ok(Dialled {
            stream,
            latency: spent + clock::now().saturating_duration_since(started),
            bound: Some(bound),
        })
    }
}

/// One step of the backend handshake within `limit`; a timeout is
/// reported as the whole handshake's (`reported`).
async fn handshake_step<T>(
    addr: SocketAddr,
    limit: Duration,
    reported: Duration,
    step: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, DialError> {
    tokio::time::timeout(limit, step)
        .await
        .map_err(|_| DialError::HandshakeTimeout {
            addr,
            timeout: reported,
        })?
        .map_err(|source| DialError::Handshake { addr, source })
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
