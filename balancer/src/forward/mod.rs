//! Forwarding engines. Once a client socket and a backend socket are both
//! established and the handshake bytes have been exchanged exactly, an engine
//! moves every further byte between them until both directions are finished,
//! propagates half-close, and accounts the bytes per backend slot.
//!
//! Two implementations behind one enum: [`sockmap`] (the kernel forwards; user
//! space never touches the payload) and [`splice`] (`splice(2)` through pipes,
//! for kernels or privileges where BPF cannot load, and for sockets the
//! sockmap cannot take). Before either, the [`relay`] carries each pair's
//! first bytes in user space, so that short connections skip the engine's
//! set-up.

pub mod advice;
pub mod relay;
pub mod sockmap;
pub mod splice;

use std::{fmt, path::PathBuf, time::Duration};

use relay::{Finished, RelayBudget, Relayed};

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Which engine the operator asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// Sockmap if it loads, attaches and passes a self-test; splice otherwise.
    Auto,
    /// Sockmap or fail to start.
    Sockmap,
    /// Always splice.
    Splice,
}

/// The engine that actually forwards (what `Auto` resolved to), or, for
/// one pair, what carried it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineName {
    Sockmap,
    Splice,
    /// The pair ended within the relay's budget and never reached the
    /// engine (a pair's summary only).
    Relay,
}

impl EngineName {
    /// Every value a pair's summary can name, in the order of the
    /// `balancer_common::daemon_stat::PAIRS_FINISHED_0` words.
    pub const CARRIERS: [Self; balancer_common::CARRIERS] =
        [Self::Relay, Self::Sockmap, Self::Splice];

    /// Position in [`Self::CARRIERS`].
    #[must_use]
    pub fn carrier_index(self) -> usize {
        match self {
            Self::Relay => 0,
            Self::Sockmap => 1,
            Self::Splice => 2,
        }
    }
}

impl fmt::Display for EngineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sockmap => "sockmap",
            Self::Splice => "splice",
            Self::Relay => "relay",
        })
    }
}

/// Tuning shared by both engines.
#[derive(Clone, Debug, Default)]
pub struct ForwardOptions {
    /// `SO_SNDBUF`/`SO_RCVBUF` for both sockets of a pair; `None` keeps the
    /// kernel's autotuning.
    pub socket_buffer: Option<usize>,
    /// Close a pair after no byte moved either way for this long.
    pub idle_timeout: Option<Duration>,
    /// bpffs directory where the sockmap engine pins its maps so that
    /// `balancer stats` can read them; `None` pins nothing.
    pub pin_dir: Option<PathBuf>,
    /// Let the BPF program's log statements run and forward them to the
    /// daemon's log (`forwarding.bpf_log`).
    pub bpf_log: bool,
    /// How much of each pair the user-space relay carries before the
    /// engine; `None`: the engine from the first byte.
    pub relay: Option<RelayBudget>,
    /// Sockmap: reset a pair whose kernel queue towards one side passes
    /// this (`forwarding.kernel_queue_limit`); `None`: never.
    pub kernel_queue_limit: Option<u64>,
}

/// Which engine carries a backend's pairs (`backends[].engine`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum BackendEngine {
    /// The daemon's engine (`forwarding.engine`).
    #[default]
    Auto,
    /// Splice, even where the daemon forwards with sockmap: sockmap pays
    /// per skb, and behind a backend whose bytes arrive in small skbs
    /// splice moves more (see the README, "Which to choose").
    Splice,
}

impl BackendEngine {
    /// The config's spelling: `auto` or `splice`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Splice => "splice",
        }
    }
}

/// Index of a backend in the per-backend counters (BPF array and user space).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSlot(pub u32);

/// Two established sockets to be joined.
#[derive(Debug)]
pub struct Pair {
    pub client: TcpStream,
    pub backend: TcpStream,
    pub slot: BackendSlot,
    /// The backend's choice of engine.
    pub engine: BackendEngine,
}

/// Bytes forwarded, seen from the client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ByteCount {
    /// Client -> backend.
    pub up: u64,
    /// Backend -> client.
    pub down: u64,
}

impl std::ops::AddAssign for ByteCount {
    fn add_assign(&mut self, rhs: Self) {
        self.up += rhs.up;
        self.down += rhs.down;
    }
}

/// Why a pair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairEnd {
    /// Both directions reached EOF and were propagated.
    Closed,
    /// One side reset or failed; the other was closed promptly.
    Reset,
    /// No byte moved for `idle_timeout`.
    IdleTimeout,
    /// The daemon is shutting down and the drain period is over.
    Cancelled,
    /// Sockmap: more than `forwarding.kernel_queue_limit` bytes of one
    /// direction waited in the kernel for a slower receiver; both sides
    /// were reset.
    KernelQueueLimit,
}

/// What one forwarded pair did.
#[derive(Clone, Debug)]
pub struct PairSummary {
    pub bytes: ByteCount,
    pub duration: Duration,
    pub end: PairEnd,
    /// The engine that carried this pair (sockmap pairs the kernel cannot take
    /// are carried by splice).
    pub engine: EngineName,
}

/// A pair could not be forwarded at all.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Sockmap(#[from] sockmap::SockmapError),
    #[error(transparent)]
    Splice(#[from] splice::SpliceError),
}

/// The engine could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("sockmap engine unavailable: {0}")]
    Sockmap(#[from] sockmap::SockmapError),
    #[error("splice engine unavailable: {0}")]
    Splice(#[from] splice::SpliceError),
}

/// One engine for the whole daemon, shared by every connection.
#[derive(Debug)]
pub enum Engine {
    Sockmap(sockmap::SockmapEngine),
    Splice(splice::SpliceEngine),
}

impl Engine {
    /// Opens the engine `kind` asks for. `Auto` loads, attaches and
    /// self-tests the sockmap engine and falls back to splice with one log
    /// line that says why.
    pub async fn open(kind: EngineKind, options: ForwardOptions) -> Result<Self, OpenError> {
        match kind {
            EngineKind::Splice => Ok(Self::Splice(splice::SpliceEngine::new(options)?)),
            EngineKind::Sockmap => Ok(Self::Sockmap(sockmap::SockmapEngine::open(options).await?)),
            EngineKind::Auto => match sockmap::SockmapEngine::open(options.clone()).await {
                Ok(engine) => {
                    tracing::info!(
                        engine = "sockmap",
                        "forwarding engine: sockmap (BPF loaded, attached and self-tested)"
                    );
                    Ok(Self::Sockmap(engine))
                }
                Err(cause) => {
                    tracing::warn!(engine = "splice", %cause, "forwarding engine: splice, because sockmap is unavailable");
                    Ok(Self::Splice(splice::SpliceEngine::new(options)?))
                }
            },
        }
    }

    pub fn name(&self) -> EngineName {
        match self {
            Self::Sockmap(_) => EngineName::Sockmap,
            Self::Splice(_) => EngineName::Splice,
        }
    }

    /// Forwards `pair` until both directions are done, it resets, it idles
    /// out, or `cancel` fires.
    /// The relay carries the pair first when `ForwardOptions::relay` is set.
    pub async fn forward(
        &self,
        pair: Pair,
        cancel: &CancellationToken,
    ) -> Result<PairSummary, ForwardError> {
        let started = crate::clock::now();
        let user_space = self.user_space();
        let options = user_space.options();
        // A backend that asks for splice gets the sockmap engine's fallback.
        let kernel = matches!(self, Self::Sockmap(_)) && pair.engine == BackendEngine::Auto;
        // The sockmap engine needs the relay's settling reads even without a
        // budget (see `relay`): a zero budget does only those.
        let budget = if kernel {
            Some(options.relay.unwrap_or(RelayBudget {
                bytes: 0,
                time: Duration::ZERO,
            }))
        } else {
            options.relay
        };
        let (pair, relayed, finished) = match budget {
            None => (pair, ByteCount::default(), Finished::default()),
            Some(budget) => {
                let counters = user_space.slot_counters(pair.slot)?;
                // Boxed: freed at the hand-over, so a long-lived pair's task
                // does not keep the relay's state (timers, readiness).
                let taker = if kernel {
                    relay::Taker::WholeSkbs
                } else {
                    relay::Taker::AnyOffset
                };
                let relaying = relay::relay(
                    pair,
                    (budget, taker),
                    counters,
                    options.idle_timeout,
                    cancel,
                );
                match Box::pin(relaying).await {
                    Relayed::Ended { bytes, end } => {
                        return Ok(PairSummary {
                            bytes,
                            duration: started.elapsed(),
                            end,
                            engine: EngineName::Relay,
                        });
                    }
                    Relayed::HandOver {
                        pair,
                        bytes,
                        finished,
                    } => (pair, bytes, finished),
                }
            }
        };
        // The splice future is the larger (pipes, chunk state); boxed, it
        // no longer sets the size of every sockmap connection's future. A
        // half-closed pair goes to splice: the sockhash takes only
        // established sockets.
        let mut summary = match self {
            Self::Sockmap(engine) if kernel && !finished.any() => {
                engine.forward(pair, cancel).await?
            }
            Self::Sockmap(_) | Self::Splice(_) => {
                Box::pin(user_space.forward_rest(pair, finished, cancel)).await?
            }
        };
        summary.bytes += relayed;
        summary.duration = started.elapsed();
        Ok(summary)
    }

    /// The splice engine whose counters hold the bytes user space moved
    /// (relay and splice): the engine itself, or the sockmap's fallback.
    fn user_space(&self) -> &splice::SpliceEngine {
        match self {
            Self::Sockmap(engine) => engine.fallback(),
            Self::Splice(engine) => engine,
        }
    }

    /// Bytes forwarded so far for `slot`, all pairs (live and finished).
    pub fn backend_bytes(&self, slot: BackendSlot) -> ByteCount {
        self.backend_counts(slot).0
    }

    /// [`Self::backend_bytes`] and [`Self::redirected`] together, with one
    /// read of the kernel's counters (a stats scrape wants both).
    pub fn backend_counts(
        &self,
        slot: BackendSlot,
    ) -> (ByteCount, Option<balancer_common::BackendBytes>) {
        match self {
            Self::Sockmap(engine) => {
                let (bytes, kernel) = engine.backend_counts(slot);
                (bytes, Some(kernel))
            }
            Self::Splice(engine) => (engine.backend_bytes(slot), None),
        }
    }

    /// What the sockmap verdict redirected for `slot` (bytes and skbs each
    /// way); `None` under splice, which sees no skbs.
    pub fn redirected(&self, slot: BackendSlot) -> Option<balancer_common::BackendBytes> {
        match self {
            Self::Sockmap(engine) => Some(engine.redirected(slot)),
            Self::Splice(_) => None,
        }
    }

    /// The mapped BPF maps the daemon's own counters go to (`BACKEND_STATS`,
    /// `DAEMON_STATS`); `None` without BPF.
    #[must_use]
    pub fn stats_memory(
        &self,
    ) -> Option<(
        std::sync::Arc<crate::bpf::MappedWords>,
        std::sync::Arc<crate::bpf::MappedWords>,
    )> {
        match self {
            Self::Sockmap(engine) => Some(engine.stats_memory()),
            Self::Splice(_) => None,
        }
    }

    /// Zeroes the byte counters of a slot: one nobody uses any more, before
    /// the registry hands it to another backend, or any slot on an
    /// operator's reset (bytes that live pairs move meanwhile may be lost
    /// from the count).
    pub fn clear_slot(&self, slot: BackendSlot) {
        match self {
            Self::Sockmap(engine) => engine.clear_slot(slot),
            Self::Splice(engine) => engine.clear_slot(slot),
        }
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use tokio::net::{TcpListener, TcpStream};

    /// `client <-> [accepted | connected] <-> server` over loopback: the two
    /// middle sockets are what a proxy hands to forwarding.
    pub(crate) async fn loopback_sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let connected = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, accepted, connected, server)
    }
}
