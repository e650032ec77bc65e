//! Sockmap-specific proof over real loopback TCP, as root: the kernel carries
//! every byte (user space reads none), half-close and resets propagate, no
//! byte is lost at close, and the maps are empty once every pair ended.
//!
//! Topology of one pair: test client -> `client_inner` | engine |
//! `backend_inner` -> test server, all four sockets real TCP on 127.0.0.1.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use balancer::{
    bpf::{Bpf, SocketMap},
    forward::{
        BackendEngine, BackendSlot, EngineName, ForwardOptions, Pair, PairEnd, PairSummary,
        sockmap::SockmapEngine,
    },
    sys::socket,
};
use balancer_common::{NO_SLOT, PeerInfo, QUEUE_CHECK_BYTES, direction};
use rand::{RngCore, SeedableRng, rngs::StdRng};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIMEOUT: Duration = Duration::from_secs(120);

/// A bpffs directory for one engine's pins, removed even on panic.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/balancer-sockmap-test-{}-{n}",
            std::process::id()
        )))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.0) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

struct Rig {
    engine: Arc<SockmapEngine>,
    _pins: PinDir,
}

async fn rig(options: ForwardOptions) -> Rig {
    assert!(
        nix::unistd::geteuid().is_root(),
        "sockmap tests need root (CAP_BPF, CAP_NET_ADMIN)"
    );
    let pins = PinDir::new();
    let options = ForwardOptions {
        pin_dir: Some(pins.0.clone()),
        ..options
    };
    let engine = SockmapEngine::open(options)
        .await
        .expect("open the sockmap engine (load, attach, self-test)");
    Rig {
        engine: Arc::new(engine),
        _pins: pins,
    }
}

/// The four sockets of a pair before the engine takes the inner two.
struct Sockets {
    client: TcpStream,
    client_inner: TcpStream,
    backend_inner: TcpStream,
    server: TcpStream,
}

async fn sockets() -> Sockets {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = TcpStream::connect(addr).await.expect("connect client");
    let (client_inner, _) = listener.accept().await.expect("accept client");
    let backend_inner = TcpStream::connect(addr).await.expect("connect backend");
    let (server, _) = listener.accept().await.expect("accept backend");
    Sockets {
        client,
        client_inner,
        backend_inner,
        server,
    }
}

struct Running {
    client: TcpStream,
    server: TcpStream,
    /// Duplicates of the inner sockets, to read their TCP_INFO while live.
    client_inner: OwnedFd,
    backend_inner: OwnedFd,
    cancel: CancellationToken,
    forward: JoinHandle<PairSummary>,
}

fn spawn_forward(engine: &Arc<SockmapEngine>, s: Sockets, slot: u32) -> Running {
    let client_inner = nix::unistd::dup(s.client_inner.as_fd()).expect("dup");
    let backend_inner = nix::unistd::dup(s.backend_inner.as_fd()).expect("dup");
    let cancel = CancellationToken::new();
    let engine = Arc::clone(engine);
    let token = cancel.clone();
    let pair = Pair {
        client: s.client_inner,
        backend: s.backend_inner,
        slot: BackendSlot(slot),
        engine: BackendEngine::Auto,
    };
    let forward = tokio::spawn(async move { engine.forward(pair, &token).await.expect("forward") });
    Running {
        client: s.client,
        server: s.server,
        client_inner,
        backend_inner,
        cancel,
        forward,
    }
}

/// Waits until the engine has put `pairs` pairs into SOCKETS, so that a
/// test's FIN or RST reaches a spliced socket (a socket that half-closes
/// before that is not ESTABLISHED and goes to the fallback engine).
async fn wait_spliced(engine: &SockmapEngine, pairs: usize) {
    eventually(Duration::from_secs(5), "pair spliced", || {
        engine.map_entries().expect("entries").sockets >= 2 * pairs
    })
    .await;
}

/// Writes `len` seeded random bytes and returns their SHA-256.
async fn send_random(stream: &mut (impl AsyncWriteExt + Unpin), len: u64, seed: u64) -> [u8; 32] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let n = usize::try_from(left.min(buf.len() as u64)).expect("chunk");
        let chunk = &mut buf[..n];
        rng.fill_bytes(chunk);
        hash.update(&*chunk);
        stream.write_all(chunk).await.expect("write");
        left -= n as u64;
    }
    hash.finalize().into()
}

/// Polls `ready` every millisecond for up to `limit`.
async fn eventually(limit: Duration, what: &str, ready: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !ready() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads exactly `len` bytes and returns their SHA-256.
async fn recv_hash(stream: &mut (impl AsyncReadExt + Unpin), len: u64) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).expect("chunk");
        let n = stream.read(&mut buf[..want]).await.expect("read");
        assert!(n > 0, "EOF with {left} bytes missing");
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    hash.finalize().into()
}

async fn expect_eof(stream: &mut (impl AsyncReadExt + Unpin)) {
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
        .await
        .expect("EOF in time")
        .expect("read");
    assert_eq!(n, 0, "expected EOF, got {n} bytes");
}

/// Everything until EOF, which must come within [`TIMEOUT`].
async fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut got))
        .await
        .expect("EOF in time")
        .expect("read");
    got
}

/// The summary of a forwarding task, which must end within `limit`.
async fn ended(forward: JoinHandle<PairSummary>, limit: Duration) -> PairSummary {
    tokio::time::timeout(limit, forward)
        .await
        .expect("pair ends in time")
        .expect("join")
}

async fn finish(mut run: Running) -> PairSummary {
    run.client.shutdown().await.expect("client shutdown");
    run.server.shutdown().await.expect("server shutdown");
    expect_eof(&mut run.client).await;
    expect_eof(&mut run.server).await;
    drop((run.client_inner, run.backend_inner));
    let summary = ended(run.forward, TIMEOUT).await;
    drop(run.cancel);
    summary
}

fn assert_maps_empty(engine: &SockmapEngine) {
    let entries = engine.map_entries().expect("map entries");
    assert_eq!(
        (entries.peers, entries.sockets, entries.targets),
        (0, 0, 0),
        "PEERS/SOCKETS/TARGETS not empty after every pair ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_fifty_six_mib_each_way_at_once_arrive_intact_and_are_counted_per_backend() {
    let rig = rig(ForwardOptions {
        socket_buffer: Some(4 << 20),
        ..ForwardOptions::default()
    })
    .await;
    let len = 256 * MIB;
    let mut run = spawn_forward(&rig.engine, sockets().await, 7);
    let (mut client_rd, mut client_wr) = run.client.split();
    let (mut server_rd, mut server_wr) = run.server.split();
    let (up_sent, down_sent, up_got, down_got) = tokio::time::timeout(TIMEOUT, async {
        tokio::join!(
            send_random(&mut client_wr, len, 1),
            send_random(&mut server_wr, len, 2),
            recv_hash(&mut server_rd, len),
            recv_hash(&mut client_rd, len),
        )
    })
    .await
    .expect("transfer in time");
    assert_eq!(up_sent, up_got, "client -> server bytes differ");
    assert_eq!(down_sent, down_got, "server -> client bytes differ");
    let summary = finish(run).await;
    assert_eq!(summary.end, PairEnd::Closed);
    assert_eq!((summary.bytes.up, summary.bytes.down), (len, len));
    let counted = rig.engine.backend_bytes(BackendSlot(7));
    assert_eq!((counted.up, counted.down), (len, len), "BACKEND_BYTES");
    assert_maps_empty(&rig.engine);
    // A freed slot starts its next backend at zero; other slots keep theirs.
    let other = rig.engine.backend_bytes(BackendSlot(8));
    rig.engine.clear_slot(BackendSlot(7));
    let cleared = rig.engine.backend_bytes(BackendSlot(7));
    assert_eq!((cleared.up, cleared.down), (0, 0), "cleared slot");
    assert_eq!(rig.engine.backend_bytes(BackendSlot(8)), other);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_verdict_counts_every_skb_it_redirects_per_backend_and_direction() {
    const ROUNDS: u64 = 200;
    const UP: usize = 100;
    const DOWN: usize = 300;
    let rig = rig(ForwardOptions::default()).await;
    let slot = BackendSlot(11);
    let mut run = spawn_forward(&rig.engine, sockets().await, slot.0);
    wait_spliced(&rig.engine, 1).await;
    run.client.set_nodelay(true).expect("nodelay");
    run.server.set_nodelay(true).expect("nodelay");
    // Lockstep: each message is alone in flight, so it reaches the
    // verdict as one skb of its own.
    tokio::time::timeout(TIMEOUT, async {
        let (mut up, mut down) = ([0u8; UP], [0u8; DOWN]);
        for round in 0..ROUNDS {
            let byte = u8::try_from(round % 251).expect("byte");
            run.client.write_all(&[byte; UP]).await.expect("write up");
            run.server.read_exact(&mut up).await.expect("read up");
            assert_eq!(up, [byte; UP], "round {round} up");
            run.server
                .write_all(&[byte; DOWN])
                .await
                .expect("write down");
            run.client.read_exact(&mut down).await.expect("read down");
            assert_eq!(down, [byte; DOWN], "round {round} down");
        }
    })
    .await
    .expect("lockstep in time");
    let lockstep = rig.engine.redirected(slot);
    assert_eq!(
        (lockstep.up, lockstep.down),
        (ROUNDS * UP as u64, ROUNDS * DOWN as u64),
        "bytes: {lockstep:?}"
    );
    assert_eq!(
        (lockstep.up_skbs, lockstep.down_skbs),
        (ROUNDS, ROUNDS),
        "one skb per message: {lockstep:?}"
    );
    // A bulk download in large writes comes in far fewer, larger skbs,
    // which is what the count is for (loopback: up to 64 KiB each).
    let bulk = 16 * MIB;
    let (mut client_rd, _client_wr) = run.client.split();
    let (_server_rd, mut server_wr) = run.server.split();
    let (sent, got) = tokio::time::timeout(TIMEOUT, async {
        tokio::join!(
            send_random(&mut server_wr, bulk, 11),
            recv_hash(&mut client_rd, bulk)
        )
    })
    .await
    .expect("bulk in time");
    assert_eq!(sent, got, "bulk bytes differ");
    let after = rig.engine.redirected(slot);
    let skbs = after.down_skbs - lockstep.down_skbs;
    assert_eq!(after.down - lockstep.down, bulk, "{after:?}");
    assert!(
        skbs > 0 && bulk / skbs > 4096,
        "16 MiB down in {skbs} skbs: {} bytes each",
        bulk / skbs.max(1)
    );
    assert_eq!(after.up_skbs, ROUNDS, "nothing went up: {after:?}");
    let summary = finish(run).await;
    assert_eq!(summary.end, PairEnd::Closed);
    // The FIN's empty skb is dropped, not counted.
    assert_eq!(rig.engine.redirected(slot), after);
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_from_both_sides_arrives_first_and_in_order() {
    let rig = rig(ForwardOptions::default()).await;
    let mut s = sockets().await;
    s.client
        .write_all(b"early-from-client;")
        .await
        .expect("write");
    s.server
        .write_all(b"early-from-server;")
        .await
        .expect("write");
    // Let the bytes land in the inner sockets' receive queues first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while socket::inq(&s.client_inner).expect("inq") < 18
        || socket::inq(&s.backend_inner).expect("inq") < 18
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "early bytes never queued"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut run = spawn_forward(&rig.engine, s, 1);
    run.client.write_all(b"then-more").await.expect("write");
    run.server.write_all(b"then-more").await.expect("write");
    let mut buf = [0u8; 27];
    run.server.read_exact(&mut buf).await.expect("read up");
    assert_eq!(&buf, b"early-from-client;then-more");
    run.client.read_exact(&mut buf).await.expect("read down");
    assert_eq!(&buf, b"early-from-server;then-more");
    let summary = finish(run).await;
    assert_eq!(
        (summary.end, summary.bytes.up, summary.bytes.down),
        (PairEnd::Closed, 27, 27)
    );
    assert_maps_empty(&rig.engine);
}

async fn half_close(client_first: bool) {
    let rig = rig(ForwardOptions::default()).await;
    let mut run = spawn_forward(&rig.engine, sockets().await, 2);
    wait_spliced(&rig.engine, 1).await;
    let (first, second) = if client_first {
        (&mut run.client, &mut run.server)
    } else {
        (&mut run.server, &mut run.client)
    };
    first.write_all(b"before-fin").await.expect("write");
    first.shutdown().await.expect("shutdown");
    let mut buf = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), second.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"before-fin");
    expect_eof(second).await;
    // The other direction still works after the half-close.
    second
        .write_all(b"data-after-half-close")
        .await
        .expect("write after");
    let mut buf = [0u8; 21];
    tokio::time::timeout(Duration::from_secs(10), first.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read after");
    assert_eq!(&buf, b"data-after-half-close");
    second.shutdown().await.expect("shutdown");
    expect_eof(first).await;
    drop((run.client_inner, run.backend_inner));
    let summary = ended(run.forward, TIMEOUT).await;
    assert_eq!(summary.end, PairEnd::Closed);
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_by_the_client_propagates_and_data_still_flows_back() {
    half_close(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_by_the_server_propagates_and_data_still_flows_up() {
    half_close(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_mib_then_an_immediate_close_loses_nothing() {
    let rig = rig(ForwardOptions::default()).await;
    let len = 64 * MIB;
    let run = spawn_forward(&rig.engine, sockets().await, 3);
    wait_spliced(&rig.engine, 1).await;
    let Running {
        mut client,
        mut server,
        client_inner,
        backend_inner,
        forward,
        ..
    } = run;
    drop((client_inner, backend_inner));
    let sender = tokio::spawn(async move {
        let hash = send_random(&mut client, len, 3).await;
        drop(client);
        hash
    });
    let got = tokio::time::timeout(TIMEOUT, recv_hash(&mut server, len))
        .await
        .expect("in time");
    expect_eof(&mut server).await;
    assert_eq!(sender.await.expect("sender"), got);
    server.shutdown().await.expect("shutdown");
    let summary = ended(forward, TIMEOUT).await;
    assert_eq!(summary.bytes.up, len);
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_one_side_closes_the_other_within_a_second() {
    let rig = rig(ForwardOptions::default()).await;
    let run = spawn_forward(&rig.engine, sockets().await, 4);
    wait_spliced(&rig.engine, 1).await;
    let Running {
        mut client,
        mut server,
        client_inner,
        backend_inner,
        forward,
        ..
    } = run;
    drop((client_inner, backend_inner));
    client.write_all(b"x").await.expect("write");
    let mut one = [0u8; 1];
    server.read_exact(&mut one).await.expect("read");
    let server = server.into_std().expect("std");
    // SO_LINGER 0 then close: the server sends RST.
    socket::set_abortive_close(&server).expect("linger 0");
    let started = tokio::time::Instant::now();
    drop(server);
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(1), client.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "client not closed within 1 s: {closed:?}"
    );
    assert!(started.elapsed() <= Duration::from_secs(1));
    let summary = ended(forward, Duration::from_secs(5)).await;
    assert_eq!(summary.end, PairEnd::Reset);
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_pair_is_closed_after_the_idle_timeout() {
    let idle = Duration::from_millis(400);
    let rig = rig(ForwardOptions {
        idle_timeout: Some(idle),
        ..ForwardOptions::default()
    })
    .await;
    let run = spawn_forward(&rig.engine, sockets().await, 5);
    wait_spliced(&rig.engine, 1).await;
    let Running {
        mut client,
        mut server,
        client_inner,
        backend_inner,
        forward,
        ..
    } = run;
    drop((client_inner, backend_inner));
    // Activity keeps it open past one timeout period.
    for _ in 0..4 {
        client.write_all(b"tick").await.expect("write");
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.expect("read");
        tokio::time::sleep(idle / 4).await;
    }
    let started = tokio::time::Instant::now();
    let summary = ended(forward, Duration::from_secs(5)).await;
    assert_eq!(summary.end, PairEnd::IdleTimeout);
    assert!(
        started.elapsed() >= idle / 2,
        "closed too early: {:?}",
        started.elapsed()
    );
    expect_eof(&mut client).await;
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_closes_the_pair() {
    let rig = rig(ForwardOptions::default()).await;
    let run = spawn_forward(&rig.engine, sockets().await, 6);
    wait_spliced(&rig.engine, 1).await;
    let Running {
        mut client,
        client_inner,
        backend_inner,
        forward,
        cancel,
        ..
    } = run;
    drop((client_inner, backend_inner));
    cancel.cancel();
    let summary = ended(forward, Duration::from_secs(5)).await;
    assert_eq!(summary.end, PairEnd::Cancelled);
    expect_eof(&mut client).await;
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_space_reads_no_payload_every_received_byte_went_through_the_verdict() {
    let rig = rig(ForwardOptions::default()).await;
    let up = 3 * MIB + 17;
    let down = 5 * MIB + 3;
    let mut s = sockets().await;
    // Some bytes wait in the queue before the splice (the kick must take them).
    s.client.write_all(&[9u8; 1000]).await.expect("early");
    let client_cookie = socket::cookie(&s.client_inner).expect("cookie");
    let backend_cookie = socket::cookie(&s.backend_inner).expect("cookie");
    let mut run = spawn_forward(&rig.engine, s, 8);
    let (mut client_rd, mut client_wr) = run.client.split();
    let (mut server_rd, mut server_wr) = run.server.split();
    let (up_sent, down_sent, up_got, down_got) = tokio::join!(
        send_random(&mut client_wr, up - 1000, 4),
        send_random(&mut server_wr, down, 5),
        recv_hash(&mut server_rd, up),
        recv_hash(&mut client_rd, down),
    );
    assert_ne!(
        up_sent, up_got,
        "sanity: the early bytes are part of what arrived"
    );
    assert_eq!(down_sent, down_got);
    for (fd, cookie, wrote) in [
        (&run.client_inner, client_cookie, up),
        (&run.backend_inner, backend_cookie, down),
    ] {
        let received = socket::tcp_bytes(fd).expect("tcp_info").received;
        assert_eq!(
            received, wrote,
            "tcpi_bytes_received == bytes the test wrote + 0"
        );
        let info = rig
            .engine
            .peer_info(cookie)
            .expect("peers")
            .expect("entry while live");
        assert_eq!(
            info.redirected_bytes, received,
            "every received byte went through the verdict"
        );
        assert_eq!(info.dropped_bytes, 0);
        assert_eq!(socket::inq(fd).expect("inq"), 0, "nothing left unread");
    }
    let summary = finish(run).await;
    assert_eq!((summary.bytes.up, summary.bytes.down), (up, down));
    assert_maps_empty(&rig.engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_pairs_keep_their_checksums() {
    let rig = rig(ForwardOptions::default()).await;
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let run = spawn_forward(&rig.engine, sockets().await, 100);
        tasks.push(tokio::spawn(async move {
            let mut run = run;
            let len = 64 * 1024 + i * 997;
            let (mut client_rd, mut client_wr) = run.client.split();
            let (mut server_rd, mut server_wr) = run.server.split();
            let (a, b, c, d) = tokio::join!(
                send_random(&mut client_wr, len, 1000 + i),
                send_random(&mut server_wr, len, 2000 + i),
                recv_hash(&mut server_rd, len),
                recv_hash(&mut client_rd, len),
            );
            assert_eq!((a, b), (c, d), "pair {i} corrupted");
            let summary = finish(run).await;
            assert_eq!(
                (summary.end, summary.bytes.up, summary.bytes.down),
                (PairEnd::Closed, len, len)
            );
            len
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += tokio::time::timeout(TIMEOUT, task)
            .await
            .expect("pair in time")
            .expect("pair ok");
    }
    let counted = rig.engine.backend_bytes(BackendSlot(100));
    assert_eq!((counted.up, counted.down), (total, total));
    assert_maps_empty(&rig.engine);
}

/// The kernel behaviour the engine's insert order rests on, checked on the
/// maps directly. A FIN makes `tcp_data_ready` run the verdict even under a
/// huge `SO_RCVLOWAT`, so a socket's verdict can run the moment it joins
/// `SOCKETS`, before its peer does: the peer must already be in `TARGETS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verdict_that_runs_before_its_peer_is_spliced_delivers_to_a_peer_already_in_targets() {
    assert!(nix::unistd::geteuid().is_root(), "needs root (CAP_BPF)");
    let bpf = Bpf::load(None, false).expect("load the BPF object");
    for peer_is_target in [true, false] {
        let mut s = sockets().await;
        let client_cookie = socket::cookie(&s.client_inner).expect("cookie");
        let backend_cookie = socket::cookie(&s.backend_inner).expect("cookie");
        let peer = |peer_cookie, direction| PeerInfo {
            peer_cookie,
            slot: NO_SLOT,
            direction,
            ..PeerInfo::default()
        };
        bpf.set_peer(client_cookie, peer(backend_cookie, direction::UP))
            .expect("PEERS");
        bpf.set_peer(backend_cookie, peer(client_cookie, direction::DOWN))
            .expect("PEERS");
        socket::set_rcvlowat(&s.backend_inner, i32::MAX).expect("SO_RCVLOWAT");
        if peer_is_target {
            bpf.insert_socket(SocketMap::Targets, client_cookie, s.client_inner.as_fd())
                .expect("TARGETS");
        }
        bpf.insert_socket(SocketMap::Targets, backend_cookie, s.backend_inner.as_fd())
            .expect("TARGETS");
        bpf.insert_socket(SocketMap::Sockets, backend_cookie, s.backend_inner.as_fd())
            .expect("SOCKETS");
        // The client socket is not in SOCKETS: the instant between the
        // engine's two inserts, held open.
        s.server.write_all(b"answer").await.expect("write");
        s.server.shutdown().await.expect("FIN");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let info = loop {
            let info = bpf.peer(backend_cookie).expect("PEERS").expect("entry");
            if info.redirected_bytes + info.dropped_bytes == 6 {
                break info;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the verdict never ran on data + FIN under SO_RCVLOWAT (peer is target: {peer_is_target}): {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        if peer_is_target {
            assert_eq!((info.redirected_bytes, info.dropped_bytes), (6, 0));
            let mut got = [0u8; 6];
            tokio::time::timeout(Duration::from_secs(5), s.client.read_exact(&mut got))
                .await
                .expect("redirected bytes arrive in time")
                .expect("read");
            assert_eq!(&got, b"answer");
        } else {
            assert_eq!(
                (info.redirected_bytes, info.dropped_bytes),
                (0, 6),
                "with its peer in no sockhash the verdict drops what it read"
            );
        }
        for cookie in [client_cookie, backend_cookie] {
            bpf.remove_peer(cookie).expect("remove PEERS");
        }
    }
    // Closed sockets leave both sockhashes by themselves.
    let entries = bpf.entries().expect("entries");
    assert_eq!((entries.peers, entries.sockets, entries.targets), (0, 0, 0));
}

/// A socket that is no longer established when the engine takes it (its
/// peer half-closed first) is refused by the sockhashes before any verdict
/// runs, so the pair goes whole to the splice fallback: the queued bytes,
/// the half-close and the answer all arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_whose_client_half_closed_before_the_splice_is_carried_by_the_fallback() {
    let rig = rig(ForwardOptions::default()).await;
    let mut s = sockets().await;
    s.client.write_all(b"request").await.expect("write");
    s.client.shutdown().await.expect("FIN");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !s
        .client_inner
        .ready(Interest::READABLE)
        .await
        .expect("readiness")
        .is_read_closed()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the FIN never reached the proxy's socket"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let mut run = spawn_forward(&rig.engine, s, 9);
    assert_eq!(read_to_eof(&mut run.server).await, b"request");
    run.server.write_all(b"answer").await.expect("write");
    run.server.shutdown().await.expect("FIN");
    assert_eq!(read_to_eof(&mut run.client).await, b"answer");
    drop((run.client_inner, run.backend_inner));
    let summary = ended(run.forward, TIMEOUT).await;
    assert_eq!(summary.engine, EngineName::Splice);
    assert_eq!(summary.end, PairEnd::Closed);
    assert_eq!((summary.bytes.up, summary.bytes.down), (7, 6));
    assert_maps_empty(&rig.engine);
}

/// Writes seeded random bytes in 64 KiB chunks until `max` bytes are
/// written, counting them in `written`; returns the bytes' SHA-256.
async fn send_counted(
    stream: &mut (impl AsyncWriteExt + Unpin),
    max: u64,
    seed: u64,
    written: &AtomicU64,
) -> [u8; 32] {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < max {
        rng.fill_bytes(&mut buf);
        hash.update(&buf);
        stream.write_all(&buf).await.expect("write");
        sent += buf.len() as u64;
        written.store(sent, Ordering::Relaxed);
    }
    hash.finalize().into()
}

/// A spliced pair with 1 MiB engine buffers and small buffers on the test's
/// own ends, so that all but ~1 MiB of what the client gets rid of is in the
/// engine's sockets or the kernel queue.
async fn slow_server_pair(kernel_queue_limit: Option<u64>, slot: u32) -> (Rig, Running) {
    let rig = rig(ForwardOptions {
        socket_buffer: Some(MIB as usize),
        kernel_queue_limit,
        ..ForwardOptions::default()
    })
    .await;
    let s = sockets().await;
    socket::set_buffers(&s.client, 128 * 1024).expect("client buffers");
    socket::set_buffers(&s.server, 256 * 1024).expect("server buffers");
    let run = spawn_forward(&rig.engine, s, slot);
    wait_spliced(&rig.engine, 1).await;
    (rig, run)
}

/// The limit of this kernel that the engine reports and cannot lift: towards
/// a server that reads nothing, the kernel keeps taking the client's bytes
/// onto the backend socket's psock (the client's window stays open, because
/// the verdict takes every skb at once), far past every socket buffer on
/// the way. The engine's queue check sees it and warns; every byte still
/// arrives, in order, once the server reads. Should a kernel bound that queue,
/// the first assertion fails and the README's account needs redoing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towards_a_server_that_reads_nothing_the_kernel_queue_is_reported_and_nothing_is_lost() {
    let (rig, run) = slow_server_pair(None, 3).await;
    let len = 192 * MIB;
    let written = Arc::new(AtomicU64::new(0));
    let (mut client_rd, mut client_wr) = run.client.into_split();
    let progress = Arc::clone(&written);
    let writer = tokio::spawn(async move {
        let sent = send_counted(&mut client_wr, len, 11, &progress).await;
        client_wr.shutdown().await.expect("client shutdown");
        sent
    });
    // The buffers on the way hold about 6 MiB (the client's 256 KiB, the
    // engine's two sockets' 2 MiB each, the server's 512 KiB), yet the
    // client gets rid of all 192 MiB while the server reads nothing.
    let sent = match tokio::time::timeout(Duration::from_secs(20), writer).await {
        Ok(sent) => sent.expect("join"),
        Err(_) => panic!(
            "the client was held back after {} MiB: does this kernel bound the psock queue?",
            written.load(Ordering::Relaxed) / MIB
        ),
    };
    // The checks trail the verdict by a ring buffer and a task: wait for
    // the last ones.
    let engine = Arc::clone(&rig.engine);
    eventually(Duration::from_secs(10), "the queue reported", move || {
        engine.kernel_queue().largest_bytes > len - 16 * MIB
    })
    .await;
    let mut server = run.server;
    let got = tokio::time::timeout(TIMEOUT, recv_hash(&mut server, len))
        .await
        .expect("server reads everything in time");
    assert_eq!(sent, got, "client -> server bytes differ");
    expect_eof(&mut server).await;
    server.shutdown().await.expect("server shutdown");
    expect_eof(&mut client_rd).await;
    drop((run.client_inner, run.backend_inner));
    let summary = ended(run.forward, TIMEOUT).await;
    assert_eq!((summary.end, summary.bytes.up), (PairEnd::Closed, len));
    let queue = rig.engine.kernel_queue();
    assert_eq!(queue.warnings, 1, "one warning per direction");
    // One check per 16 MiB redirected; a full ring would drop some.
    assert!(
        queue.checks >= len / QUEUE_CHECK_BYTES / 2,
        "{} checks for {} MiB",
        queue.checks,
        len / MIB
    );
    assert_maps_empty(&rig.engine);
}

/// With `forwarding.kernel_queue_limit`, a pair whose kernel queue passes it
/// is reset on both sides instead of queueing on: the client's writes fail
/// soon after the limit, the summary says why, the counter shows it, and the
/// maps are left empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_kernel_queue_limit_the_pair_is_reset_on_both_sides() {
    let limit = 64 * MIB;
    let (rig, run) = slow_server_pair(Some(limit), 5).await;
    // The engine's close must be the sockets' last, or no RST goes out.
    drop((run.client_inner, run.backend_inner));
    let mut client = run.client;
    let chunk = vec![7u8; 64 * 1024];
    let mut written = 0u64;
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Err(err) = client.write_all(&chunk).await {
                return err;
            }
            written += chunk.len() as u64;
            assert!(written < GIB, "1 GiB written past a 64 MiB limit");
        }
    })
    .await
    .expect("the client's writes fail within 20 s");
    assert!(
        matches!(
            failed.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
        ),
        "{failed}"
    );
    // The limit, one check's step, and about 3 MiB of socket buffers.
    assert!(
        written > limit && written < limit + QUEUE_CHECK_BYTES + 8 * MIB,
        "the client wrote {} MiB",
        written / MIB
    );
    let summary = ended(run.forward, Duration::from_secs(10)).await;
    assert_eq!(summary.end, PairEnd::KernelQueueLimit);
    assert_eq!(rig.engine.kernel_queue().resets, 1);
    // The server gets what reached it, then the reset.
    let mut server = run.server;
    let mut buf = vec![0u8; 256 * 1024];
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match server.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(err) => return Some(err.kind()),
            }
        }
    })
    .await
    .expect("the server's side ends within 10 s");
    assert_eq!(end, Some(io::ErrorKind::ConnectionReset));
    assert_maps_empty(&rig.engine);
}
