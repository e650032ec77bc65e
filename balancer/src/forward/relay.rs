//! The user-space relay: carries the first bytes of every pair before its
//! engine takes over (`forwarding.offload_after_bytes` / `_time`).
//!
//! Most connections through a proxy are short, a request and its answer,
//! and for those an engine's per-pair set-up costs more than the bytes: the
//! sockmap engine spends 14 `bpf` calls and about 30 other syscalls per pair
//! (cookies, write baselines, `SO_RCVLOWAT`, socket buffers, its epoll), the
//! splice engine two pipes. The relay reads into its worker thread's
//! buffer and writes straight on, so a pair that ends within its budget
//! never reaches the engine. Once a pair has moved the budget's bytes or
//! lived its time, whichever comes first, the relay stops reading, finishes
//! the write in hand and returns both sockets with nothing held in user
//! space: what arrives meanwhile waits in the kernel's receive queue, where
//! both engines start reading.
//!
//! An idle pair holds no buffer here. Only bytes that the peer could not
//! take at once are kept, on the heap, until written.
//!
//! The hand-over never leaves a partly read segment at the head of a receive
//! queue. The sockmap verdict takes queued skbs whole (`tcp_read_skb` ignores
//! how far user space had read into the first one), so a partly read skb
//! would be sent again from its start: a client that writes its SOCKS5
//! request and its first data in one segment saw its request bytes arrive
//! at the target. Before handing over, the relay therefore reads each
//! direction until a read comes back short of its buffer, which consumes
//! every skb it touched. For that reason the sockmap engine runs the relay
//! with a zero budget even when `offload_after_*` is 0. Those reads take
//! everything queued at once (`SIOCINQ`, with room for as much again): a
//! sender that keeps a wide window full would fill every smaller read, and
//! the relay would carry its whole upload. Splice reads on from any offset,
//! so a pair bound for it skips the settle ([`Taker`]).

use std::{
    future::poll_fn,
    io::{self, Read as _},
    net::Shutdown,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use socket2::SockRef;
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

use super::{ByteCount, Pair, PairEnd};
use crate::sys::socket;

/// Largest read per wake-up.
const READ_CHUNK: usize = 16 * 1024;

thread_local! {
    /// The read buffer of every relay on this worker thread: a read and its
    /// write never await, so no two relays use it at once. One per thread
    /// instead of one on the stack per read, which was zeroed on every read
    /// (16 KiB of memset per wake-up of every short connection).
    static READ_BUFFER: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// When a pair leaves the relay for its engine: whichever limit it reaches
/// first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayBudget {
    /// Bytes moved, both directions together.
    pub bytes: u64,
    /// Time since the pair was handed to forwarding.
    pub time: Duration,
}

/// What the engine that takes a pair over needs of the receive queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taker {
    /// Sockmap: the verdict takes queued skbs whole, so the relay settles
    /// (see the module docs) and leaves none partly read.
    WholeSkbs,
    /// Splice: reads on from wherever the relay stopped; the relay hands
    /// over as soon as it has written what it read.
    AnyOffset,
}

/// The directions whose EOF the relay already passed on (FIN sent to the
/// other side), which the engine must not forward again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Finished {
    /// Client -> backend.
    pub up: bool,
    /// Backend -> client.
    pub down: bool,
}

impl Finished {
    #[must_use]
    pub fn any(self) -> bool {
        self.up || self.down
    }
}

/// How a pair left the relay.
#[derive(Debug)]
pub enum Relayed {
    /// The pair ended here; its sockets are closed (abortively on reset).
    Ended { bytes: ByteCount, end: PairEnd },
    /// The budget is spent and the pair is still open: the engine goes on.
    HandOver {
        pair: Pair,
        bytes: ByteCount,
        finished: Finished,
    },
}

/// One direction: bytes read but not yet written, and whether its EOF was
/// passed on.
#[derive(Default)]
struct Flow {
    pending: Vec<u8>,
    /// How much of `pending` is already written.
    offset: usize,
    eof: bool,
    /// The last read came back short of its buffer (or found nothing), so
    /// no skb is left partly read. False at first: the handshake's exact
    /// reads may have stopped inside one.
    settled: bool,
    moved: u64,
}

impl Flow {
    fn holds_bytes(&self) -> bool {
        self.offset < self.pending.len()
    }

    fn account(&mut self, written: usize, counter: &AtomicU64) {
        let written = written as u64;
        self.moved += written;
        counter.fetch_add(written, Ordering::Relaxed);
    }

    /// Reads once from `from` and writes what came to `to`, keeping what
    /// `to` did not take. `Ok(false)`: nothing to read (stale readiness).
    fn read_and_write(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        counter: &AtomicU64,
    ) -> io::Result<bool> {
        READ_BUFFER.with_borrow_mut(|buf| self.read_and_write_with(buf, from, to, counter))
    }

    /// One pass of the hand-over's settle: a read, and if it came back full,
    /// everything queued on `from`, so that the read comes back short (no
    /// skb left partly read) however fast the sender refills the queue.
    /// Reads of [`READ_CHUNK`] each came
    /// back full from a sender that keeps a wide window full (a bulk upload
    /// behind a `redirect` listener, whose client sends from its connect
    /// on), and the relay carried the whole upload in user space (64 MiB
    /// in the benchmark) instead of handing it over. What the peer cannot
    /// take at once is held until written, as always: at most what the
    /// kernel had queued for this socket, once per pair.
    fn settle(
        &mut self,
        from: &TcpStream,
        to: &TcpStream,
        counter: &AtomicU64,
    ) -> io::Result<bool> {
        // The usual read first: mostly it comes back short, and the pair
        // pays no more syscalls than before (every pair under sockmap
        // settles when `offload_after_bytes` is 0).
        let moved = self.read_and_write(from, to, counter)?;
        if self.settled || self.eof || self.holds_bytes() {
            return Ok(moved);
        }
        let queued = usize::try_from(socket::inq(from)?).unwrap_or(usize::MAX);
        if queued == 0 {
            // The full read took the queue to its end: no skb partly read.
            self.settled = true;
            return Ok(moved);
        }
        // Room for as much again, so that what arrives during the copy
        // still leaves the read short (else the next pass reads on). Pages
        // the read does not fill are never touched (a large zeroed
        // allocation is fresh mapped memory).
        let mut buf = vec![0; queued.saturating_mul(2).max(READ_CHUNK)];
        self.read_and_write_with(&mut buf, from, to, counter)
            .map(|more| moved || more)
    }

    fn read_and_write_with(
        &mut self,
        buf: &mut [u8],
        from: &TcpStream,
        to: &TcpStream,
        counter: &AtomicU64,
    ) -> io::Result<bool> {
        let read = match read_draining(from, buf) {
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.settled = true;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        self.settled = read < buf.len();
        let Some(got) = buf.get(..read).filter(|got| !got.is_empty()) else {
            // Nothing is pending (reads wait for that), so the FIN follows
            // every byte read.
            SockRef::from(to).shutdown(Shutdown::Write)?;
            self.eof = true;
            return Ok(true);
        };
        let written = match to.try_write(got) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        self.account(written, counter);
        if let Some(rest) = got.get(written..).filter(|rest| !rest.is_empty()) {
            self.pending = rest.to_vec();
            self.offset = 0;
        }
        Ok(true)
    }

    /// Writes what is pending, as far as `to` takes it.
    fn flush(&mut self, to: &TcpStream, counter: &AtomicU64) -> io::Result<bool> {
        let rest = self.pending.get(self.offset..).unwrap_or_default();
        let written = match to.try_write(rest) {
            Ok(written) => written,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        self.account(written, counter);
        self.offset += written;
        if !self.holds_bytes() {
            // Freed, not kept: an idle pair holds no buffer.
            self.pending = Vec::new();
            self.offset = 0;
        }
        Ok(true)
    }
}

/// One read of `from` into `buf`. A short read drained the socket, so it
/// also drops the socket's read readiness, sparing the read that would only
/// find `EAGAIN`. The drop must be tied to the readiness seen before the
/// read: tokio clears it only if no edge came in since (its tick), so it is
/// answered inside the read's own `try_io`. A readiness dropped after the
/// read instead could swallow an edge raised by bytes that arrived in
/// between, and the relay would wait for them forever.
fn read_draining(from: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut short = None;
    let result = from.try_io(Interest::READABLE, || {
        let read = (&*SockRef::from(from)).read(buf)?;
        if read > 0 && read < buf.len() {
            short = Some(read);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(read)
    });
    match (result, short) {
        (Err(e), Some(read)) if e.kind() == io::ErrorKind::WouldBlock => Ok(read),
        (result, _) => result,
    }
}

/// Relays `pair` until it ends or `budget` is spent, then hands it over as
/// `taker` needs. Bytes written are added to `counters` (up, down) as they
/// go.
pub async fn relay(
    pair: Pair,
    (budget, taker): (RelayBudget, Taker),
    counters: (&AtomicU64, &AtomicU64),
    idle_timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Relayed {
    let (mut up, mut down) = (Flow::default(), Flow::default());
    let exit = pass_bytes(
        &pair,
        (&mut up, &mut down),
        (budget, taker),
        counters,
        idle_timeout,
        cancel,
    )
    .await;
    let bytes = ByteCount {
        up: up.moved,
        down: down.moved,
    };
    let Some(end) = exit else {
        let finished = Finished {
            up: up.eof,
            down: down.eof,
        };
        return Relayed::HandOver {
            pair,
            bytes,
            finished,
        };
    };
    if end == PairEnd::Reset {
        // Pass the abort on: the surviving peer must not mistake a broken
        // stream for a complete one.
        for socket in [&pair.client, &pair.backend] {
            if let Err(cause) = SockRef::from(socket).set_linger(Some(Duration::ZERO)) {
                tracing::debug!(%cause, "relay: cannot set SO_LINGER 0 before abort");
            }
        }
    }
    Relayed::Ended { bytes, end }
}

/// The relay's loop, on a borrowed pair: `None` when the pair is to be
/// handed over, else how it ended.
async fn pass_bytes(
    pair: &Pair,
    (up, down): (&mut Flow, &mut Flow),
    (budget, taker): (RelayBudget, Taker),
    counters: (&AtomicU64, &AtomicU64),
    idle_timeout: Option<Duration>,
    cancel: &CancellationToken,
) -> Option<PairEnd> {
    let start = Instant::now();
    // Both timers live for the whole relay, registered with tokio's timer
    // at most once each: a sleep made per loop pass would be registered and
    // removed again on every wake-up of every short connection.
    let hand_over = sleep_until(start + budget.time);
    // Checked lazily: on expiry it is pushed to the last activity plus the
    // timeout, so traffic never touches it. Never polled without a timeout.
    let idle_check = sleep_until(start + idle_timeout.unwrap_or_default());
    // Made once too: a new one per pass registers with the token's waiter
    // list under its lock, and leaves it again, on every pass.
    let cancelled = cancel.cancelled();
    let mut last_activity = start;
    let mut handing_over = budget.bytes == 0 || budget.time.is_zero();
    let (client, backend) = (&pair.client, &pair.backend);
    // A reset on a socket whose reading direction is finished, or not being
    // read, is seen by no read: watched directly, by one waiter per socket
    // for the whole relay (each pass would otherwise add and remove one).
    let client_error = client.ready(Interest::ERROR);
    let backend_error = backend.ready(Interest::ERROR);
    tokio::pin!(
        hand_over,
        idle_check,
        cancelled,
        client_error,
        backend_error
    );
    let end = loop {
        if up.eof && down.eof {
            break PairEnd::Closed;
        }
        handing_over |= up.moved + down.moved >= budget.bytes;
        if handing_over {
            // Settle: read on (without waiting for readiness, which may be
            // stale after the handshake) until no skb is left partly read.
            let whole_skbs = taker == Taker::WholeSkbs;
            let (mut unsettled, mut failed) = (false, None);
            for (flow, from, to, counter) in [
                (&mut *up, client, backend, counters.0),
                (&mut *down, backend, client, counters.1),
            ] {
                if !whole_skbs || flow.eof || flow.settled || flow.holds_bytes() {
                    continue;
                }
                match flow.settle(from, to, counter) {
                    Ok(_) => unsettled |= !flow.settled && !flow.eof && !flow.holds_bytes(),
                    Err(cause) => failed = Some(cause),
                }
            }
            if let Some(cause) = failed {
                tracing::debug!(%cause, "relay: pair reset");
                break PairEnd::Reset;
            }
            let done =
                |flow: &Flow| (!whole_skbs || flow.eof || flow.settled) && !flow.holds_bytes();
            if done(up) && done(down) {
                return None;
            }
            if unsettled {
                // More is queued right now: read it on the next pass, after
                // letting other tasks run.
                tokio::task::yield_now().await;
                continue;
            }
        }
        let reading = !handing_over;
        // Readiness is polled, not awaited through `readable()` and the like:
        // those add a waiter to the socket's list and remove it again on every
        // pass, where polling keeps this one task's waker in the socket's slot.
        let step = tokio::select! {
            ready = poll_fn(|cx| client.poll_read_ready(cx)), if reading && !up.eof && !up.holds_bytes() => {
                ready.and_then(|()| up.read_and_write(client, backend, counters.0))
            }
            ready = poll_fn(|cx| backend.poll_write_ready(cx)), if up.holds_bytes() => {
                ready.and_then(|()| up.flush(backend, counters.0))
            }
            ready = poll_fn(|cx| backend.poll_read_ready(cx)), if reading && !down.eof && !down.holds_bytes() => {
                ready.and_then(|()| down.read_and_write(backend, client, counters.1))
            }
            ready = poll_fn(|cx| client.poll_write_ready(cx)), if down.holds_bytes() => {
                ready.and_then(|()| down.flush(client, counters.1))
            }
            _ = &mut client_error => Err(io::ErrorKind::ConnectionReset.into()),
            _ = &mut backend_error => Err(io::ErrorKind::ConnectionReset.into()),
            () = &mut cancelled => break PairEnd::Cancelled,
            () = &mut hand_over, if !handing_over => {
                handing_over = true;
                Ok(false)
            }
            () = &mut idle_check, if idle_timeout.is_some() => match idle_timeout {
                Some(idle) if last_activity + idle > Instant::now() => {
                    idle_check.as_mut().reset(last_activity + idle);
                    Ok(false)
                }
                _ => break PairEnd::IdleTimeout,
            },
        };
        match step {
            Ok(true) => last_activity = Instant::now(),
            Ok(false) => {}
            Err(cause) => {
                tracing::debug!(%cause, "relay: pair reset");
                break PairEnd::Reset;
            }
        }
    };
    Some(end)
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
        time::timeout,
    };

    use super::*;
    use crate::forward::{BackendEngine, BackendSlot, testing::loopback_sockets};

    const LIMIT: Duration = Duration::from_secs(10);

    /// client <-> [pair.client | pair.backend] <-> server over loopback.
    async fn rig() -> (TcpStream, Pair, TcpStream) {
        let (client, accepted, connected, server) = loopback_sockets().await;
        let pair = Pair {
            client: accepted,
            backend: connected,
            slot: BackendSlot(0),
            engine: BackendEngine::Auto,
        };
        (client, pair, server)
    }

    fn budget(bytes: u64, millis: u64) -> RelayBudget {
        RelayBudget {
            bytes,
            time: Duration::from_millis(millis),
        }
    }

    async fn run(pair: Pair, budget: RelayBudget, counters: &[AtomicU64; 2]) -> Relayed {
        let cancel = CancellationToken::new();
        let relayed = relay(
            pair,
            (budget, Taker::WholeSkbs),
            (&counters[0], &counters[1]),
            None,
            &cancel,
        );
        timeout(LIMIT, relayed).await.expect("relay returns")
    }

    #[tokio::test]
    async fn a_pair_that_ends_within_the_budget_is_relayed_to_its_end() {
        let (mut client, pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let peers = async {
            client.write_all(b"request").await.expect("write");
            client.shutdown().await.expect("fin");
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"request");
            server.write_all(b"answer!").await.expect("write");
            server.shutdown().await.expect("fin");
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"answer!");
        };
        let (relayed, ()) = tokio::join!(run(pair, budget(1 << 20, 10_000), &counters), peers);
        let Relayed::Ended { bytes, end } = relayed else {
            panic!("handed over: {relayed:?}");
        };
        assert_eq!(end, PairEnd::Closed);
        assert_eq!(bytes, ByteCount { up: 7, down: 7 });
        let counted = counters.each_ref().map(|c| c.load(Ordering::Relaxed));
        assert_eq!(counted, [7, 7]);
    }

    /// After a short read the relay drops the socket's readiness instead of
    /// reading once more; every later message must still wake it, also when
    /// it lands between that read and the drop (two workers: the peers run
    /// beside the relay). 2,000 lockstep rounds and a burst of messages
    /// written back to back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_after_a_short_read_are_all_relayed() {
        let (mut client, pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let peers = async {
            let mut got = [0u8; 64];
            for round in 0..2000u32 {
                let message = [(round % 251) as u8; 64];
                client.write_all(&message).await.expect("write");
                server.read_exact(&mut got).await.expect("server read");
                server.write_all(&got).await.expect("echo");
                client.read_exact(&mut got).await.expect("client read");
                assert_eq!(got, message, "round {round}");
            }
            for burst in 0..200u32 {
                client.write_all(&burst.to_be_bytes()).await.expect("burst");
            }
            client.shutdown().await.expect("fin");
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.expect("read burst");
            let expected: Vec<u8> = (0..200u32).flat_map(u32::to_be_bytes).collect();
            assert_eq!(rest, expected);
            server.shutdown().await.expect("fin");
        };
        let (relayed, ()) = tokio::join!(run(pair, budget(1 << 30, 60_000), &counters), peers);
        let Relayed::Ended { bytes, end } = relayed else {
            panic!("handed over: {relayed:?}");
        };
        assert_eq!(end, PairEnd::Closed);
        assert_eq!(
            bytes,
            ByteCount {
                up: 2000 * 64 + 800,
                down: 2000 * 64
            }
        );
    }

    #[tokio::test]
    async fn past_its_bytes_a_pair_is_handed_over_with_every_byte_either_delivered_or_queued() {
        let (mut client, pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        client.write_all(&[1; 100]).await.expect("write");
        let relayed = run(pair, budget(10, 10_000), &counters).await;
        let Relayed::HandOver {
            mut pair,
            bytes,
            finished,
        } = relayed
        else {
            panic!("not handed over: {relayed:?}");
        };
        assert_eq!(finished, Finished::default());
        assert_eq!(bytes.down, 0);
        // What the relay took is at the server; what came after waits in
        // the proxy socket's receive queue for the engine.
        client.write_all(&[2; 50]).await.expect("write");
        let mut delivered = vec![0; usize::try_from(bytes.up).expect("small")];
        server.read_exact(&mut delivered).await.expect("read");
        let mut queued = vec![0; 150 - delivered.len()];
        pair.client.read_exact(&mut queued).await.expect("read");
        let stream: Vec<u8> = delivered.into_iter().chain(queued).collect();
        let expected: Vec<u8> = [[1u8; 100].as_slice(), &[2; 50]].concat();
        assert_eq!(stream, expected);
    }

    #[tokio::test]
    async fn with_a_zero_budget_only_the_rest_of_a_partly_read_segment_is_relayed() {
        let (mut client, mut pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let segment: Vec<u8> = (0..100).collect();
        client.write_all(&segment).await.expect("write");
        // The handshake's exact read: the first 10 bytes of the segment.
        let mut request = [0; 10];
        pair.client.read_exact(&mut request).await.expect("read");
        let relayed = run(pair, budget(0, 0), &counters).await;
        let Relayed::HandOver { bytes, .. } = relayed else {
            panic!("not handed over: {relayed:?}");
        };
        assert_eq!(bytes, ByteCount { up: 90, down: 0 });
        let mut got = [0; 90];
        server.read_exact(&mut got).await.expect("read");
        assert_eq!(got.as_slice(), &segment[10..]);
    }

    #[tokio::test]
    async fn a_pair_silent_for_the_idle_timeout_ends_in_the_relay_and_traffic_postpones_it() {
        let (mut client, pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let cancel = CancellationToken::new();
        let started = Instant::now();
        let idle = Some(Duration::from_millis(100));
        let relaying = relay(
            pair,
            (budget(1 << 20, 10_000), Taker::WholeSkbs),
            (&counters[0], &counters[1]),
            idle,
            &cancel,
        );
        let traffic = async {
            tokio::time::sleep(Duration::from_millis(60)).await;
            client.write_all(b"x").await.expect("write");
            let mut byte = [0];
            server.read_exact(&mut byte).await.expect("relayed");
        };
        let (relayed, ()) = tokio::join!(timeout(LIMIT, relaying), traffic);
        let relayed = relayed.expect("relay returns");
        assert!(
            matches!(
                relayed,
                Relayed::Ended {
                    end: PairEnd::IdleTimeout,
                    ..
                }
            ),
            "{relayed:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(160),
            "ended {:?} after the start, before the timeout from the last byte",
            started.elapsed()
        );
    }

    /// A client that keeps a wide window full (a bulk upload) never lets a
    /// 16 KiB read come back short: the hand-over must still come within a
    /// few windows of bytes, not at the end of the upload (where it came
    /// before the settle read the whole queue at once: 64 MiB of 64).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_that_keeps_a_wide_window_full_is_handed_over_within_a_few_windows() {
        // The window is 8 MiB (the kernel doubles SO_RCVBUF); the settle
        // reads what is queued and what arrives during that read.
        let carried = wide_window_upload(Taker::WholeSkbs).await;
        assert!(
            carried < WIDE_UPLOAD / 4,
            "the relay carried {carried} of the {WIDE_UPLOAD} bytes before handing over"
        );
    }

    /// Splice reads on from any offset: the relay hands over once it has
    /// written what it read, with no settle (under a window's worth).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn for_splice_the_relay_hands_over_without_settling() {
        let carried = wide_window_upload(Taker::AnyOffset).await;
        assert!(
            carried < 1 << 20,
            "the relay carried {carried} bytes before handing over to splice"
        );
    }

    const WIDE_UPLOAD: u64 = 64 << 20;

    /// Bytes up the relay carried before handing over a pair whose client
    /// keeps an 8 MiB window full.
    async fn wide_window_upload(taker: Taker) -> u64 {
        const UPLOAD: usize = WIDE_UPLOAD as usize;
        // A window of several MiB (autotuning grows one on a fast path) lets
        // the client keep the queue full while the relay reads.
        let listening = tokio::net::TcpSocket::new_v4().expect("socket");
        listening.set_recv_buffer_size(4 << 20).expect("SO_RCVBUF");
        listening
            .bind("127.0.0.1:0".parse().expect("address"))
            .expect("bind");
        let listener = listening.listen(1).expect("listen");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_send_buffer_size(4 << 20).expect("SO_SNDBUF");
        let (connected, accepted) = tokio::join!(
            socket.connect(listener.local_addr().expect("addr")),
            listener.accept()
        );
        let mut client = connected.expect("connect");
        let (accepted, _) = accepted.expect("accept");
        let (_, _, backend, mut server) = loopback_sockets().await;
        let pair = Pair {
            client: accepted,
            backend,
            slot: BackendSlot(0),
            engine: BackendEngine::Auto,
        };
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let writer = tokio::spawn(async move {
            let chunk = vec![0x5a; 64 * 1024];
            for _ in 0..UPLOAD / chunk.len() {
                if client.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            client
        });
        let reader = tokio::spawn(async move {
            let mut buf = vec![0; 16 * 1024];
            while server.read(&mut buf).await.is_ok_and(|read| read > 0) {}
        });
        // As behind a `redirect` listener, the client has been sending
        // since its connect, while the daemon talked to the backend: its
        // queue is full when the relay starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // The daemon's default budget.
        let cancel = CancellationToken::new();
        let relaying = relay(
            pair,
            (budget(64 * 1024, 10_000), taker),
            (&counters[0], &counters[1]),
            None,
            &cancel,
        );
        let relayed = timeout(LIMIT, relaying).await.expect("relay returns");
        writer.abort();
        reader.abort();
        let Relayed::HandOver { bytes, .. } = relayed else {
            panic!("not handed over: {relayed:?}");
        };
        bytes.up
    }

    #[tokio::test]
    async fn a_quiet_pair_is_handed_over_when_its_time_is_up() {
        let (_client, pair, _server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let started = Instant::now();
        let relayed = run(pair, budget(1 << 20, 50), &counters).await;
        assert!(
            matches!(relayed, Relayed::HandOver { bytes, .. } if bytes == ByteCount::default()),
            "{relayed:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_half_closed_pair_is_handed_over_with_its_finished_direction_named() {
        let (mut client, pair, mut server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let peers = async {
            client.write_all(b"get").await.expect("write");
            client.shutdown().await.expect("fin");
            let mut got = Vec::new();
            server
                .read_to_end(&mut got)
                .await
                .expect("the FIN is passed on");
            assert_eq!(got, b"get");
            server.write_all(&[7; 4096]).await.expect("write");
        };
        let (relayed, ()) = tokio::join!(run(pair, budget(1024, 10_000), &counters), peers);
        let Relayed::HandOver {
            bytes, finished, ..
        } = relayed
        else {
            panic!("not handed over: {relayed:?}");
        };
        assert_eq!(
            finished,
            Finished {
                up: true,
                down: false
            }
        );
        assert_eq!(bytes.up, 3);
        assert!(bytes.down >= 1024, "{bytes:?}");
    }

    #[tokio::test]
    async fn bytes_a_slow_peer_cannot_take_are_held_and_written_before_the_hand_over() {
        const TOTAL: usize = 32 << 20;
        let (client, pair, mut server) = rig().await;
        // Small buffers on the slow side, so the relay's writes stall early.
        SockRef::from(&server)
            .set_recv_buffer_size(64 << 10)
            .expect("SO_RCVBUF");
        SockRef::from(&pair.backend)
            .set_send_buffer_size(64 << 10)
            .expect("SO_SNDBUF");
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let sending = tokio::spawn(async move {
            let mut client = client;
            // Stalls on a full window: nobody reads all of it.
            let _ = client.write_all(&data).await;
            client
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The server reads only after the relay's time is up, so the relay
        // sits on bytes it could not write when it decides to hand over.
        let started = Instant::now();
        let relayed = run(pair, budget(u64::MAX, 50), &counters);
        let reader = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut got = vec![0u8; 1 << 20];
            let (mut total, mut first_wrong) = (0usize, None);
            // The relay reads nothing more once it decides, so the stream
            // at the server stops where the relay's count does.
            while first_wrong.is_none() {
                let n = timeout(Duration::from_millis(500), server.read(&mut got))
                    .await
                    .map_or(0, |read| read.expect("read"));
                if n == 0 {
                    break;
                }
                first_wrong = got[..n]
                    .iter()
                    .enumerate()
                    .position(|(i, b)| *b != ((total + i) % 251) as u8);
                total += n;
            }
            (total, first_wrong)
        };
        let ((relayed, handed_over_after), (received, first_wrong)) =
            tokio::join!(async { (relayed.await, started.elapsed()) }, reader);
        let Relayed::HandOver { bytes, .. } = relayed else {
            panic!("not handed over: {relayed:?}");
        };
        assert_eq!(first_wrong, None, "relayed bytes out of order");
        assert!(bytes.up > 0);
        assert_eq!(
            received as u64, bytes.up,
            "every byte counted was delivered"
        );
        assert!(
            handed_over_after >= Duration::from_millis(250),
            "handed over after {handed_over_after:?}, before the slow peer took the held bytes"
        );
        sending.abort();
    }

    #[tokio::test]
    async fn a_reset_ends_the_relay_and_resets_the_other_side() {
        let (mut client, pair, server) = rig().await;
        let counters = [AtomicU64::new(0), AtomicU64::new(0)];
        SockRef::from(&server)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(server);
        let relayed = run(pair, budget(1 << 20, 10_000), &counters).await;
        assert!(
            matches!(
                relayed,
                Relayed::Ended {
                    end: PairEnd::Reset,
                    ..
                }
            ),
            "{relayed:?}"
        );
        let mut byte = [0];
        let read = timeout(LIMIT, client.read(&mut byte)).await.expect("read");
        assert!(
            matches!(&read, Err(e) if e.kind() == io::ErrorKind::ConnectionReset),
            "{read:?}"
        );
    }
}
