//! The path of one connection, and only that: learn the target, select
//! candidate backends, connect with failover, answer the client, hand both
//! sockets to the forwarding engine, account the result.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{Backend, FailureCategory, Registry},
    clock,
    forward::{Engine, Pair, PairEnd},
    listener::{ListenerSpec, Mode, original_destination},
    socks5::{self, ReplyCode, TargetAddr},
    stats::{Counters, HandshakeFailure},
    upstream::{self, DialOptions},
};

/// What every connection shares.
#[derive(Debug)]
pub struct Context {
    pub engine: Arc<Engine>,
    pub registry: Arc<Registry>,
    pub dial: DialOptions,
    pub handshake_timeout: std::time::Duration,
    pub counters: Arc<Counters>,
    /// Fires when the drain period after SIGTERM is over.
    pub hard_stop: CancellationToken,
    connection_ids: AtomicU64,
}

impl Context {
    pub fn new(
        engine: Arc<Engine>,
        registry: Arc<Registry>,
        dial: DialOptions,
        handshake_timeout: std::time::Duration,
        counters: Arc<Counters>,
        hard_stop: CancellationToken,
    ) -> Self {
        Self {
            engine,
            registry,
            dial,
            handshake_timeout,
            counters,
            hard_stop,
            connection_ids: AtomicU64::new(1),
        }
    }

    pub fn next_connection_id(&self) -> u64 {
        self.connection_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// Serves one accepted connection to its end. Never fails: every failure is
/// answered to the client where the protocol allows, logged at debug and
/// counted.
pub async fn run(context: &Context, listener: &ListenerSpec, client: TcpStream, peer: SocketAddr) {
    // A future is as large as its largest state, and this one lives as long
    // as the connection: boxing the handshake frees its codec buffers and
    // failover state once the pair is spliced. With the engines' rare paths
    // boxed too, a sockmap connection's task went from 3,040 to 1,304 bytes
    // and the daemon's RSS per idle spliced connection from 4.4 to 2.7 KB.
    let Some(ready) = Box::pin(establish(context, listener, client, peer)).await else {
        return;
    };
    forward(context, ready).await;
}

/// Both sockets of a connection whose client has been answered.
struct Ready {
    client: TcpStream,
    backend_stream: TcpStream,
    backend: Arc<Backend>,
}

/// Steps 1-4: the target, candidates, connect with failover, the answer.
async fn establish(
    context: &Context,
    listener: &ListenerSpec,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Option<Ready> {
    context.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);

    // 1. The target.
    let target = match read_target(context, listener, &mut client).await {
        Ok(target) => target,
        Err(failure) => {
            context.counters.handshake_failed(failure);
            tracing::debug!(reason = failure.label(), "client handshake failed");
            return None;
        }
    };
    if let Some(target) = &target {
        tracing::debug!(?target, "target");
    }

    // 2. Candidates, 3. connect with failover.
    let now = clock::now();
    // One selector for the whole connection, even if a reload swaps it.
    let selector = listener.selector.load_full();
    let pool = context.registry.pool();
    let candidates = selector.candidates(&pool, peer.ip(), now, &mut rand::rng());
    let mut connected =
        upstream::connect_with_failover(&candidates, target.as_ref(), &context.dial).await;
    // A reload between the pick and the dial drains the picked backends,
    // and draining ones are not dialled: pick once more from the new pool
    // rather than fail a client that arrived while the pool changed.
    if let Err(upstream::Exhausted { attempts: 0, .. }) = connected {
        let current = context.registry.pool();
        if current.generation() != pool.generation() {
            let candidates =
                selector.candidates(&current, peer.ip(), clock::now(), &mut rand::rng());
            connected =
                upstream::connect_with_failover(&candidates, target.as_ref(), &context.dial).await;
        }
    }
    let connected = match connected {
        Ok(connected) => connected,
        Err(exhausted) => {
            context.counters.exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %exhausted, "no backend could take the connection");
            if matches!(listener.mode, Mode::Socks5 { .. }) {
                let _ =
                    socks5::server::reply(&mut client, exhausted.reply_code(), unspecified(peer))
                        .await;
            }
            return None;
        }
    };
    let backend = connected.backend;
    selector.remember(peer.ip(), &backend, clock::now());
    if connected.attempts > 1 {
        context
            .counters
            .retries
            .fetch_add(u64::from(connected.attempts - 1), Ordering::Relaxed);
    }
    tracing::debug!(backend = backend.name(), attempts = connected.attempts, latency = ?connected.latency, "backend ready");

    // 4. Answer the client before the engine takes over: the reply must
    // precede every byte the kernel forwards.
    if matches!(listener.mode, Mode::Socks5 { .. }) {
        let bound = connected
            .stream
            .local_addr()
            .unwrap_or_else(|_| unspecified(peer));
        if let Err(error) = socks5::server::reply(&mut client, ReplyCode::Succeeded, bound).await {
            tracing::debug!(%error, "client went away before the reply");
            return None;
        }
    }

    Some(Ready {
        client,
        backend_stream: connected.stream,
        backend,
    })
}

/// Step 5: forward until both directions are done, then account.
async fn forward(context: &Context, ready: Ready) {
    let Ready {
        client,
        backend_stream,
        backend,
    } = ready;
    let _active = backend.connection_opened();
    let pair = Pair {
        client,
        backend: backend_stream,
        slot: backend.slot,
    };
    match context.engine.forward(pair, &context.hard_stop).await {
        Ok(summary) => {
            context.counters.pair_finished(summary.engine);
            if summary.end == PairEnd::Reset && summary.bytes.down == 0 {
                // The backend accepted the CONNECT but the stream died before
                // a single byte came back: the backend's fault, not the client's.
                upstream::record_outcome(&backend, Err(FailureCategory::PostHandshake));
            }
            tracing::debug!(
                backend = backend.name(),
                engine = %summary.engine,
                up = summary.bytes.up,
                down = summary.bytes.down,
                duration = ?summary.duration,
                end = ?summary.end,
                "closed"
            );
        }
        Err(error) => {
            tracing::warn!(backend = backend.name(), %error, "forwarding failed");
        }
    }
}

async fn read_target(
    context: &Context,
    listener: &ListenerSpec,
    client: &mut TcpStream,
) -> Result<Option<TargetAddr>, HandshakeFailure> {
    match &listener.mode {
        Mode::Passthrough => Ok(None),
        Mode::Redirect => original_destination(client)
            .map(Some)
            .map_err(|_| HandshakeFailure::NoOriginalDestination),
        Mode::Tproxy => client
            .local_addr()
            .map(|addr| Some(TargetAddr::Ip(addr)))
            .map_err(|_| HandshakeFailure::NoOriginalDestination),
        Mode::Socks5 { auth } => {
            match tokio::time::timeout(
                context.handshake_timeout,
                socks5::server::accept(client, auth),
            )
            .await
            {
                Err(_) => Err(HandshakeFailure::Timeout),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "SOCKS5 handshake with the client failed");
                    Err(HandshakeFailure::from(&error))
                }
                Ok(Ok(request)) => Ok(Some(request.target)),
            }
        }
    }
}

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}
