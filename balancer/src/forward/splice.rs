//! The `splice(2)` engine: each direction of a pair moves socket -> pipe ->
//! socket without copying the payload to user space, driven by tokio
//! readiness on the two sockets. It owns the per-backend byte counters (a
//! fixed array of atomics indexed by [`BackendSlot`]), half-close propagation
//! (FIN forwarded only once the pipe is empty), reset handling, the idle
//! timeout and cancellation.
//!
//! It is the fallback when the sockmap engine cannot load, and the engine for
//! sockets the sockmap cannot take.

use std::{
    io,
    net::Shutdown,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use balancer_common::{BACKEND_STAT_WORDS, MAX_BACKENDS, stat};
use socket2::SockRef;
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{
    BackendSlot, ByteCount, EngineName, ForwardOptions, Pair, PairEnd, PairSummary, relay::Finished,
};
use crate::{
    stats::shared::SharedWords,
    sys::{socket::set_buffers, splice::Pipe},
};

/// Bytes each pipe asks for (see the measurement in the engine's report;
/// `bench_engine` sweeps it). Larger pipes move more per syscall; the cost is
/// pinned pages per busy pair and reaching `fs.pipe-user-pages-soft` sooner
/// for unprivileged daemons (then [`Pipe::new`] keeps the default size).
pub const PIPE_CAPACITY: usize = 256 * 1024;

/// A pair could not be set up for forwarding.
#[derive(Debug, thiserror::Error)]
pub enum SpliceError {
    #[error("cannot open a pipe for splice: {source}")]
    Pipe {
        #[source]
        source: io::Error,
    },
    #[error("cannot set socket buffers of the {side} socket to {size} bytes: {source}")]
    SocketBuffer {
        side: Side,
        size: usize,
        #[source]
        source: io::Error,
    },
    #[error("backend slot {} is outside the {MAX_BACKENDS} counters", slot.0)]
    SlotOutOfRange { slot: BackendSlot },
}

/// Which socket of a pair an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Backend,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Backend => "backend",
        })
    }
}

/// Bytes delivered per backend slot, both directions.
#[derive(Debug, Default)]
struct SlotCounters {
    up: AtomicU64,
    down: AtomicU64,
}

/// Where the per-slot byte counters live.
#[derive(Debug)]
enum SlotBytes {
    /// Process memory of the engine's own.
    Own(Box<[SlotCounters]>),
    /// The `stat::FALLBACK_BYTES_*` words of a `BACKEND_STATS` block per
    /// slot (the sockmap engine's fallback: `balancer stats` reads them
    /// from the pinned map beside the kernel's bytes).
    Shared(Arc<SharedWords>),
}

impl SlotBytes {
    /// (up, down) counters of `slot`, `None` outside.
    fn get(&self, slot: BackendSlot) -> Option<(&AtomicU64, &AtomicU64)> {
        let index = usize::try_from(slot.0).ok()?;
        match self {
            Self::Own(counters) => counters.get(index).map(|c| (&c.up, &c.down)),
            Self::Shared(words) => {
                let block = words
                    .words()
                    .get(index.checked_mul(BACKEND_STAT_WORDS)?..)?
                    .get(..BACKEND_STAT_WORDS)?;
                Some((
                    &block[stat::FALLBACK_BYTES_UP],
                    &block[stat::FALLBACK_BYTES_DOWN],
                ))
            }
        }
    }
}

/// The splice engine: stateless per pair except for the shared counters.
#[derive(Debug)]
pub struct SpliceEngine {
    options: ForwardOptions,
    counters: SlotBytes,
}

impl SpliceEngine {
    /// Opens the engine; fails when this kernel or process cannot create a
    /// pipe (the only resource splice needs beyond the sockets).
    pub fn new(options: ForwardOptions) -> Result<Self, SpliceError> {
        let counters = (0..MAX_BACKENDS).map(|_| SlotCounters::default()).collect();
        Self::with_counters(options, SlotBytes::Own(counters))
    }

    /// As [`Self::new`], counting bytes in the `stat::FALLBACK_BYTES_*`
    /// words of `words` (laid out as `BACKEND_STATS`).
    pub fn with_shared_counters(
        options: ForwardOptions,
        words: Arc<SharedWords>,
    ) -> Result<Self, SpliceError> {
        Self::with_counters(options, SlotBytes::Shared(words))
    }

    fn with_counters(options: ForwardOptions, counters: SlotBytes) -> Result<Self, SpliceError> {
        Pipe::new(PIPE_CAPACITY).map_err(|source| SpliceError::Pipe { source })?;
        Ok(Self { options, counters })
    }

    /// Forwards `pair` until both directions reached EOF (and each FIN was
    /// passed on), either side reset, no byte moved for the idle timeout, or
    /// `cancel` fired. Both sockets are closed when this returns.
    pub async fn forward(
        &self,
        pair: Pair,
        cancel: &CancellationToken,
    ) -> Result<PairSummary, SpliceError> {
        self.forward_rest(pair, Finished::default(), cancel).await
    }

    /// As [`Self::forward`] for a pair whose `finished` directions already
    /// passed their EOF on (in the relay): those are not forwarded again.
    pub async fn forward_rest(
        &self,
        pair: Pair,
        finished: Finished,
        cancel: &CancellationToken,
    ) -> Result<PairSummary, SpliceError> {
        let start = Instant::now();
        let Pair {
            client,
            backend,
            slot,
            ..
        } = pair;
        let (up_counter, down_counter) = self.slot_counters(slot)?;
        if let Some(size) = self.options.socket_buffer {
            set_buffers(&client, size).map_err(|source| SpliceError::SocketBuffer {
                side: Side::Client,
                size,
                source,
            })?;
            set_buffers(&backend, size).map_err(|source| SpliceError::SocketBuffer {
                side: Side::Backend,
                size,
                source,
            })?;
        }
        let up_pipe = Pipe::new(PIPE_CAPACITY).map_err(|source| SpliceError::Pipe { source })?;
        let down_pipe = Pipe::new(PIPE_CAPACITY).map_err(|source| SpliceError::Pipe { source })?;

        let last_activity = Activity::new(start);
        let up_bytes = AtomicU64::new(0);
        let down_bytes = AtomicU64::new(0);
        let up = Direction {
            from: &client,
            to: &backend,
            pipe: &up_pipe,
            counter: up_counter,
            moved: &up_bytes,
            last_activity: &last_activity,
        };
        let down = Direction {
            from: &backend,
            to: &client,
            pipe: &down_pipe,
            counter: down_counter,
            moved: &down_bytes,
            last_activity: &last_activity,
        };
        let end = drive(
            (&client, &backend),
            (up.pump(), down.pump()),
            finished,
            self.options.idle_timeout,
            &last_activity,
            cancel,
        )
        .await;
        if end == PairEnd::Reset {
            // Pass the abort on: the surviving peer must not mistake a broken
            // stream for a complete one.
            abort(&client);
            abort(&backend);
        }
        drop((client, backend));
        Ok(PairSummary {
            bytes: ByteCount {
                up: up_bytes.into_inner(),
                down: down_bytes.into_inner(),
            },
            duration: start.elapsed(),
            end,
            engine: EngineName::Splice,
        })
    }

    /// The (up, down) byte counters of `slot`, which the user-space relay
    /// also counts into.
    pub(super) fn slot_counters(
        &self,
        slot: BackendSlot,
    ) -> Result<(&AtomicU64, &AtomicU64), SpliceError> {
        self.counters
            .get(slot)
            .ok_or(SpliceError::SlotOutOfRange { slot })
    }

    pub(super) fn options(&self) -> &ForwardOptions {
        &self.options
    }

    /// Bytes delivered so far for `slot`, all pairs (live and finished);
    /// zero for a slot outside the counters.
    pub fn backend_bytes(&self, slot: BackendSlot) -> ByteCount {
        self.counters
            .get(slot)
            .map(|(up, down)| ByteCount {
                up: up.load(Ordering::Relaxed),
                down: down.load(Ordering::Relaxed),
            })
            .unwrap_or_default()
    }

    /// Zeroes the counters of `slot`, for a slot handed to another backend.
    pub fn clear_slot(&self, slot: BackendSlot) {
        if let Some((up, down)) = self.counters.get(slot) {
            up.store(0, Ordering::Relaxed);
            down.store(0, Ordering::Relaxed);
        }
    }
}

/// Runs both directions until the pair ends, and says how it ended.
async fn drive(
    (client, backend): (&TcpStream, &TcpStream),
    (up, down): (
        impl Future<Output = io::Result<()>>,
        impl Future<Output = io::Result<()>>,
    ),
    finished: Finished,
    idle_timeout: Option<Duration>,
    last_activity: &Activity,
    cancel: &CancellationToken,
) -> PairEnd {
    let mut up = pin!(up);
    let mut down = pin!(down);
    let (mut up_done, mut down_done) = (finished.up, finished.down);
    // Without a timeout the deadline is never reached in practice; one code
    // path keeps the select simple.
    let idle = idle_timeout.unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
    loop {
        if up_done && down_done {
            return PairEnd::Closed;
        }
        let deadline = last_activity.last() + idle;
        tokio::select! {
            result = &mut up, if !up_done => match result {
                Ok(()) => up_done = true,
                Err(cause) => {
                    tracing::debug!(%cause, direction = "up", "splice: pair reset");
                    return PairEnd::Reset;
                }
            },
            result = &mut down, if !down_done => match result {
                Ok(()) => down_done = true,
                Err(cause) => {
                    tracing::debug!(%cause, direction = "down", "splice: pair reset");
                    return PairEnd::Reset;
                }
            },
            // A reset on a socket whose reading direction is finished (or
            // idle) is seen by no pump: watch for it directly.
            _ = client.ready(Interest::ERROR) => return PairEnd::Reset,
            _ = backend.ready(Interest::ERROR) => return PairEnd::Reset,
            () = cancel.cancelled() => return PairEnd::Cancelled,
            () = sleep_until(deadline) => {
                if last_activity.last() + idle <= Instant::now() {
                    return PairEnd::IdleTimeout;
                }
            }
        }
    }
}

/// One direction of a pair: everything read from `from` is written to `to`.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    pipe: &'a Pipe,
    counter: &'a AtomicU64,
    moved: &'a AtomicU64,
    last_activity: &'a Activity,
}

/// When a byte last moved either way, shared by the two directions of a
/// pair (atomics so that the pair's future stays `Send`).
struct Activity {
    start: Instant,
    /// Nanoseconds from `start`.
    last: AtomicU64,
}

impl Activity {
    fn new(start: Instant) -> Self {
        Self {
            start,
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let since = self.start.elapsed().as_nanos();
        self.last
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

impl Direction<'_> {
    /// Moves bytes until `from` reaches EOF, then shuts `to` down for
    /// writing. Only fills the pipe when it is empty, so `WouldBlock` on a
    /// fill always means the socket has nothing queued (never a full pipe)
    /// and clearing its readiness cannot lose a wake-up.
    async fn pump(self) -> io::Result<()> {
        loop {
            let filled = loop {
                self.from.readable().await?;
                match self.from.try_io(Interest::READABLE, || {
                    self.pipe.fill_from(self.from, self.pipe.capacity())
                }) {
                    Ok(filled) => break filled,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            };
            if filled == 0 {
                // Every byte read was already written: the FIN follows them.
                return SockRef::from(self.to).shutdown(Shutdown::Write);
            }
            self.last_activity.touch();
            let mut left = filled;
            while left > 0 {
                self.to.writable().await?;
                match self
                    .to
                    .try_io(Interest::WRITABLE, || self.pipe.drain_into(self.to, left))
                {
                    Ok(written) => {
                        left -= written;
                        let written = written as u64;
                        self.counter.fetch_add(written, Ordering::Relaxed);
                        self.moved.fetch_add(written, Ordering::Relaxed);
                        self.last_activity.touch();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Closes with RST instead of FIN (`SO_LINGER` 0) when the stream is broken.
fn abort(socket: &TcpStream) {
    if let Err(cause) = SockRef::from(socket).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(%cause, "splice: cannot set SO_LINGER 0 before abort");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::forward::{BackendEngine, testing::loopback_sockets as sockets};

    #[tokio::test]
    async fn a_pair_forwards_both_ways_and_counts_bytes_per_slot() {
        let engine = SpliceEngine::new(ForwardOptions::default()).expect("engine");
        let (mut client, accepted, connected, mut server) = sockets().await;
        let slot = BackendSlot(7);
        let cancel = CancellationToken::new();
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot,
            engine: BackendEngine::Auto,
        };
        let forward =
            tokio::spawn(async move { engine.forward(pair, &cancel).await.map(|s| (s, engine)) });
        client.write_all(b"hello").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello");
        server.write_all(b"world!").await.expect("write");
        server.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"world!");
        let (summary, engine) = forward.await.expect("join").expect("forward");
        assert_eq!(summary.end, PairEnd::Closed);
        assert_eq!(summary.bytes, ByteCount { up: 5, down: 6 });
        assert_eq!(engine.backend_bytes(slot), ByteCount { up: 5, down: 6 });
        assert_eq!(engine.backend_bytes(BackendSlot(8)), ByteCount::default());
    }

    #[tokio::test]
    async fn with_shared_counters_the_bytes_land_in_the_slot_block_fallback_words() {
        let words = Arc::new(SharedWords::heap(
            BACKEND_STAT_WORDS * MAX_BACKENDS as usize,
        ));
        let engine =
            SpliceEngine::with_shared_counters(ForwardOptions::default(), Arc::clone(&words))
                .expect("engine");
        let (mut client, accepted, connected, mut server) = sockets().await;
        let slot = BackendSlot(3);
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot,
            engine: BackendEngine::Auto,
        };
        let forward = tokio::spawn(async move {
            let cancel = CancellationToken::new();
            engine.forward(pair, &cancel).await.map(|_| engine)
        });
        client.write_all(b"abc").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.expect("read");
        server.write_all(b"defgh").await.expect("write");
        server.shutdown().await.expect("shutdown");
        client.read_to_end(&mut got).await.expect("read");
        let engine = forward.await.expect("join").expect("forward");
        let block = &words.words()[3 * BACKEND_STAT_WORDS..4 * BACKEND_STAT_WORDS];
        let word = |index: usize| block[index].load(Ordering::Relaxed);
        assert_eq!(
            (
                word(stat::FALLBACK_BYTES_UP),
                word(stat::FALLBACK_BYTES_DOWN)
            ),
            (3, 5)
        );
        let others: u64 = block.iter().map(|w| w.load(Ordering::Relaxed)).sum();
        assert_eq!(others, 8, "only the two fallback words moved");
        assert_eq!(engine.backend_bytes(slot), ByteCount { up: 3, down: 5 });
        engine.clear_slot(slot);
        assert_eq!(engine.backend_bytes(slot), ByteCount::default());
    }

    #[tokio::test]
    async fn a_slot_beyond_the_counters_is_refused() {
        let engine = SpliceEngine::new(ForwardOptions::default()).expect("engine");
        let (_client, accepted, connected, _server) = sockets().await;
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot: BackendSlot(MAX_BACKENDS),
            engine: BackendEngine::Auto,
        };
        let result = engine.forward(pair, &CancellationToken::new()).await;
        assert!(matches!(result, Err(SpliceError::SlotOutOfRange { .. })));
    }

    #[tokio::test]
    async fn a_silent_pair_ends_after_the_idle_timeout() {
        let options = ForwardOptions {
            idle_timeout: Some(Duration::from_millis(200)),
            ..ForwardOptions::default()
        };
        let engine = SpliceEngine::new(options).expect("engine");
        let (_client, accepted, connected, _server) = sockets().await;
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot: BackendSlot(0),
            engine: BackendEngine::Auto,
        };
        let summary = engine
            .forward(pair, &CancellationToken::new())
            .await
            .expect("forward");
        assert_eq!(summary.end, PairEnd::IdleTimeout);
        assert!(summary.duration >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn cancelling_ends_a_pair_as_cancelled() {
        let engine = SpliceEngine::new(ForwardOptions::default()).expect("engine");
        let (_client, accepted, connected, _server) = sockets().await;
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot: BackendSlot(0),
            engine: BackendEngine::Auto,
        };
        let cancel = CancellationToken::new();
        cancel.cancel();
        let summary = engine.forward(pair, &cancel).await.expect("forward");
        assert_eq!(summary.end, PairEnd::Cancelled);
    }
}
