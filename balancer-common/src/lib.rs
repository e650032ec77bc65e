//! The kernel/user contract of `balancer`: every map name, capacity and value
//! layout shared by the BPF programs (`balancer-ebpf`) and the daemon.
//!
//! Each type here is defined once, `#[repr(C)]` with explicit padding, derives
//! bytemuck `Pod`, and has a `const` size assertion so that a layout change
//! breaks the build instead of the data. No `bool`, `Option` or Rust `enum`
//! crosses the boundary: such values travel as `u32` with `TryFrom` on the user
//! side.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Map names as they appear in the BPF object (and as pin file names).
pub mod map {
    /// `SOCKHASH`: socket cookie (`u64`) -> socket. The verdict is attached
    /// to it: it reads what every socket in it receives.
    pub const SOCKETS: &str = "SOCKETS";
    /// `SOCKHASH` with no program: socket cookie (`u64`) -> socket. The
    /// verdict redirects into it. A pair joins it before [`SOCKETS`], so
    /// that from the moment either socket's verdict runs, its peer is a
    /// valid destination (see `forward::sockmap` in the daemon).
    pub const TARGETS: &str = "TARGETS";
    /// `HASH`: socket cookie (`u64`) -> [`crate::PeerInfo`].
    pub const PEERS: &str = "PEERS";
    /// `PERCPU_ARRAY`: backend slot (`u32`) -> [`crate::BackendBytes`].
    pub const BACKEND_BYTES: &str = "BACKEND_BYTES";
    /// `PERCPU_ARRAY`: [`crate::Global`] counters, index 0.
    pub const GLOBAL: &str = "GLOBAL";
    /// `ARRAY` with `BPF_F_MMAPABLE`: backend slot (`u32`) ->
    /// [`crate::BackendStats`]. Written by the daemon through a shared
    /// mapping with atomics (no syscall per update), read by `balancer stats`.
    pub const BACKEND_STATS: &str = "BACKEND_STATS";
    /// `ARRAY` with `BPF_F_MMAPABLE`: [`crate::DaemonStats`] at index 0.
    pub const DAEMON_STATS: &str = "DAEMON_STATS";
    /// `RINGBUF` of socket cookies (`u64`): the verdict writes a socket's
    /// cookie each time the bytes it redirected from that socket pass a
    /// multiple of [`crate::QUEUE_CHECK_BYTES`], so that user space checks
    /// how much of it the peer has not taken yet (see
    /// [`crate::QUEUE_CHECK_BYTES`]).
    pub const QUEUE_CHECKS: &str = "QUEUE_CHECKS";
    /// Every map above (tests check that the object defines each).
    pub const ALL: [&str; 8] = [
        SOCKETS,
        TARGETS,
        PEERS,
        BACKEND_BYTES,
        GLOBAL,
        BACKEND_STATS,
        DAEMON_STATS,
        QUEUE_CHECKS,
    ];
}

/// Program names as they appear in the BPF object.
pub mod prog {
    /// The `sk_skb/stream_verdict` program attached to [`crate::map::SOCKETS`].
    pub const VERDICT: &str = "balancer_verdict";
}

/// How many spliced sockets the maps hold (two per connection).
pub const MAX_SOCKETS: u32 = 1 << 17;
/// How many backend slots the per-backend counters have.
pub const MAX_BACKENDS: u32 = 16384;
/// A [`PeerInfo::slot`] outside the counters: the pair's bytes count in its
/// own [`PeerInfo`] and in [`Global`] only (the engine's self-test uses it).
pub const NO_SLOT: u32 = u32::MAX;

/// log2 of [`QUEUE_CHECK_BYTES`].
pub const QUEUE_CHECK_SHIFT: u32 = 24;
/// Every this many bytes redirected from a socket, the verdict asks user space
/// (through [`map::QUEUE_CHECKS`]) to look at the peer's queue. The kernel
/// queues a redirected skb on the peer's psock with no limit and sends it from
/// a worker that, once the peer's send buffer is full, retries a jiffy later;
/// nothing holds the sender back meanwhile (2.6 GiB queued in 4 s towards a
/// backend that stopped reading, on 6.18), so user space reports it.
pub const QUEUE_CHECK_BYTES: u64 = 1 << QUEUE_CHECK_SHIFT;
/// Size of [`map::QUEUE_CHECKS`] in bytes (a power of two, a page multiple):
/// 4,096 records of 16 bytes (header and cookie).
pub const QUEUE_CHECKS_BYTES: u32 = 1 << 16;

/// Direction of the bytes a socket receives, seen from the client.
pub mod direction {
    /// The socket is the client's: what it receives goes up to the backend.
    pub const UP: u32 = 0;
    /// The socket is the backend's: what it receives goes down to the client.
    pub const DOWN: u32 = 1;
}

/// Per-socket state, keyed by the socket's cookie in [`map::PEERS`].
///
/// User space writes `peer_cookie`, `slot`, `direction` and a starting
/// `last_activity_ns` before the socket joins [`map::SOCKETS`]; the verdict
/// program updates `redirected_bytes`, `dropped_bytes` and `last_activity_ns`
/// in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerInfo {
    /// Cookie of the socket this one's received bytes are redirected to.
    pub peer_cookie: u64,
    /// Bytes received on this socket that the verdict successfully redirected
    /// to the peer (used to know when the peer has sent them all).
    pub redirected_bytes: u64,
    /// `bpf_ktime_get_ns()` of the last redirected skb (idle timeout).
    pub last_activity_ns: u64,
    /// Backend slot whose counters this pair adds to.
    pub slot: u32,
    /// One of [`direction`].
    pub direction: u32,
    /// Bytes received on this socket whose redirect failed because the peer
    /// was not (or no longer) in [`map::TARGETS`]: the kernel dropped them, so
    /// user space must reset the pair instead of ending it cleanly.
    pub dropped_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PeerInfo>() == 40);

/// Bytes the verdict redirected for one backend, and the skbs that carried
/// them, per CPU (user space sums the CPUs). The skbs tell how a backend
/// writes: sockmap pays a verdict, a queueing and a psock-worker send per
/// skb, so a backend whose downloads arrive in 1 KiB skbs costs it many
/// times what one arriving in 64 KiB skbs does (see the daemon's README,
/// "Forwarding engines").
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendBytes {
    /// Client -> backend.
    pub up: u64,
    /// Backend -> client.
    pub down: u64,
    /// skbs redirected client -> backend.
    pub up_skbs: u64,
    /// skbs redirected backend -> client.
    pub down_skbs: u64,
}
const _: () = assert!(core::mem::size_of::<BackendBytes>() == 32);

impl BackendBytes {
    /// The sum of two counts (of two CPUs), wrapping as the counters do.
    #[must_use]
    pub const fn wrapping_add(self, other: Self) -> Self {
        Self {
            up: self.up.wrapping_add(other.up),
            down: self.down.wrapping_add(other.down),
            up_skbs: self.up_skbs.wrapping_add(other.up_skbs),
            down_skbs: self.down_skbs.wrapping_add(other.down_skbs),
        }
    }
}

/// Global verdict counters, per CPU, at index 0 of [`map::GLOBAL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Global {
    /// skbs redirected.
    pub redirected_skbs: u64,
    /// skbs whose socket had no [`PeerInfo`] entry (passed to the socket).
    pub no_peer: u64,
    /// skbs whose redirect failed (peer missing from [`map::TARGETS`]).
    pub redirect_failed: u64,
    /// Queue checks lost because [`map::QUEUE_CHECKS`] was full.
    pub queue_checks_lost: u64,
}
const _: () = assert!(core::mem::size_of::<Global>() == 32);

/// `BPF_F_MMAPABLE` (uapi `linux/bpf.h`): the array map can be `mmap`ed.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Words of one [`BackendStats`] entry.
pub const BACKEND_STAT_WORDS: usize = 64;
/// Failure categories the daemon counts (its `FAILURE_LABELS`, same order).
pub const FAILURE_CATEGORIES: usize = 14;
/// Latency histogram buckets (the daemon's bounds plus `+Inf`).
pub const LATENCY_BUCKETS: usize = 13;

/// Word indices of a [`BackendStats`] entry. Every word is a `u64` updated
/// atomically by the daemon; readers see each word atomically, not the
/// entry as a whole.
pub mod stat {
    use crate::{FAILURE_CATEGORIES, LATENCY_BUCKETS};

    /// Id of the backend that owns the slot (never reused by a daemon run);
    /// 0 while the slot is free. Joins the slot with the identity file.
    pub const BACKEND_ID: usize = 0;
    /// Connections open through the backend now (a gauge).
    pub const ACTIVE: usize = 1;
    /// Client connection attempts ever.
    pub const ATTEMPTS: usize = 2;
    /// Attempts that reached a forwarded connection.
    pub const SUCCESSES: usize = 3;
    /// First of [`FAILURE_CATEGORIES`] failure counters, in the order of the
    /// daemon's `FAILURE_LABELS`.
    pub const FAILURES_0: usize = 4;
    /// Attempts that were failovers from another backend.
    pub const RETRIES: usize = FAILURES_0 + FAILURE_CATEGORIES;
    /// Active probes that succeeded.
    pub const PROBES_OK: usize = RETRIES + 1;
    /// Active probes that failed.
    pub const PROBES_FAILED: usize = PROBES_OK + 1;
    /// Breaker state: 0 unknown, 1 closed, 2 open, 3 half-open.
    pub const BREAKER_STATE: usize = PROBES_FAILED + 1;
    /// Operator state: 0 enabled, 1 disabled, 2 draining.
    pub const ADMIN_STATE: usize = BREAKER_STATE + 1;
    /// 1 once a reload or unregister removed the backend from the pool.
    pub const REMOVED: usize = ADMIN_STATE + 1;
    /// Success rate over the outcome window in parts per million;
    /// [`crate::UNKNOWN`] while the window is empty.
    pub const SUCCESS_RATE_PPM: usize = REMOVED + 1;
    /// Latency EMA: the bits of an `f64` in seconds; [`crate::UNKNOWN`]
    /// before the first sample.
    pub const LATENCY_EMA_SECONDS_F64: usize = SUCCESS_RATE_PPM + 1;
    /// First of [`LATENCY_BUCKETS`] latency histogram buckets (not
    /// cumulative; the last one is `+Inf`).
    pub const LATENCY_BUCKET_0: usize = LATENCY_EMA_SECONDS_F64 + 1;
    /// Sum of every latency sample, microseconds.
    pub const LATENCY_SUM_MICROS: usize = LATENCY_BUCKET_0 + LATENCY_BUCKETS;
    /// Last client attempt: nanoseconds since [`crate::daemon_stat::EPOCH_UNIX_MS`]
    /// plus one; 0 is never.
    pub const LAST_ATTEMPT_NS: usize = LATENCY_SUM_MICROS + 1;
    /// Last success, as [`LAST_ATTEMPT_NS`].
    pub const LAST_SUCCESS_NS: usize = LAST_ATTEMPT_NS + 1;
    /// Last failure, as [`LAST_ATTEMPT_NS`].
    pub const LAST_FAILURE_NS: usize = LAST_SUCCESS_NS + 1;

    /// The word of a `*_NS` stamp taken `nanos` after the epoch.
    #[must_use]
    pub const fn stamp_word(nanos: u64) -> u64 {
        nanos.saturating_add(1)
    }

    /// Nanoseconds after the epoch of a `*_NS` word; `None` for never.
    #[must_use]
    pub const fn stamp_nanos(word: u64) -> Option<u64> {
        word.checked_sub(1)
    }
    /// Bytes client -> backend that user space forwarded for this slot: the
    /// relay's first bytes of every pair, and splice for pairs the sockmap
    /// could not take; add to `BACKEND_BYTES.up`.
    pub const FALLBACK_BYTES_UP: usize = LAST_FAILURE_NS + 1;
    /// As [`FALLBACK_BYTES_UP`], backend -> client.
    pub const FALLBACK_BYTES_DOWN: usize = FALLBACK_BYTES_UP + 1;
    /// One past the last word in use; the rest of the entry is reserved.
    pub const USED: usize = FALLBACK_BYTES_DOWN + 1;
}
const _: () = assert!(stat::USED <= BACKEND_STAT_WORDS);

/// A gauge word that has no value yet (an empty window, no latency sample).
pub const UNKNOWN: u64 = u64::MAX;

/// The daemon's figures for one backend slot, value of
/// [`map::BACKEND_STATS`]: words indexed by [`stat`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendStats {
    pub words: [u64; BACKEND_STAT_WORDS],
}
const _: () = assert!(core::mem::size_of::<BackendStats>() == 512);

/// Words of the [`DaemonStats`] entry.
pub const DAEMON_STAT_WORDS: usize = 32;
/// Client handshake failure reasons (the daemon's `HandshakeFailure::ALL`).
pub const HANDSHAKE_REASONS: usize = 7;
/// What can carry a pair to its end (the daemon's `EngineName::CARRIERS`).
pub const CARRIERS: usize = 3;

/// Word indices of the [`DaemonStats`] entry.
pub mod daemon_stat {
    use crate::{CARRIERS, HANDSHAKE_REASONS};

    /// Connections accepted on every listener.
    pub const ACCEPTED: usize = 0;
    /// Attempts that were failovers to another backend.
    pub const RETRIES: usize = 1;
    /// Connections for which every attempt failed.
    pub const EXHAUSTED: usize = 2;
    /// First of [`HANDSHAKE_REASONS`] client handshake failure counters, in
    /// the order of the daemon's `HandshakeFailure::ALL`.
    pub const HANDSHAKE_FAILED_0: usize = 3;
    /// Process id of the daemon that writes the maps.
    pub const PID: usize = HANDSHAKE_FAILED_0 + HANDSHAKE_REASONS;
    /// Wall time the daemon started, milliseconds since the Unix epoch; the
    /// `*_NS` timestamps of [`crate::stat`] count from here.
    pub const EPOCH_UNIX_MS: usize = PID + 1;
    /// First of [`CARRIERS`] counters of finished pairs by what carried
    /// them to their end, in the order of the daemon's
    /// `EngineName::CARRIERS`: the user-space copy alone, sockmap, splice.
    pub const PAIRS_FINISHED_0: usize = EPOCH_UNIX_MS + 1;
    /// Queue checks the sockmap engine answered (see
    /// [`crate::QUEUE_CHECK_BYTES`]).
    pub const KERNEL_QUEUE_CHECKS: usize = PAIRS_FINISHED_0 + CARRIERS;
    /// The largest queue a check found on a psock, in bytes.
    pub const KERNEL_QUEUE_LARGEST: usize = KERNEL_QUEUE_CHECKS + 1;
    /// Directions whose queue passed the engine's warning mark.
    pub const KERNEL_QUEUE_WARNINGS: usize = KERNEL_QUEUE_LARGEST + 1;
    /// Pairs reset because a queue passed the configured limit.
    pub const KERNEL_QUEUE_RESETS: usize = KERNEL_QUEUE_WARNINGS + 1;
    /// One past the last word in use.
    pub const USED: usize = KERNEL_QUEUE_RESETS + 1;
}
const _: () = assert!(daemon_stat::USED <= DAEMON_STAT_WORDS);

/// Daemon-wide figures, value of [`map::DAEMON_STATS`] at index 0: words
/// indexed by [`daemon_stat`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct DaemonStats {
    pub words: [u64; DAEMON_STAT_WORDS],
}
const _: () = assert!(core::mem::size_of::<DaemonStats>() == 256);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], has no padding (asserted by size above)
    // and is bytemuck::Pod, so every bit pattern is valid.
    unsafe impl aya::Pod for super::PeerInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendBytes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Global {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DaemonStats {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_stat_indices_are_distinct_and_inside_the_entry() {
        let singles = [
            stat::BACKEND_ID,
            stat::ACTIVE,
            stat::ATTEMPTS,
            stat::SUCCESSES,
            stat::RETRIES,
            stat::PROBES_OK,
            stat::PROBES_FAILED,
            stat::BREAKER_STATE,
            stat::ADMIN_STATE,
            stat::REMOVED,
            stat::SUCCESS_RATE_PPM,
            stat::LATENCY_EMA_SECONDS_F64,
            stat::LATENCY_SUM_MICROS,
            stat::LAST_ATTEMPT_NS,
            stat::LAST_SUCCESS_NS,
            stat::LAST_FAILURE_NS,
            stat::FALLBACK_BYTES_UP,
            stat::FALLBACK_BYTES_DOWN,
        ];
        let mut used = [0u8; BACKEND_STAT_WORDS];
        let ranges = singles.iter().map(|&i| i..i + 1).chain([
            stat::FAILURES_0..stat::FAILURES_0 + FAILURE_CATEGORIES,
            stat::LATENCY_BUCKET_0..stat::LATENCY_BUCKET_0 + LATENCY_BUCKETS,
        ]);
        for range in ranges {
            for index in range {
                assert!(index < stat::USED, "index {index} past USED");
                used[index] += 1;
            }
        }
        assert!(used[..stat::USED].iter().all(|&n| n == 1), "{used:?}");
    }

    #[test]
    fn daemon_stat_indices_are_distinct_and_inside_the_entry() {
        let mut used = [0u8; DAEMON_STAT_WORDS];
        for index in [
            daemon_stat::ACCEPTED,
            daemon_stat::RETRIES,
            daemon_stat::EXHAUSTED,
            daemon_stat::PID,
            daemon_stat::EPOCH_UNIX_MS,
            daemon_stat::KERNEL_QUEUE_CHECKS,
            daemon_stat::KERNEL_QUEUE_LARGEST,
            daemon_stat::KERNEL_QUEUE_WARNINGS,
            daemon_stat::KERNEL_QUEUE_RESETS,
        ]
        .into_iter()
        .chain(daemon_stat::HANDSHAKE_FAILED_0..daemon_stat::HANDSHAKE_FAILED_0 + HANDSHAKE_REASONS)
        .chain(daemon_stat::PAIRS_FINISHED_0..daemon_stat::PAIRS_FINISHED_0 + CARRIERS)
        {
            used[index] += 1;
        }
        assert!(
            used[..daemon_stat::USED].iter().all(|&n| n == 1),
            "{used:?}"
        );
    }
}
