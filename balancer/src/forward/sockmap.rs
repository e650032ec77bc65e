//! The sockmap engine: joins a client socket and a backend socket in the
//! kernel so that every byte after the handshake is redirected by the BPF
//! verdict (`balancer-ebpf`) from one socket's receive path to the other's
//! egress, without a copy to user space. User space never reads payload from a
//! spliced socket; it only watches for EOF and errors, propagates half-close
//! once every redirected byte was handed on, and tears the pair down.
//!
//! Lifecycle of one pair ([`SockmapEngine::forward`]):
//! 1. `PEERS` entries for both cookies, a baseline of bytes written per socket
//!    (`tcpi_bytes_acked + SIOCOUTQ`);
//! 2. both sockets into `TARGETS` (no program: where the verdict redirects
//!    to), then both into `SOCKETS` (the verdict attached), backend first each
//!    time: a client is the side likelier to half-close early. Whichever
//!    socket's verdict runs first, its peer is already a destination, so
//!    nothing needs to hold the verdict back meanwhile;
//! 3. the kick: `SO_RCVLOWAT` 1 (its value already) on both, because
//!    `tcp_set_rcvlowat` calls `tcp_data_ready`, which runs the verdict over
//!    what was queued before the insert and saw no verdict yet, in order;
//! 4. an engine-wide epoll (no `EPOLLIN`, so data never wakes user space)
//!    reports RDHUP/HUP/ERR; on EOF of A, B's write side is shut once
//!    `SIOCINQ(A) == 0` and B has written its baseline plus every byte the
//!    verdict redirected from A;
//! 5. the kernel's queue towards B: when B's send buffer is full, the kernel
//!    queues what the verdict redirects on B's psock with no limit, and
//!    nothing holds A's peer back (A's receive window stays open, because the
//!    verdict takes every skb at once). Each 16 MiB redirected from A, the
//!    verdict asks for a look (`QUEUE_CHECKS`); the engine counts the largest
//!    queue it saw and warns once per direction above [`QUEUE_WARN_ABOVE`].
//!    It does not hold A back: taking A out of `SOCKETS` and back, or reading
//!    A in user space afterwards, corrupted the stream on Linux 6.18 (see the
//!    README).
//!
//! Sockets a sockhash refuses (not ESTABLISHED, e.g. already half-closed)
//! go to the [`SpliceEngine`] this engine owns. Minimum kernel: Linux 5.15.

use std::{
    collections::HashMap,
    io,
    net::TcpStream as StdTcpStream,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use balancer_common::{BackendBytes, NO_SLOT, PeerInfo, daemon_stat, direction};
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, unix::AsyncFd},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::{
    BackendEngine, BackendSlot, ByteCount, EngineName, ForwardOptions, Pair, PairEnd, PairSummary,
    splice::{SpliceEngine, SpliceError},
};
use crate::{
    bpf::{Bpf, BpfError, MapEntries, MappedWords, SocketMap, kernel_log, ring},
    stats::{shared::SharedWords, snapshot::KernelQueue},
    sys::socket,
};

/// How long the self-test in [`SockmapEngine::open`] may take.
const SELF_TEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the backoff while waiting for a peer to send the last
/// redirected bytes before its write side is shut.
const DRAIN_BACKOFF_MIN: Duration = Duration::from_millis(1);
const DRAIN_BACKOFF_MAX: Duration = Duration::from_millis(50);
/// Attempts at a baseline that no ACK raced.
const BASELINE_ATTEMPTS: usize = 1000;
/// A direction whose peer's psock queues more than this is logged (once).
pub const QUEUE_WARN_ABOVE: u64 = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SockmapError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error("cannot {op} on a spliced socket")]
    Socket {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the engine's epoll failed to {op}")]
    Epoll {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("self-test: no result within {0:?}")]
    SelfTestTimeout(Duration),
    #[error("self-test: {what} was {got}, expected {expected}")]
    SelfTestMismatch {
        what: &'static str,
        expected: u64,
        got: u64,
    },
    #[error("self-test: the test pair ended with {0:?}")]
    SelfTestEnd(PairEnd),
    #[error("self-test: loopback I/O failed")]
    SelfTestIo(#[source] io::Error),
    #[error("self-test: forwarding failed")]
    SelfTestForward(#[source] Box<SockmapError>),
    #[error("the fallback splice engine failed")]
    Fallback(#[from] SpliceError),
}

fn sock_err(op: &'static str) -> impl FnOnce(io::Error) -> SockmapError {
    move |source| SockmapError::Socket { op, source }
}

/// The sockmap engine: one BPF object and one epoll for all pairs.
#[derive(Debug)]
pub struct SockmapEngine {
    /// Boxed: the loaded object is large and the engine lives in an enum.
    bpf: Box<Bpf>,
    watcher: Arc<Watcher>,
    dispatcher: JoinHandle<()>,
    /// Forwards the BPF program's log records (`forwarding.bpf_log`).
    kernel_log: Option<JoinHandle<()>>,
    /// Routes the verdict's queue checks to their pairs.
    queue_checks: JoinHandle<()>,
    /// The mapped `DAEMON_STATS`, where the queue checks count
    /// (`daemon_stat::KERNEL_QUEUE_*`).
    daemon_words: Arc<MappedWords>,
    fallback: SpliceEngine,
    options: ForwardOptions,
}

impl Drop for SockmapEngine {
    fn drop(&mut self) {
        self.dispatcher.abort();
        self.queue_checks.abort();
        if let Some(task) = &self.kernel_log {
            task.abort();
        }
    }
}

impl SockmapEngine {
    /// Loads and attaches the BPF object, starts the watcher, and splices one
    /// loopback pair through the maps to prove the kernel forwards.
    pub async fn open(options: ForwardOptions) -> Result<Self, SockmapError> {
        let mut bpf = Box::new(Bpf::load(options.pin_dir.as_deref(), options.bpf_log)?);
        let kernel_log = bpf.take_logger().map(|logger| {
            tracing::info!(
                "forwarding.bpf_log: the BPF program's log lines go to target balancer::bpf::kernel"
            );
            tokio::spawn(kernel_log::forward(logger))
        });
        let watcher = Arc::new(Watcher::new()?);
        let dispatcher = tokio::spawn(Arc::clone(&watcher).dispatch());
        let ring = bpf
            .take_queue_checks()
            .ok_or(SockmapError::Bpf(BpfError::Missing {
                kind: "map",
                name: balancer_common::map::QUEUE_CHECKS,
            }))?;
        let queue_checks = tokio::spawn(route_queue_checks(ring, Arc::clone(&watcher)));
        // The fallback counts into the slot blocks of BACKEND_STATS, so the
        // pinned maps hold every byte of a slot, whichever engine moved it.
        let fallback = SpliceEngine::with_shared_counters(
            options.clone(),
            Arc::new(SharedWords::Mapped(bpf.backend_stats())),
        )?;
        let daemon_words = bpf.daemon_stats();
        let engine = Self {
            bpf,
            watcher,
            dispatcher,
            kernel_log,
            queue_checks,
            daemon_words,
            fallback,
            options,
        };
        match tokio::time::timeout(SELF_TEST_TIMEOUT, engine.self_test()).await {
            Ok(result) => result?,
            Err(_) => return Err(SockmapError::SelfTestTimeout(SELF_TEST_TIMEOUT)),
        }
        Ok(engine)
    }

    /// Forwards `pair` in the kernel until both directions are done, a side
    /// resets, it idles out, or `cancel` fires. No skb may be left partly
    /// read in either socket (the verdict would send it again from its
    /// start): [`super::Engine::forward`] settles both with the relay first.
    pub async fn forward(
        &self,
        pair: Pair,
        cancel: &CancellationToken,
    ) -> Result<PairSummary, SockmapError> {
        let started = crate::clock::now();
        let Pair {
            client,
            backend,
            slot,
            engine,
        } = pair;
        // Out of tokio's reactor: its registration includes EPOLLIN, and every
        // redirected skb would wake it.
        let client = client
            .into_std()
            .map_err(sock_err("deregister from tokio"))?;
        let backend = backend
            .into_std()
            .map_err(sock_err("deregister from tokio"))?;
        if let Some(bytes) = self.options.socket_buffer {
            socket::set_buffers(&client, bytes).map_err(sock_err("set buffer sizes"))?;
            socket::set_buffers(&backend, bytes).map_err(sock_err("set buffer sizes"))?;
        }
        let spliced = match self.splice_in(client, backend, slot)? {
            Ok(spliced) => spliced,
            Err((client, backend)) => {
                let pair = Pair {
                    client: TcpStream::from_std(client).map_err(sock_err("register with tokio"))?,
                    backend: TcpStream::from_std(backend)
                        .map_err(sock_err("register with tokio"))?,
                    slot,
                    engine,
                };
                tracing::debug!("sockhash refused the pair; forwarding it with splice");
                // Boxed: inline, the rare splice future would set the size
                // of every spliced connection's future.
                return Ok(Box::pin(self.fallback.forward(pair, cancel)).await?);
            }
        };
        let end = self.watch(&spliced, cancel).await;
        let bytes = self.tear_down(
            &spliced,
            matches!(end, Ok(PairEnd::Reset | PairEnd::KernelQueueLimit)),
        );
        drop(spliced);
        let end = end?;
        Ok(PairSummary {
            bytes: bytes?,
            duration: started.elapsed(),
            end,
            engine: EngineName::Sockmap,
        })
    }

    /// The splice engine that takes the pairs the sockhash refuses; its
    /// counters are the `FALLBACK_BYTES_*` words of `BACKEND_STATS`.
    pub(super) fn fallback(&self) -> &SpliceEngine {
        &self.fallback
    }

    /// The mapped `BACKEND_STATS` and `DAEMON_STATS` maps, where the daemon
    /// keeps its own counters beside the kernel's.
    #[must_use]
    pub fn stats_memory(&self) -> (Arc<MappedWords>, Arc<MappedWords>) {
        (self.bpf.backend_stats(), self.bpf.daemon_stats())
    }

    /// Zeroes the kernel's and the fallback's counters of `slot`.
    pub fn clear_slot(&self, slot: BackendSlot) {
        self.fallback.clear_slot(slot);
        if let Err(err) = self.bpf.clear_backend_bytes(slot.0) {
            tracing::warn!(%err, slot = slot.0, "cannot zero BACKEND_BYTES; the slot's next backend inherits its bytes");
        }
    }

    /// Bytes forwarded so far for `slot` by the kernel and by the fallback.
    pub fn backend_bytes(&self, slot: BackendSlot) -> ByteCount {
        self.backend_counts(slot).0
    }

    /// [`Self::backend_bytes`] and [`Self::redirected`] from one read of
    /// the kernel's counters.
    pub fn backend_counts(&self, slot: BackendSlot) -> (ByteCount, BackendBytes) {
        let kernel = self.redirected(slot);
        let mut total = self.fallback.backend_bytes(slot);
        total += ByteCount {
            up: kernel.up,
            down: kernel.down,
        };
        (total, kernel)
    }

    /// What the verdict redirected for `slot`: the kernel's part of
    /// [`Self::backend_bytes`] and the skbs that carried it (zero, with a
    /// warning, when the map cannot be read).
    pub fn redirected(&self, slot: BackendSlot) -> BackendBytes {
        self.bpf.backend_bytes(slot.0).unwrap_or_else(|err| {
            tracing::warn!(%err, slot = slot.0, "cannot read BACKEND_BYTES");
            BackendBytes::default()
        })
    }

    /// What the queue checks found (step 5), as the daemon's counters hold
    /// it.
    #[must_use]
    pub fn kernel_queue(&self) -> KernelQueue {
        let words = self.daemon_words.words();
        KernelQueue::from_words(|index| words[index].load(Ordering::Relaxed))
    }

    /// How many entries `PEERS`, `SOCKETS` and `TARGETS` hold (zero once all
    /// pairs end).
    pub fn map_entries(&self) -> Result<MapEntries, SockmapError> {
        Ok(self.bpf.entries()?)
    }

    /// The `PEERS` entry of a socket, by its `SO_COOKIE`.
    pub fn peer_info(&self, cookie: u64) -> Result<Option<PeerInfo>, SockmapError> {
        Ok(self.bpf.peer(cookie)?)
    }

    /// Steps 1-3 of the lifecycle. `Ok(Err(sockets))`: the sockhash refused a
    /// socket and nothing was redirected, so the caller may forward another way.
    fn splice_in(
        &self,
        client: StdTcpStream,
        backend: StdTcpStream,
        slot: BackendSlot,
    ) -> Result<Result<Spliced<'_>, (StdTcpStream, StdTcpStream)>, SockmapError> {
        let client_cookie = socket::cookie(&client).map_err(sock_err("read SO_COOKIE"))?;
        let backend_cookie = socket::cookie(&backend).map_err(sock_err("read SO_COOKIE"))?;
        let now = socket::monotonic_ns();
        let info = |peer_cookie, direction| PeerInfo {
            peer_cookie,
            last_activity_ns: now,
            slot: slot.0,
            direction,
            ..PeerInfo::default()
        };
        let client_baseline = exact_written(&client)?;
        let backend_baseline = exact_written(&backend)?;
        let mut spliced = Spliced {
            up: Flow {
                from_cookie: client_cookie,
                to_baseline: backend_baseline,
            },
            down: Flow {
                from_cookie: backend_cookie,
                to_baseline: client_baseline,
            },
            client: Some(client),
            backend: Some(backend),
            bpf: &self.bpf,
            watcher: &self.watcher,
            events: None,
        };
        self.bpf
            .set_peer(client_cookie, info(backend_cookie, direction::UP))?;
        self.bpf
            .set_peer(backend_cookie, info(client_cookie, direction::DOWN))?;
        // TARGETS first: a socket there runs no program, so a refusal at this
        // step leaves nothing redirected. SOCKETS second: from the moment the
        // first socket's verdict runs, its peer is already a destination.
        // With one map for both roles the verdict of the socket inserted
        // first could run before its peer was in and drop what it read; a
        // huge SO_RCVLOWAT did not hold it back, since tcp_data_ready runs it
        // regardless once a FIN arrives or the receive buffer nears full.
        let refused =
            self.join(&spliced, SocketMap::Targets)? || self.join(&spliced, SocketMap::Sockets)?;
        if refused {
            // A socket whose state changed between the two steps (a FIN came)
            // is refused by SOCKETS after TARGETS took it: by then the verdict
            // of the socket inserted first may have moved bytes, and the pair
            // can continue nowhere else. Out of SOCKETS first, so that no
            // verdict starts any more and what moved is final when read.
            spliced.leave(SocketMap::Sockets)?;
            let mut moved = 0;
            for cookie in [backend_cookie, client_cookie] {
                if let Some(info) = self.bpf.peer(cookie)? {
                    moved += info.redirected_bytes + info.dropped_bytes;
                }
            }
            spliced.leave(SocketMap::Targets)?;
            spliced.forget_peers()?;
            if moved > 0 {
                return Err(SockmapError::Socket {
                    op: "splice (bytes moved while the peer was refused)",
                    source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                });
            }
            let (client, backend) = (spliced.client.take(), spliced.backend.take());
            let (Some(client), Some(backend)) = (client, backend) else {
                return Err(gone());
            };
            return Ok(Err((client, backend)));
        }
        spliced.events = Some(self.watcher.watch([
            (client_cookie, spliced.client()?.as_fd()),
            (backend_cookie, spliced.backend()?.as_fd()),
        ])?);
        // The kick: setting SO_RCVLOWAT runs tcp_data_ready, which hands
        // every byte queued before the insert to the verdict, in order.
        for sock in [spliced.client()?, spliced.backend()?] {
            socket::set_rcvlowat(sock, 1).map_err(sock_err("set SO_RCVLOWAT"))?;
        }
        Ok(Ok(spliced))
    }

    /// Inserts the pair into `which`, backend first (a client is the side
    /// likelier to half-close early). `Ok(true)`: the kernel refused a
    /// socket (not an established TCP socket).
    fn join(&self, pair: &Spliced<'_>, which: SocketMap) -> Result<bool, SockmapError> {
        for (cookie, sock) in [
            (pair.down.from_cookie, pair.backend()?),
            (pair.up.from_cookie, pair.client()?),
        ] {
            match self.bpf.insert_socket(which, cookie, sock.as_raw_fd()) {
                Ok(()) => {}
                Err(BpfError::SocketRejected { .. }) => return Ok(true),
                Err(err) => return Err(err.into()),
            }
        }
        Ok(false)
    }

    /// Step 4: waits for the end of the pair.
    async fn watch(
        &self,
        pair: &Spliced<'_>,
        cancel: &CancellationToken,
    ) -> Result<PairEnd, SockmapError> {
        let Some(events) = &pair.events else {
            return Ok(PairEnd::Reset);
        };
        let mut events = events.lock().unwrap_or_else(PoisonError::into_inner).take();
        let (client, backend) = (pair.client()?, pair.backend()?);
        let mut state = PairState {
            last_written: [pair.down.to_baseline, pair.up.to_baseline],
            ..PairState::default()
        };
        let mut backoff = DRAIN_BACKOFF_MIN;
        loop {
            let mut draining = false;
            for (index, flow, from, to) in [
                (0, &pair.up, client, backend),
                (1, &pair.down, backend, client),
            ] {
                let eof = if index == 0 {
                    state.client_eof
                } else {
                    state.backend_eof
                };
                if !eof || state.shut[index] {
                    continue;
                }
                match flow.drained(&self.bpf, from, to, &mut state.last_written[index])? {
                    Drain::Done => {
                        socket::shutdown_write(to).map_err(sock_err("shut down the write side"))?;
                        state.shut[index] = true;
                    }
                    Drain::Progress(now) => {
                        state.last_progress_ns = state.last_progress_ns.max(now);
                        draining = true;
                    }
                    Drain::Waiting => draining = true,
                    Drain::Lost => return Ok(PairEnd::Reset),
                }
            }
            if state.shut == [true, true] {
                return Ok(PairEnd::Closed);
            }
            // The activity stamps cost two map lookups: read only when an
            // idle timeout needs them.
            let until_idle_timeout = match self.options.idle_timeout {
                Some(idle) => {
                    let last = pair
                        .last_activity_ns(&self.bpf)?
                        .max(state.last_progress_ns);
                    let now = socket::monotonic_ns();
                    if idle_expired(last, now, idle) {
                        return Ok(PairEnd::IdleTimeout);
                    }
                    until_idle(last, now, idle)
                }
                None => Duration::from_secs(3600),
            };
            let wait = if draining {
                backoff
            } else {
                backoff = DRAIN_BACKOFF_MIN;
                until_idle_timeout
            };
            let event = match events.as_mut() {
                Some(rx) => tokio::select! {
                    () = cancel.cancelled() => return Ok(PairEnd::Cancelled),
                    event = rx.recv() => event,
                    () = tokio::time::sleep(wait) => None,
                },
                None => tokio::select! {
                    () = cancel.cancelled() => return Ok(PairEnd::Cancelled),
                    () = tokio::time::sleep(wait) => None,
                },
            };
            if draining && event.is_none() {
                backoff = (backoff * 2).min(DRAIN_BACKOFF_MAX);
            }
            let Some((cookie, event)) = event else {
                continue;
            };
            // The client's socket is where the up direction comes from.
            let up = cookie == pair.up.from_cookie;
            let flags = match event {
                Event::QueueCheck => {
                    let warned = &mut state.warned[usize::from(!up)];
                    if let Some(end) = self.check_queue(pair, up, warned)? {
                        return Ok(end);
                    }
                    continue;
                }
                Event::Epoll(flags) => flags,
            };
            let sock = if up { client } else { backend };
            if flags.contains(EpollFlags::EPOLLERR) {
                return Ok(PairEnd::Reset);
            }
            if flags.contains(EpollFlags::EPOLLHUP) {
                // HUP also comes after a clean FIN both ways; only a
                // pending error makes it a reset.
                if socket::take_error(sock)
                    .map_err(sock_err("read SO_ERROR"))?
                    .is_some()
                {
                    return Ok(PairEnd::Reset);
                }
            }
            if flags.intersects(EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLHUP) {
                if up {
                    state.client_eof = true;
                } else {
                    state.backend_eof = true;
                }
            }
        }
    }

    /// Step 5: reads the queue on the psock of the socket that direction
    /// `up` (or down) goes out of and counts it; warns once per direction
    /// (`warned`) above [`QUEUE_WARN_ABOVE`], which later checks still
    /// count so that the largest stays true. `Some`: the queue passed
    /// `forwarding.kernel_queue_limit` and the pair ends.
    fn check_queue(
        &self,
        pair: &Spliced<'_>,
        up: bool,
        warned: &mut bool,
    ) -> Result<Option<PairEnd>, SockmapError> {
        let (flow, to) = if up {
            (&pair.up, pair.backend()?)
        } else {
            (&pair.down, pair.client()?)
        };
        let queued = flow.queued(&self.bpf, to)?;
        let words = self.daemon_words.words();
        words[daemon_stat::KERNEL_QUEUE_CHECKS].fetch_add(1, Ordering::Relaxed);
        words[daemon_stat::KERNEL_QUEUE_LARGEST].fetch_max(queued, Ordering::Relaxed);
        if queued > QUEUE_WARN_ABOVE && !*warned {
            *warned = true;
            self.queue_event(pair, up, QueueEvent::Warning);
        }
        if self
            .options
            .kernel_queue_limit
            .is_some_and(|limit| queued > limit)
        {
            self.queue_event(pair, up, QueueEvent::Reset);
            return Ok(Some(PairEnd::KernelQueueLimit));
        }
        Ok(None)
    }

    /// Counts and logs a direction whose queue passed [`QUEUE_WARN_ABOVE`]
    /// or the configured limit.
    fn queue_event(&self, pair: &Spliced<'_>, up: bool, event: QueueEvent) {
        let word = match event {
            QueueEvent::Warning => daemon_stat::KERNEL_QUEUE_WARNINGS,
            QueueEvent::Reset => daemon_stat::KERNEL_QUEUE_RESETS,
        };
        self.daemon_words.words()[word].fetch_add(1, Ordering::Relaxed);
        // Named here: the connection's span is off at the default level.
        let peer = |sock: Result<&StdTcpStream, SockmapError>| {
            sock.ok()
                .and_then(|sock| sock.peer_addr().ok())
                .map_or_else(|| "?".to_owned(), |addr| addr.to_string())
        };
        let (direction, client, backend) = (
            if up { "up" } else { "down" },
            peer(pair.client()),
            peer(pair.backend()),
        );
        match event {
            QueueEvent::Warning => tracing::warn!(
                direction,
                client,
                backend,
                queued_above_mib = QUEUE_WARN_ABOVE >> 20,
                "the receiving side is slower than the sending side: the kernel queues what it \
                 cannot send yet without a limit, and the sockmap engine cannot hold the sender \
                 back on this kernel (forwarding.engine: splice can; \
                 forwarding.kernel_queue_limit resets such connections)"
            ),
            QueueEvent::Reset => tracing::warn!(
                direction,
                client,
                backend,
                limit = self.options.kernel_queue_limit,
                "connection reset: the kernel queued more than forwarding.kernel_queue_limit \
                 for its slower side"
            ),
        }
    }

    /// The bytes the verdict redirected each way; with `reset`, makes the
    /// close abortive. Leaving the maps and closing happen when the pair
    /// drops.
    fn tear_down(&self, pair: &Spliced<'_>, reset: bool) -> Result<ByteCount, SockmapError> {
        let up = self.bpf.peer(pair.up.from_cookie)?.unwrap_or_default();
        let down = self.bpf.peer(pair.down.from_cookie)?.unwrap_or_default();
        if reset {
            for sock in [pair.client()?, pair.backend()?] {
                // Propagate the reset: the other side's data is lost anyway.
                if let Err(err) = socket::set_abortive_close(sock) {
                    tracing::debug!(%err, "cannot set SO_LINGER 0");
                }
            }
        }
        // The pair leaves the maps when it drops, right after, before its
        // sockets close: removing it here too would repeat the deletes.
        Ok(ByteCount {
            up: up.redirected_bytes,
            down: down.redirected_bytes,
        })
    }

    async fn self_test(&self) -> Result<(), SockmapError> {
        let io = SockmapError::SelfTestIo;
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        let mut client = TcpStream::connect(addr).await.map_err(io)?;
        let (client_inner, _) = listener.accept().await.map_err(io)?;
        let mut server = TcpStream::connect(addr).await.map_err(io)?;
        let (server_inner, _) = listener.accept().await.map_err(io)?;
        let before = self.bpf.global()?.redirected_skbs;
        let pair = Pair {
            client: client_inner,
            backend: server_inner,
            slot: BackendSlot(NO_SLOT),
            engine: BackendEngine::Auto,
        };
        let cancel = CancellationToken::new();
        let peers = async {
            client.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await?;
            let up_ok = &buf == b"ping";
            server.write_all(b"pong!").await?;
            let mut buf = [0u8; 5];
            client.read_exact(&mut buf).await?;
            let down_ok = &buf == b"pong!";
            client.shutdown().await?;
            server.shutdown().await?;
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await?;
            server.read_to_end(&mut rest).await?;
            Ok::<_, io::Error>(up_ok && down_ok && rest.is_empty())
        };
        let (summary, arrived) = tokio::join!(self.forward(pair, &cancel), peers);
        let summary = summary.map_err(|err| SockmapError::SelfTestForward(Box::new(err)))?;
        if !arrived.map_err(io)? {
            return Err(SockmapError::SelfTestMismatch {
                what: "bytes intact",
                expected: 1,
                got: 0,
            });
        }
        if summary.end != PairEnd::Closed {
            return Err(SockmapError::SelfTestEnd(summary.end));
        }
        check("bytes redirected up", 4, summary.bytes.up)?;
        check("bytes redirected down", 5, summary.bytes.down)?;
        let moved = self.bpf.global()?.redirected_skbs.saturating_sub(before);
        if moved < 2 {
            return Err(SockmapError::SelfTestMismatch {
                what: "skbs redirected",
                expected: 2,
                got: moved,
            });
        }
        Ok(())
    }
}

fn check(what: &'static str, expected: u64, got: u64) -> Result<(), SockmapError> {
    if expected == got {
        Ok(())
    } else {
        Err(SockmapError::SelfTestMismatch {
            what,
            expected,
            got,
        })
    }
}

/// Whether a pair whose last byte moved at `last_ns` has idled out at `now_ns`.
fn idle_expired(last_ns: u64, now_ns: u64, idle: Duration) -> bool {
    u128::from(now_ns.saturating_sub(last_ns)) >= idle.as_nanos()
}

/// How long until a pair that last moved at `last_ns` idles out (at least
/// 1 ms, so a clock step cannot spin the loop).
fn until_idle(last_ns: u64, now_ns: u64, idle: Duration) -> Duration {
    let elapsed = Duration::from_nanos(now_ns.saturating_sub(last_ns));
    idle.saturating_sub(elapsed).max(Duration::from_millis(1))
}

/// How many redirected bytes wait on the receiving socket's psock: the
/// verdict handed them on, the receiving socket has not taken them into its
/// send buffer yet.
fn psock_queue(baseline: u64, redirected: u64, written: u64) -> u64 {
    baseline.saturating_add(redirected).saturating_sub(written)
}

/// Whether every byte of a direction has been handed to the peer socket:
/// nothing left unread by the verdict and the peer wrote all it was given.
fn handed_on(inq: u64, written: u64, baseline: u64, redirected: u64) -> bool {
    inq == 0 && psock_queue(baseline, redirected, written) == 0
}

#[derive(Debug, Default)]
struct PairState {
    client_eof: bool,
    backend_eof: bool,
    /// Write side of the receiving socket shut, per direction (up, down).
    shut: [bool; 2],
    /// Last write count seen on the receiving socket, per direction.
    last_written: [u64; 2],
    last_progress_ns: u64,
    /// The queue towards the receiving socket passed the warning mark, per
    /// direction (up, down).
    warned: [bool; 2],
}

enum Drain {
    Done,
    Waiting,
    /// The peer's write count moved (at this monotonic time).
    Progress(u64),
    /// The verdict dropped bytes of this direction.
    Lost,
}

/// One direction: what the socket `from_cookie` receives goes out of its peer.
struct Flow {
    from_cookie: u64,
    /// Bytes the receiving socket had written before it joined the map.
    to_baseline: u64,
}

impl Flow {
    fn drained(
        &self,
        bpf: &Bpf,
        from: &StdTcpStream,
        to: &StdTcpStream,
        last_written: &mut u64,
    ) -> Result<Drain, SockmapError> {
        let info = bpf.peer(self.from_cookie)?.unwrap_or_default();
        if info.dropped_bytes > 0 {
            return Ok(Drain::Lost);
        }
        let inq = socket::inq(from).map_err(sock_err("read SIOCINQ"))?;
        let written = socket::bytes_written(to)
            .map_err(sock_err("read TCP_INFO/SIOCOUTQ"))?
            .bytes;
        if handed_on(inq, written, self.to_baseline, info.redirected_bytes) {
            return Ok(Drain::Done);
        }
        if written != *last_written {
            *last_written = written;
            return Ok(Drain::Progress(socket::monotonic_ns()));
        }
        Ok(Drain::Waiting)
    }

    /// See [`psock_queue`]; `to` is the socket this direction goes out of.
    fn queued(&self, bpf: &Bpf, to: &StdTcpStream) -> Result<u64, SockmapError> {
        let redirected = bpf
            .peer(self.from_cookie)?
            .map_or(0, |info| info.redirected_bytes);
        let written = socket::bytes_written(to)
            .map_err(sock_err("read TCP_INFO/SIOCOUTQ"))?
            .bytes;
        Ok(psock_queue(self.to_baseline, redirected, written))
    }
}

/// The exact count of bytes written so far, retried until no ACK races the
/// reads (before the socket joins the map nothing else writes to it).
fn exact_written(sock: &StdTcpStream) -> Result<u64, SockmapError> {
    for _ in 0..BASELINE_ATTEMPTS {
        let written = socket::bytes_written(sock).map_err(sock_err("read TCP_INFO/SIOCOUTQ"))?;
        if written.exact {
            return Ok(written.bytes);
        }
    }
    Err(SockmapError::Socket {
        op: "read a stable write count",
        source: io::Error::from(io::ErrorKind::TimedOut),
    })
}

/// A pair in the maps; removes itself from the maps and the epoll on drop.
struct Spliced<'a> {
    up: Flow,
    down: Flow,
    /// `None` only once handed back for the fallback.
    client: Option<StdTcpStream>,
    backend: Option<StdTcpStream>,
    bpf: &'a Bpf,
    watcher: &'a Watcher,
    events: Option<EventSlot>,
}

fn gone() -> SockmapError {
    SockmapError::Socket {
        op: "use a socket handed back",
        source: io::Error::from(io::ErrorKind::NotConnected),
    }
}

impl Spliced<'_> {
    fn client(&self) -> Result<&StdTcpStream, SockmapError> {
        self.client.as_ref().ok_or_else(gone)
    }

    fn backend(&self) -> Result<&StdTcpStream, SockmapError> {
        self.backend.as_ref().ok_or_else(gone)
    }

    fn last_activity_ns(&self, bpf: &Bpf) -> Result<u64, SockmapError> {
        let up = bpf
            .peer(self.up.from_cookie)?
            .map_or(0, |info| info.last_activity_ns);
        let down = bpf
            .peer(self.down.from_cookie)?
            .map_or(0, |info| info.last_activity_ns);
        Ok(up.max(down))
    }

    /// Takes both sockets out of `which`.
    fn leave(&self, which: SocketMap) -> Result<(), SockmapError> {
        for cookie in [self.up.from_cookie, self.down.from_cookie] {
            self.bpf.remove_socket(which, cookie)?;
        }
        Ok(())
    }

    fn forget_peers(&self) -> Result<(), SockmapError> {
        for cookie in [self.up.from_cookie, self.down.from_cookie] {
            self.bpf.remove_peer(cookie)?;
        }
        Ok(())
    }
}

impl Drop for Spliced<'_> {
    fn drop(&mut self) {
        // A pair handed back to the fallback (both sockets taken) already
        // left the maps before its sockets were taken.
        let handed_back = self.client.is_none() && self.backend.is_none();
        // SOCKETS before PEERS, so the verdict stops before its PEERS go;
        // TARGETS is left to the close right after, which empties every
        // sockhash of a socket.
        if !handed_back
            && let Err(err) = self
                .leave(SocketMap::Sockets)
                .and_then(|()| self.forget_peers())
        {
            tracing::warn!(%err, "cannot remove a pair from the BPF maps");
        }
        for (cookie, sock) in [
            (self.up.from_cookie, &self.client),
            (self.down.from_cookie, &self.backend),
        ] {
            if let Some(sock) = sock {
                self.watcher.unwatch(cookie, sock.as_fd());
            }
        }
    }
}

/// The engine-wide epoll: spliced sockets registered for RDHUP/HUP/ERR only,
/// edge-triggered, so redirected data never wakes user space.
#[derive(Debug)]
struct Watcher {
    epoll: AsyncFd<socket::RegisteredEpoll>,
    routes: Mutex<Routes>,
}

/// Socket cookie -> the channel of its pair's watch loop.
type Routes = HashMap<u64, mpsc::UnboundedSender<(u64, Event)>>;

/// Why a queue check is logged.
#[derive(Clone, Copy, Debug)]
enum QueueEvent {
    /// Past [`QUEUE_WARN_ABOVE`], once per direction.
    Warning,
    /// Past `forwarding.kernel_queue_limit`: the pair ends.
    Reset,
}

/// What a pair's watch loop hears about one of its sockets.
#[derive(Clone, Copy, Debug)]
enum Event {
    Epoll(EpollFlags),
    /// The verdict redirected another `QUEUE_CHECK_BYTES` from the socket.
    QueueCheck,
}

/// Events of one pair: (socket cookie, event).
type Events = mpsc::UnboundedReceiver<(u64, Event)>;
/// Where a pair's events wait until its watch loop takes them.
type EventSlot = Mutex<Option<Events>>;

/// How many events one `epoll_wait` takes.
const EVENT_BATCH: usize = 64;

impl Watcher {
    fn new() -> Result<Self, SockmapError> {
        let epoll = socket::async_epoll().map_err(|source| SockmapError::Epoll {
            op: "create",
            source,
        })?;
        Ok(Self {
            epoll,
            routes: Mutex::new(HashMap::new()),
        })
    }

    fn watch(&self, sockets: [(u64, BorrowedFd<'_>); 2]) -> Result<EventSlot, SockmapError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let flags = EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLHUP
            | EpollFlags::EPOLLERR
            | EpollFlags::EPOLLET;
        for (cookie, fd) in sockets {
            self.routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(cookie, tx.clone());
            self.epoll
                .get_ref()
                .epoll()
                .add(fd, EpollEvent::new(flags, cookie))
                .map_err(|errno| SockmapError::Epoll {
                    op: "add a socket",
                    source: errno.into(),
                })?;
        }
        Ok(Mutex::new(Some(rx)))
    }

    /// Hands `event` to the pair of socket `cookie`, if it is still watched.
    fn route(&self, cookie: u64, event: Event) {
        deliver(
            &self.routes.lock().unwrap_or_else(PoisonError::into_inner),
            cookie,
            event,
        );
    }

    fn unwatch(&self, cookie: u64, fd: BorrowedFd<'_>) {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&cookie);
        // ENOENT: never added (the pair failed before watching).
        if let Err(errno) = self.epoll.get_ref().epoll().delete(fd)
            && errno != nix::errno::Errno::ENOENT
        {
            tracing::warn!(%errno, "cannot remove a socket from the engine's epoll");
        }
    }

    /// Routes epoll events to the pairs' channels until the engine drops.
    async fn dispatch(self: Arc<Self>) {
        let mut events = [EpollEvent::empty(); EVENT_BATCH];
        loop {
            let mut guard = match self.epoll.readable().await {
                Ok(guard) => guard,
                Err(err) => {
                    tracing::error!(%err, "sockmap watcher stopped");
                    return;
                }
            };
            let drained = guard.try_io(|epoll| {
                loop {
                    let count = epoll
                        .get_ref()
                        .epoll()
                        .wait(&mut events, EpollTimeout::ZERO)
                        .map_err(io::Error::from)?;
                    if count == 0 {
                        return Err::<(), _>(io::ErrorKind::WouldBlock.into());
                    }
                    let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
                    for event in events.iter().take(count) {
                        deliver(&routes, event.data(), Event::Epoll(event.events()));
                    }
                }
            });
            if let Ok(Err(err)) = drained {
                tracing::error!(%err, "sockmap watcher stopped");
                return;
            }
        }
    }
}

/// Sends `event` to the pair of socket `cookie` in `routes`, if any.
fn deliver(routes: &Routes, cookie: u64, event: Event) {
    if let Some(tx) = routes.get(&cookie) {
        // A closed receiver means the pair is ending anyway.
        let _ignored = tx.send((cookie, event));
    }
}

/// Routes the verdict's queue checks (socket cookies) to their pairs until
/// the engine drops.
async fn route_queue_checks(ring: RingBuf<MapData>, watcher: Arc<Watcher>) {
    let error = ring::drain_when_readable(ring, |ring| {
        while let Some(record) = ring.next() {
            if let Ok(cookie) = <[u8; 8]>::try_from(&*record) {
                watcher.route(u64::from_ne_bytes(cookie), Event::QueueCheck);
            }
        }
    })
    .await;
    tracing::error!(%error, "cannot watch QUEUE_CHECKS: kernel queues go unreported");
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn a_pair_idles_out_once_the_timeout_has_passed_since_the_last_byte() {
        assert!(!idle_expired(10 * SEC, 14 * SEC, Duration::from_secs(5)));
        assert!(idle_expired(10 * SEC, 15 * SEC, Duration::from_secs(5)));
    }

    #[test]
    fn a_last_activity_in_the_future_is_not_idle() {
        assert!(!idle_expired(20 * SEC, 10 * SEC, Duration::from_secs(1)));
        assert_eq!(
            until_idle(20 * SEC, 10 * SEC, Duration::from_secs(1)),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_wait_until_idle_shrinks_with_elapsed_time_but_never_to_zero() {
        assert_eq!(
            until_idle(10 * SEC, 12 * SEC, Duration::from_secs(5)),
            Duration::from_secs(3)
        );
        assert_eq!(
            until_idle(10 * SEC, 99 * SEC, Duration::from_secs(5)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn a_direction_is_handed_on_only_when_nothing_is_queued_and_the_peer_wrote_it_all() {
        assert!(handed_on(0, 110, 10, 100));
        assert!(!handed_on(0, 109, 10, 100));
        assert!(!handed_on(1, 110, 10, 100));
    }

    #[test]
    fn the_psock_queue_is_what_was_handed_on_minus_what_the_peer_wrote() {
        // baseline 10, 100 redirected, 60 written.
        assert_eq!(psock_queue(10, 100, 60), 50);
        assert_eq!(psock_queue(10, 100, 110), 0);
        // A write count read after more was redirected than the count used
        // is no queue, not an underflow.
        assert_eq!(psock_queue(10, 100, 200), 0);
    }
}
