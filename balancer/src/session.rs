//! The path of one connection, and only that: select candidate backends,
//! learn the target (opening the first candidate meanwhile), connect with
//! failover, answer the client, hand both sockets to the forwarding engine,
//! account the result.

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
    select::Candidates,
    socks5::{self, ReplyCode, ServerAuth, TargetAddr},
    stats::{Counters, HandshakeFailure},
    upstream::{self, DialOptions, Early},
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

/// Steps 1-4: candidates, the target, connect with failover, the answer.
async fn establish(
    context: &Context,
    listener: &ListenerSpec,
    mut client: TcpStream,
    peer: SocketAddr,
) -> Option<Ready> {
    context.counters.accepted.fetch_add(1, Ordering::Relaxed);
    let _ = client.set_nodelay(true);

    // 1. Candidates. They depend on the client, not on its target, so the
    // first one can be opened while the client is still sending its request.
    // One selector for the whole connection, even if a reload swaps it.
    let selector = listener.selector.load_full();
    let pool = context.registry.pool();
    let candidates = selector.candidates(&pool, peer.ip(), clock::now(), &mut rand::rng());

    // 2. The target.
    let (target, early) = match read_target(context, listener, &mut client, &candidates).await {
        Ok(found) => found,
        Err(failure) => {
            context.counters.handshake_failed(failure);
            tracing::debug!(reason = failure.label(), "client handshake failed");
            return None;
        }
    };
    if let Some(target) = &target {
        tracing::debug!(?target, early = early.is_some(), "target");
    }

    // 3. Connect with failover.
    let mut connected =
        upstream::connect_with_failover(&candidates, target.as_ref(), &context.dial, early).await;
    // A reload between the pick and the dial drains the picked backends,
    // and draining ones are not dialled: pick once more from the new pool
    // rather than fail a client that arrived while the pool changed.
    if let Err(upstream::Exhausted { attempts: 0, .. }) = connected {
        let current = context.registry.pool();
        if current.generation() != pool.generation() {
            let candidates =
                selector.candidates(&current, peer.ip(), clock::now(), &mut rand::rng());
            connected =
                upstream::connect_with_failover(&candidates, target.as_ref(), &context.dial, None)
                    .await;
        }
    }
    let connected = match connected {
        Ok(connected) => connected,
        Err(exhausted) => {
            context.counters.exhausted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %exhausted, "no backend could take the connection");
            if matches!(listener.mode, Mode::Socks5 { .. }) {
                let _ = socks5::server::reply(
                    &mut client,
                    exhausted.reply_code(),
                    unspecified(peer).into(),
                )
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
    tracing::debug!(backend = backend.name(), attempts = connected.attempts, latency = ?connected.dialled.latency, "backend ready");

    // 4. Answer the client before the engine takes over: the reply must
    // precede every byte the kernel forwards. Its bound address is the
    // backend's: that is where the target sees the connection come from.
    if matches!(listener.mode, Mode::Socks5 { .. }) {
        let bound = connected
            .dialled
            .bound
            .unwrap_or_else(|| unspecified(peer).into());
        if let Err(error) = socks5::server::reply(&mut client, ReplyCode::Succeeded, bound).await {
            tracing::debug!(%error, "client went away before the reply");
            return None;
        }
    }

    Some(Ready {
        client,
        backend_stream: connected.dialled.stream,
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
        engine: backend.spec().engine,
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

/// The target, and the first candidate's attempt when it was opened while
/// the client's request was on its way (SOCKS5 only: the other modes know
/// the target at once).
async fn read_target(
    context: &Context,
    listener: &ListenerSpec,
    client: &mut TcpStream,
    candidates: &Candidates,
) -> Result<(Option<TargetAddr>, Option<Early>), HandshakeFailure> {
    match &listener.mode {
        Mode::Passthrough => Ok((None, None)),
        Mode::Redirect => original_destination(client)
            .map(|target| (Some(target), None))
            .map_err(|_| HandshakeFailure::NoOriginalDestination),
        Mode::Tproxy => client
            .local_addr()
            .map(|addr| (Some(TargetAddr::Ip(addr)), None))
            .map_err(|_| HandshakeFailure::NoOriginalDestination),
        Mode::Socks5 { auth } => socks5_target(context, client, auth, candidates).await,
    }
}

/// The client's SOCKS5 handshake, all of it within the handshake timeout.
/// Only once the client is admitted (method chosen, credentials checked)
/// is the first candidate opened, so an unauthenticated client cannot make
/// the daemon open backend connections; its connect and greeting then
/// overlap the client's round trip for the request. A client that fails
/// its request drops that connection unused, with no outcome recorded
/// against the backend.
async fn socks5_target(
    context: &Context,
    client: &mut TcpStream,
    auth: &ServerAuth,
    candidates: &Candidates,
) -> Result<(Option<TargetAddr>, Option<Early>), HandshakeFailure> {
    let deadline = tokio::time::Instant::now() + context.handshake_timeout;
    client_step(deadline, socks5::server::negotiate(client, auth)).await?;
    let Some(backend) = upstream::first_to_open_early(candidates, clock::now()) else {
        let request = client_step(deadline, socks5::server::read_request(client)).await?;
        return Ok((Some(request.target), None));
    };
    let (request, opened) = {
        let request = client_step(deadline, socks5::server::read_request(client));
        let open = upstream::open(&backend, true, &context.dial);
        tokio::pin!(request, open);
        tokio::select! {
            request = &mut request => (request?, open.await),
            opened = &mut open => (request.await?, opened),
        }
    };
    Ok((Some(request.target), Some(Early { backend, opened })))
}

/// One step of the client's handshake, classified on failure.
async fn client_step<T>(
    deadline: tokio::time::Instant,
    step: impl Future<Output = Result<T, socks5::ServerError>>,
) -> Result<T, HandshakeFailure> {
    match tokio::time::timeout_at(deadline, step).await {
        Err(_) => Err(HandshakeFailure::Timeout),
        Ok(Err(error)) => {
            tracing::debug!(%error, "SOCKS5 handshake with the client failed");
            Err(HandshakeFailure::from(&error))
        }
        Ok(Ok(value)) => Ok(value),
    }
}

fn unspecified(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}
