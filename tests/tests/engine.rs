//! Release gate for the forwarding engines: every case runs for each engine
//! (sockmap, splice) over loopback and over a veth pair between two
//! namespaces the test creates, and once more per engine on loopback with
//! the user-space relay in front (the daemon's default budget), so that
//! every case also crosses the hand-over from relay to engine. Byte streams
//! are checked end to end with SHA-256, and the engine's per-backend
//! counters against what was sent.
//!
//! Run it optimised: `cargo test --release -p balancer-tests --test engine`
//! (about 5 s per GiB case; a debug build hashes at a few MB/s and needs the
//! longer debug time limit below).

use std::{sync::Arc, time::Duration};

use balancer::forward::{
    BackendEngine, BackendSlot, ByteCount, Engine, EngineKind, EngineName, ForwardError,
    ForwardOptions, PairEnd, PairSummary, relay::RelayBudget,
};
use balancer_tests::{
    PairSockets, Topology, TopologyKind, raise_nofile_limit, require_root, sink, source,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
    time::timeout,
};
use tokio_util::sync::CancellationToken;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
/// Upper bound for any one case; a hang is a failure, not a stuck CI run.
const CASE_LIMIT: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(900)
} else {
    Duration::from_secs(60)
};

/// One engine, one topology: what every case starts from.
struct Bench {
    engine: Arc<Engine>,
    topology: Topology,
    cancel: CancellationToken,
}

/// Whether the user-space relay carries each pair's first bytes.
#[derive(Clone, Copy, Debug)]
enum Relay {
    Off,
    /// The daemon's default budget: 64 KiB or 100 ms.
    Default,
}

/// The engine and where it runs, for one case.
#[derive(Clone, Copy, Debug)]
struct Setup {
    kind: EngineKind,
    topology: TopologyKind,
    relay: Relay,
}

impl Bench {
    async fn new(setup: Setup) -> Self {
        require_root("network namespaces, veth and BPF (sockmap engine)");
        let Setup {
            kind,
            topology,
            relay,
        } = setup;
        let options = ForwardOptions {
            relay: match relay {
                Relay::Off => None,
                Relay::Default => Some(RelayBudget {
                    bytes: 64 * 1024,
                    time: Duration::from_millis(100),
                }),
            },
            ..ForwardOptions::default()
        };
        let engine = Engine::open(kind, options)
            .await
            .unwrap_or_else(|cause| panic!("{kind:?} engine does not open: {cause}"));
        let topology = Topology::new(topology).expect("topology");
        Self {
            engine: Arc::new(engine),
            topology,
            cancel: CancellationToken::new(),
        }
    }

    async fn sockets(&self) -> PairSockets {
        self.topology.pair_sockets().await.expect("pair sockets")
    }

    /// Hands the proxy's two sockets to the engine; returns the task and the
    /// outer `(client, server)` ends.
    fn forward(
        &self,
        sockets: PairSockets,
        slot: BackendSlot,
    ) -> (
        JoinHandle<Result<PairSummary, ForwardError>>,
        TcpStream,
        TcpStream,
    ) {
        self.forward_with(sockets, slot, BackendEngine::Auto)
    }

    /// As [`Self::forward`], for a backend that chose `engine`.
    fn forward_with(
        &self,
        sockets: PairSockets,
        slot: BackendSlot,
        engine: BackendEngine,
    ) -> (
        JoinHandle<Result<PairSummary, ForwardError>>,
        TcpStream,
        TcpStream,
    ) {
        let (mut pair, client, server) = sockets.into_pair(slot);
        pair.engine = engine;
        let engine = Arc::clone(&self.engine);
        let cancel = self.cancel.clone();
        let task = tokio::spawn(async move { engine.forward(pair, &cancel).await });
        (task, client, server)
    }
}

async fn summary_of(task: JoinHandle<Result<PairSummary, ForwardError>>) -> PairSummary {
    timeout(Duration::from_secs(10), task)
        .await
        .expect("the pair ends within 10 s of both sides finishing")
        .expect("forward task panicked")
        .expect("forward failed")
}

/// 1 GiB of random bytes each way at the same time: digests equal, the
/// engine's counters for the slot equal to what was sent.
async fn gibibyte_each_way_at_once(setup: Setup) {
    let bench = Bench::new(setup).await;
    let slot = BackendSlot(11);
    let (task, client, server) = bench.forward(bench.sockets().await, slot);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let (up_sent, up_got, down_sent, down_got) = tokio::join!(
        source(&mut client_tx, GIB, 1, 256 * 1024),
        sink(&mut server_rx),
        source(&mut server_tx, GIB, 2, 256 * 1024),
        sink(&mut client_rx),
    );
    let (up_sent, up_got) = (
        up_sent.expect("client sends"),
        up_got.expect("server reads"),
    );
    let (down_sent, down_got) = (
        down_sent.expect("server sends"),
        down_got.expect("client reads"),
    );
    assert_eq!(up_got, up_sent, "client -> server stream differs");
    assert_eq!(down_got, down_sent, "server -> client stream differs");
    drop((client_rx, client_tx, server_rx, server_tx));
    let summary = summary_of(task).await;
    assert_eq!(summary.end, PairEnd::Closed);
    let expected = ByteCount { up: GIB, down: GIB };
    assert_eq!(summary.bytes, expected);
    assert_eq!(bench.engine.backend_bytes(slot), expected);
}

/// Bytes the client wrote before the forward started, and a banner the
/// server wrote as soon as its side was established, both arrive first and
/// in order.
async fn early_data_is_forwarded_first(setup: Setup) {
    let bench = Bench::new(setup).await;
    let mut sockets = bench.sockets().await;
    sockets
        .server
        .write_all(b"220 banner\r\n")
        .await
        .expect("banner");
    sockets.client.write_all(b"EARLY").await.expect("early");
    // Let both segments land in the proxy's receive queues before the
    // engine takes the sockets.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (task, mut client, mut server) = bench.forward(sockets, BackendSlot(12));
    let mut banner = [0; 12];
    client
        .read_exact(&mut banner)
        .await
        .expect("banner arrives");
    assert_eq!(&banner, b"220 banner\r\n");
    client.write_all(b" LATE").await.expect("late");
    client.shutdown().await.expect("client fin");
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.expect("server reads");
    assert_eq!(got, b"EARLY LATE");
    server.write_all(b"bye").await.expect("bye");
    server.shutdown().await.expect("server fin");
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("client reads");
    assert_eq!(got, b"bye");
    let summary = summary_of(task).await;
    assert_eq!(summary.end, PairEnd::Closed);
    assert_eq!(summary.bytes, ByteCount { up: 10, down: 15 });
}

/// 100,000 one-byte writes each way at once arrive complete and in order.
async fn one_byte_writes_arrive_in_order(setup: Setup) {
    const WRITES: usize = 100_000;
    let bench = Bench::new(setup).await;
    let (task, client, server) = bench.forward(bench.sockets().await, BackendSlot(13));
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    async fn write_bytes(mut tx: tokio::net::tcp::OwnedWriteHalf, offset: usize) {
        for i in 0..WRITES {
            tx.write_all(&[((i + offset) % 251) as u8])
                .await
                .expect("1-byte write");
        }
        tx.shutdown().await.expect("fin");
    }
    async fn read_bytes(mut rx: tokio::net::tcp::OwnedReadHalf, offset: usize) {
        let mut got = Vec::with_capacity(WRITES);
        rx.read_to_end(&mut got).await.expect("read");
        assert_eq!(got.len(), WRITES);
        let out_of_order = got
            .iter()
            .enumerate()
            .position(|(i, b)| *b != ((i + offset) % 251) as u8);
        assert_eq!(out_of_order, None, "first byte out of order");
    }
    tokio::join!(
        write_bytes(client_tx, 0),
        read_bytes(server_rx, 0),
        write_bytes(server_tx, 7),
        read_bytes(client_rx, 7),
    );
    let summary = summary_of(task).await;
    assert_eq!(summary.end, PairEnd::Closed);
    assert_eq!(
        summary.bytes,
        ByteCount {
            up: WRITES as u64,
            down: WRITES as u64
        }
    );
}

/// One side half-closes; the other keeps sending 8 MiB, which all arrives,
/// then closes. Run with either side closing first.
async fn half_close_keeps_the_other_way_open(setup: Setup) {
    let bench = Bench::new(setup).await;
    for client_first in [true, false] {
        let (task, client, server) = bench.forward(bench.sockets().await, BackendSlot(14));
        let (mut first, mut second) = if client_first {
            (client, server)
        } else {
            (server, client)
        };
        first.write_all(b"request").await.expect("request");
        first.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        timeout(Duration::from_secs(5), second.read_to_end(&mut got))
            .await
            .expect("the FIN is passed on")
            .expect("read");
        assert_eq!(got, b"request");
        let (_second_rx, mut second_tx) = second.into_split();
        let (sent, got) = tokio::join!(
            source(&mut second_tx, 8 * MIB, 3, 64 * 1024),
            sink(&mut first)
        );
        let sent = sent.expect("keeps sending");
        let got = got.expect("half-closed side still reads");
        assert_eq!(got, sent, "client_first={client_first}");
        let summary = summary_of(task).await;
        assert_eq!(summary.end, PairEnd::Closed);
    }
}

/// 64 MiB written and the socket closed at once: nothing is lost, either
/// direction.
async fn large_write_then_immediate_close_loses_nothing(setup: Setup) {
    let bench = Bench::new(setup).await;
    for client_sends in [true, false] {
        let (task, client, server) = bench.forward(bench.sockets().await, BackendSlot(15));
        let (mut sender, mut receiver) = if client_sends {
            (client, server)
        } else {
            (server, client)
        };
        let receiving = tokio::spawn(async move { sink(&mut receiver).await });
        let sent = source(&mut sender, 64 * MIB, 4, 1024 * 1024)
            .await
            .expect("send");
        drop(sender);
        let got = receiving.await.expect("join").expect("receive");
        assert_eq!(got, sent, "client_sends={client_sends}");
        let summary = summary_of(task).await;
        let moved = if client_sends {
            summary.bytes.up
        } else {
            summary.bytes.down
        };
        assert_eq!(moved, 64 * MIB);
    }
}

/// A reset from either side closes the other side within 1 s.
async fn reset_closes_the_other_side_within_a_second(setup: Setup) {
    let bench = Bench::new(setup).await;
    for client_resets in [true, false] {
        let (task, client, server) = bench.forward(bench.sockets().await, BackendSlot(16));
        let (resetter, mut survivor) = if client_resets {
            (client, server)
        } else {
            (server, client)
        };
        // Traffic first, so the pair is known to be forwarding.
        let mut resetter = resetter;
        resetter.write_all(b"x").await.expect("write");
        let mut byte = [0];
        survivor.read_exact(&mut byte).await.expect("forwarded");
        socket2::SockRef::from(&resetter)
            .set_linger(Some(Duration::ZERO))
            .expect("SO_LINGER 0");
        drop(resetter);
        let closed = timeout(Duration::from_secs(1), survivor.read(&mut byte)).await;
        match closed {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("read {n} unexpected bytes after the reset"),
            Err(_) => panic!(
                "the other side is still open 1 s after a reset (client_resets={client_resets})"
            ),
        }
        let summary = summary_of(task).await;
        assert_eq!(summary.end, PairEnd::Reset);
    }
}

/// 1,000 pairs at once, 64 KiB each way per pair, every stream checked, and
/// the per-slot counters add up.
async fn thousand_concurrent_pairs(setup: Setup) {
    const PAIRS: u64 = 1000;
    const BYTES: u64 = 64 * 1024;
    const SLOTS: u32 = 10;
    // 4 sockets per pair plus up to 4 pipe ends for splice.
    raise_nofile_limit(16 * 1024).expect("raise RLIMIT_NOFILE");
    let bench = Bench::new(setup).await;
    let mut pairs = Vec::new();
    for i in 0..PAIRS {
        let slot = BackendSlot(100 + (i % u64::from(SLOTS)) as u32);
        pairs.push(bench.forward(bench.sockets().await, slot));
    }
    let checks = pairs
        .into_iter()
        .enumerate()
        .map(|(i, (task, client, server))| async move {
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let seed = 1000 + 2 * i as u64;
            let (up_sent, up_got, down_sent, down_got) = tokio::join!(
                source(&mut client_tx, BYTES, seed, 16 * 1024),
                sink(&mut server_rx),
                source(&mut server_tx, BYTES, seed + 1, 16 * 1024),
                sink(&mut client_rx),
            );
            assert_eq!(
                up_got.expect("server reads"),
                up_sent.expect("client sends"),
                "pair {i} up"
            );
            assert_eq!(
                down_got.expect("client reads"),
                down_sent.expect("server sends"),
                "pair {i} down"
            );
            let summary = summary_of(task).await;
            assert_eq!(summary.end, PairEnd::Closed, "pair {i}");
        });
    let handles: Vec<_> = checks.map(tokio::spawn).collect();
    for handle in handles {
        handle.await.expect("pair check");
    }
    let per_slot = PAIRS / u64::from(SLOTS) * BYTES;
    for slot in 100..100 + SLOTS {
        assert_eq!(
            bench.engine.backend_bytes(BackendSlot(slot)),
            ByteCount {
                up: per_slot,
                down: per_slot
            },
            "slot {slot}"
        );
    }
}

/// Under sockmap, a backend that asks for splice (`backends[].engine:
/// splice`) has its pairs carried by splice: none of its bytes pass the
/// verdict, and they still count for its slot; a pair of another backend
/// beside it is spliced in the kernel as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_sockmap_a_backend_that_asks_for_splice_is_carried_by_splice() {
    let bench = Bench::new(Setup {
        kind: EngineKind::Sockmap,
        topology: TopologyKind::Loopback,
        relay: Relay::Default,
    })
    .await;
    let mut summaries = Vec::new();
    for (slot, choice) in [
        (BackendSlot(21), BackendEngine::Splice),
        (BackendSlot(22), BackendEngine::Auto),
    ] {
        let (task, client, server) = bench.forward_with(bench.sockets().await, slot, choice);
        let (mut client_rx, mut client_tx) = client.into_split();
        let (mut server_rx, mut server_tx) = server.into_split();
        // The download first, then the upload: a FIN that came before the
        // hand-over would send any pair to splice.
        let (up_sent, up_got, down_sent, down_got) = timeout(CASE_LIMIT, async {
            let (down_sent, down_got) = tokio::join!(
                source(&mut server_tx, 32 * MIB, 4, 256 * 1024),
                sink(&mut client_rx),
            );
            let (up_sent, up_got) = tokio::join!(
                source(&mut client_tx, 4 * MIB, 3, 64 * 1024),
                sink(&mut server_rx),
            );
            (up_sent, up_got, down_sent, down_got)
        })
        .await
        .expect("transfer in time");
        assert_eq!(
            up_got.expect("server reads"),
            up_sent.expect("client sends")
        );
        assert_eq!(
            down_got.expect("client reads"),
            down_sent.expect("server sends")
        );
        drop((client_rx, client_tx, server_rx, server_tx));
        let summary = summary_of(task).await;
        assert_eq!(summary.end, PairEnd::Closed, "{choice:?}");
        let expected = ByteCount {
            up: 4 * MIB,
            down: 32 * MIB,
        };
        assert_eq!(summary.bytes, expected, "{choice:?}");
        assert_eq!(bench.engine.backend_bytes(slot), expected, "{choice:?}");
        let kernel = bench.engine.redirected(slot).expect("sockmap counts skbs");
        summaries.push((summary.engine, kernel.down_skbs, kernel.down));
    }
    assert_eq!(summaries[0], (EngineName::Splice, 0, 0), "{summaries:?}");
    assert_eq!(summaries[1].0, EngineName::Sockmap, "{summaries:?}");
    assert!(summaries[1].1 > 0, "{summaries:?}");
}

/// Runs one case with the per-case time limit.
async fn run<F: Future<Output = ()>>(case: F) {
    timeout(CASE_LIMIT, case)
        .await
        .expect("case finished within its time limit");
}

macro_rules! cases {
    ($engine:expr, $topology:expr, $relay:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let setup = crate::Setup { kind: $engine, topology: $topology, relay: $relay };
                crate::run(crate::$case(setup)).await;
            }
        )+
    };
}

macro_rules! matrix {
    ($($case:ident),+ $(,)?) => {
        mod splice {
            use balancer::forward::EngineKind;
            use balancer_tests::TopologyKind;
            use crate::Relay;
            mod loopback {
                use super::*;
                cases!(EngineKind::Splice, TopologyKind::Loopback, Relay::Off; $($case),+);
            }
            mod veth {
                use super::*;
                cases!(EngineKind::Splice, TopologyKind::Veth, Relay::Off; $($case),+);
            }
            mod relay_loopback {
                use super::*;
                cases!(EngineKind::Splice, TopologyKind::Loopback, Relay::Default; $($case),+);
            }
        }
        mod sockmap {
            use balancer::forward::EngineKind;
            use balancer_tests::TopologyKind;
            use crate::Relay;
            mod loopback {
                use super::*;
                cases!(EngineKind::Sockmap, TopologyKind::Loopback, Relay::Off; $($case),+);
            }
            mod veth {
                use super::*;
                cases!(EngineKind::Sockmap, TopologyKind::Veth, Relay::Off; $($case),+);
            }
            mod relay_loopback {
                use super::*;
                cases!(EngineKind::Sockmap, TopologyKind::Loopback, Relay::Default; $($case),+);
            }
        }
    };
}

matrix!(
    gibibyte_each_way_at_once,
    early_data_is_forwarded_first,
    one_byte_writes_arrive_in_order,
    half_close_keeps_the_other_way_open,
    large_write_then_immediate_close_loses_nothing,
    reset_closes_the_other_side_within_a_second,
    thousand_concurrent_pairs,
);
