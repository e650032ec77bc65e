//! Ways in: binding the listeners and the accept loop. A listener's mode says
//! how the target of a connection is learned: from the client's SOCKS5
//! request (`socks5`), from netfilter (`redirect`: `SO_ORIGINAL_DST`;
//! `tproxy`: the accepted socket's local address), or not at all
//! (`passthrough`: the client speaks SOCKS5 to the backend itself).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    select::Selector,
    session::{self, Context},
    socks5::{ServerAuth, TargetAddr},
};

/// How a listener learns where a connection goes.
#[derive(Clone, Debug)]
pub enum Mode {
    Socks5 { auth: ServerAuth },
    Passthrough,
    Redirect,
    Tproxy,
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Socks5 { .. } => "socks5",
            Self::Passthrough => "passthrough",
            Self::Redirect => "redirect",
            Self::Tproxy => "tproxy",
        }
    }
}

/// A listener as the daemon runs it (built from the config).
#[derive(Debug)]
pub struct ListenerSpec {
    pub name: String,
    pub mode: Mode,
    pub bind: SocketAddr,
    /// Orders this listener's candidates (its scope says which backends);
    /// swapped whole when a reload changes `balancing`.
    pub selector: ArcSwap<Selector>,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("listener {name:?}: binding {bind}: {source}")]
    Bind {
        name: String,
        bind: SocketAddr,
        source: io::Error,
    },
    #[error("listener {name:?}: IP_TRANSPARENT on {bind} (tproxy needs CAP_NET_ADMIN): {source}")]
    Transparent {
        name: String,
        bind: SocketAddr,
        source: io::Error,
    },
}

/// A bound listener.
#[derive(Debug)]
pub struct Listener {
    pub spec: Arc<ListenerSpec>,
    socket: TcpListener,
}

impl Listener {
    /// Binds `spec`; a `tproxy` listener is made `IP_TRANSPARENT` first so it
    /// accepts connections addressed to any destination.
    pub fn bind(spec: ListenerSpec) -> Result<Self, BindError> {
        let bind_error = |source| BindError::Bind {
            name: spec.name.clone(),
            bind: spec.bind,
            source,
        };
        let socket = Socket::new(
            Domain::for_address(spec.bind),
            Type::STREAM,
            Some(Protocol::TCP),
        )
        .map_err(bind_error)?;
        socket.set_reuse_address(true).map_err(bind_error)?;
        if spec.bind.is_ipv6() {
            socket.set_only_v6(true).map_err(bind_error)?;
        }
        if matches!(spec.mode, Mode::Tproxy) {
            let transparent = if spec.bind.is_ipv4() {
                socket.set_ip_transparent_v4(true)
            } else {
                socket.set_ip_transparent_v6(true)
            };
            transparent.map_err(|source| BindError::Transparent {
                name: spec.name.clone(),
                bind: spec.bind,
                source,
            })?;
        }
        socket.set_nonblocking(true).map_err(bind_error)?;
        socket.bind(&spec.bind.into()).map_err(bind_error)?;
        socket.listen(1024).map_err(bind_error)?;
        let socket = TcpListener::from_std(socket.into()).map_err(bind_error)?;
        Ok(Self {
            spec: Arc::new(spec),
            socket,
        })
    }

    /// The address actually bound (port 0 resolved).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Accepts until `stop` fires. Each connection holds a permit of `limit`
    /// for its whole life; accept errors (EMFILE, ENOBUFS) back off instead of
    /// spinning.
    pub async fn serve(
        self,
        context: Arc<Context>,
        limit: Arc<Semaphore>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(5);
        // One waiter on the token for the whole loop: a `cancelled()` made
        // per select joins the token's waiter list and leaves it again on
        // every accept. Stop first, then the work, in that order (`biased`:
        // no random draw per pass).
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        loop {
            let permit = tokio::select! {
                biased;
                () = &mut stopped => break,
                permit = limit.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                biased;
                () = &mut stopped => break,
                accepted = self.socket.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    backoff = Duration::from_millis(5);
                    let id = context.next_connection_id();
                    let span = tracing::debug_span!("conn", id, client = %peer, listener = %self.spec.name);
                    let spec = self.spec.clone();
                    let context = context.clone();
                    tokio::spawn(
                        async move {
                            session::run(&context, &spec, stream, peer).await;
                            drop(permit);
                        }
                        .instrument(span),
                    );
                }
                Err(error) => {
                    tracing::warn!(listener = %self.spec.name, %error, retry_in = ?backoff, "accept failed");
                    tokio::select! {
                        biased;
                        () = &mut stopped => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
        tracing::info!(listener = %self.spec.name, "stopped accepting");
    }
}

/// The destination netfilter recorded for a redirected connection.
pub fn original_destination(stream: &tokio::net::TcpStream) -> io::Result<TargetAddr> {
    let socket = SockRef::from(stream);
    let local = stream.local_addr()?;
    let original = if local.is_ipv4() {
        socket.original_dst_v4()?
    } else {
        socket.original_dst_v6()?
    };
    original
        .as_socket()
        .map(TargetAddr::Ip)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "original destination is not IP"))
}
