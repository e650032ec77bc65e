//! The status of one running instance as `balancer stats` reads it: the
//! daemon-wide counters and one entry per backend. Pure data: built from
//! values handed in (the caller reads the clock and the engine), serialized
//! with serde; no I/O here (that is [`super::status_file`]).

use std::{collections::BTreeMap, time::Duration};

use balancer_common::{BackendBytes, daemon_stat};
use serde::{Deserialize, Serialize};

use super::{Counters, HandshakeFailure};
use crate::{
    backend::{AdminState, BackendStatus, FAILURE_LABELS},
    forward::{BackendEngine, ByteCount, EngineName, advice},
};

/// Bumped when a field changes meaning or disappears; new fields keep it.
pub const FORMAT_VERSION: u32 = 1;

/// Everything `balancer stats` shows about one instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`FORMAT_VERSION`] of the writer.
    pub version: u32,
    /// The config's `instance`.
    pub instance: String,
    /// Process id of the daemon, to tell a live instance from a leftover file.
    pub pid: u32,
    /// The engine that forwards (`sockmap` or `splice`; what `auto` chose).
    pub engine: String,
    /// When the daemon started, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// When this snapshot was taken, milliseconds since the Unix epoch.
    pub written_unix_ms: u64,
    /// Seconds since the daemon started (monotonic clock).
    pub uptime_secs: f64,
    /// Daemon-wide counters.
    pub counters: DaemonCounters,
    /// One entry per backend: the pool in order, then draining ones.
    pub backends: Vec<BackendSnapshot>,
}

/// Daemon-wide counters (see [`Counters`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonCounters {
    /// Connections accepted on every listener.
    pub accepted: u64,
    /// Attempts that were failovers to another backend.
    pub retries: u64,
    /// Connections for which every attempt failed.
    pub exhausted: u64,
    /// Client handshakes that failed, by reason label (every label present).
    pub handshake_failures: BTreeMap<String, u64>,
    /// Pairs that ended, by what carried them to their end: `relay` (the
    /// user-space copy alone, within `offload_after_*`), `sockmap`,
    /// `splice` (every label present).
    #[serde(default)]
    pub pairs_finished: BTreeMap<String, u64>,
    /// What the sockmap engine's queue checks found (zero under splice).
    #[serde(default)]
    pub kernel_queue: KernelQueue,
}

/// The queue the kernel keeps on a spliced socket's psock for bytes the
/// verdict redirected to it and its send buffer has no room for yet; the
/// kernel puts no limit on it (see `forward::sockmap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelQueue {
    /// Checks answered (one per 16 MiB redirected from a socket).
    pub checks: u64,
    /// The largest queue a check found, in bytes.
    pub largest_bytes: u64,
    /// Directions whose queue passed the warning mark (logged).
    pub warnings: u64,
    /// Pairs reset for passing `forwarding.kernel_queue_limit`.
    #[serde(default)]
    pub resets: u64,
}

impl KernelQueue {
    /// The figures in the `daemon_stat::KERNEL_QUEUE_*` words, read by `word`.
    #[must_use]
    pub fn from_words(word: impl Fn(usize) -> u64) -> Self {
        Self {
            checks: word(daemon_stat::KERNEL_QUEUE_CHECKS),
            largest_bytes: word(daemon_stat::KERNEL_QUEUE_LARGEST),
            warnings: word(daemon_stat::KERNEL_QUEUE_WARNINGS),
            resets: word(daemon_stat::KERNEL_QUEUE_RESETS),
        }
    }
}

/// One backend's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackendSnapshot {
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// The pool scope, if the backend has one.
    pub scope: Option<String>,
    /// Breaker state: `unknown`, `closed`, `open` or `half_open`.
    pub state: String,
    /// Removed by a reload, finishing its connections.
    pub draining: bool,
    /// Held back by an operator (control API `disable` or `drain`): takes
    /// no new connections. Absent in files of older daemons.
    #[serde(default)]
    pub disabled: bool,
    /// The operator's override: `enabled`, `disabled` or `draining`.
    #[serde(default = "enabled_label")]
    pub admin: String,
    /// Connections open through it now.
    pub active: u64,
    /// Connection attempts ever (client traffic, not probes).
    pub attempts: u64,
    /// Attempts that reached a forwarded connection.
    pub successes: u64,
    /// Failed attempts by category label (every label present).
    pub failures: BTreeMap<String, u64>,
    /// Attempts that were failovers from another backend.
    pub retries: u64,
    /// Active health probes that succeeded.
    pub probes_ok: u64,
    /// Active health probes that failed.
    pub probes_failed: u64,
    /// Share of successes in the outcome window (client attempts and
    /// probes), 0.0-1.0; `None` while the window is empty (unknown, which is
    /// neither 0 % nor 100 %).
    pub success_rate: Option<f64>,
    /// Connect-and-handshake latency EMA in milliseconds; `None` before the
    /// first success.
    pub latency_ema_ms: Option<f64>,
    /// Bytes forwarded client -> backend, every connection ever.
    pub bytes_up: u64,
    /// Bytes forwarded backend -> client, every connection ever.
    pub bytes_down: u64,
    /// The sockmap verdict's share of `bytes_up`/`bytes_down` and the skbs
    /// that carried it; `None` under splice. Absent in files of older
    /// daemons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockmap: Option<SockmapShare>,
    /// Its `engine` choice: `auto` (the daemon's engine) or `splice`.
    /// Absent in files of older daemons.
    #[serde(default)]
    pub engine: BackendEngine,
    /// Under sockmap, its downloads came in skbs small enough that
    /// `engine: splice` would move more (`forward::advice`); the daemon also
    /// logs this once. Absent in files of older daemons.
    #[serde(default)]
    pub splice_advised: bool,
    /// Wall time (Unix ms) of the last successful attempt or probe; `None`
    /// before the first. Kept by a counter reset.
    #[serde(default)]
    pub last_success_unix_ms: Option<u64>,
    /// Wall time (Unix ms) of the last failed attempt or probe; `None`
    /// before the first. Kept by a counter reset.
    #[serde(default)]
    pub last_failure_unix_ms: Option<u64>,
}

/// What the sockmap verdict redirected for one backend, every connection
/// ever: bytes (the part of the backend's bytes the kernel carried; the
/// user-space relay carries each connection's first bytes) and the skbs
/// they came in. Sockmap's cost goes by skbs, not bytes, so the bytes per
/// skb say how well it suits the backend: a backend that writes in small
/// pieces sends many small skbs, which splice moves in bigger batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SockmapShare {
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub skbs_up: u64,
    pub skbs_down: u64,
}

impl SockmapShare {
    /// Mean bytes per skb client -> backend; `None` before the first skb.
    #[must_use]
    pub fn bytes_per_skb_up(&self) -> Option<f64> {
        mean(self.bytes_up, self.skbs_up)
    }

    /// Mean bytes per skb backend -> client; `None` before the first skb.
    #[must_use]
    pub fn bytes_per_skb_down(&self) -> Option<f64> {
        mean(self.bytes_down, self.skbs_down)
    }
}

fn mean(bytes: u64, skbs: u64) -> Option<f64> {
    (skbs > 0).then(|| bytes as f64 / skbs as f64)
}

impl From<BackendBytes> for SockmapShare {
    fn from(kernel: BackendBytes) -> Self {
        Self {
            bytes_up: kernel.up,
            bytes_down: kernel.down,
            skbs_up: kernel.up_skbs,
            skbs_down: kernel.down_skbs,
        }
    }
}

fn enabled_label() -> String {
    AdminState::Enabled.label().to_owned()
}

impl DaemonCounters {
    /// The current values of `counters`.
    #[must_use]
    pub fn from_counters(counters: &Counters) -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        Self {
            accepted: counters.accepted.load(Relaxed),
            retries: counters.retries.load(Relaxed),
            exhausted: counters.exhausted.load(Relaxed),
            handshake_failures: HandshakeFailure::ALL
                .iter()
                .map(|&f| (f.label().to_owned(), counters.handshake_failures(f)))
                .collect(),
            pairs_finished: EngineName::CARRIERS
                .iter()
                .map(|&carrier| (carrier.to_string(), counters.pairs_finished(carrier)))
                .collect(),
            kernel_queue: counters.kernel_queue(),
        }
    }
}

impl BackendSnapshot {
    /// The entry for a backend with this status, scope, byte count and,
    /// under sockmap, what the verdict redirected for it (`kernel`).
    ///
    /// `now_unix_ms` is the wall time of `status`, to turn its "time since"
    /// figures into timestamps.
    #[must_use]
    pub fn new(
        status: &BackendStatus,
        scope: Option<&str>,
        bytes: ByteCount,
        kernel: Option<BackendBytes>,
        now_unix_ms: u64,
    ) -> Self {
        let at = |since: Option<std::time::Duration>| {
            since.map(|ago| {
                now_unix_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
            })
        };
        Self {
            name: status.name.clone(),
            address: status.address.clone(),
            scope: scope.map(str::to_owned),
            state: status.breaker.state.label().to_owned(),
            draining: status.draining,
            disabled: !status.admin.admits(),
            admin: status.admin.label().to_owned(),
            active: status.active,
            attempts: status.attempts,
            successes: status.successes,
            failures: FAILURE_LABELS
                .iter()
                .zip(status.failures)
                .map(|(label, count)| ((*label).to_owned(), count))
                .collect(),
            retries: status.retries,
            probes_ok: status.probes_ok,
            probes_failed: status.probes_failed,
            success_rate: status.success_rate,
            latency_ema_ms: status.latency.map(|l| l.as_secs_f64() * 1000.0),
            bytes_up: bytes.up,
            bytes_down: bytes.down,
            sockmap: kernel.map(SockmapShare::from),
            engine: status.engine,
            splice_advised: kernel
                .is_some_and(|kernel| advice::splice_advised(status.engine, &kernel).is_some()),
            last_success_unix_ms: at(status.since_success),
            last_failure_unix_ms: at(status.since_failure),
        }
    }

    /// Failed attempts of every category.
    #[must_use]
    pub fn failures_total(&self) -> u64 {
        self.failures.values().sum()
    }
}

impl Snapshot {
    /// How old the snapshot is at `now_unix_ms` (zero if it is from the
    /// future, e.g. after the wall clock stepped back).
    #[must_use]
    pub fn age(&self, now_unix_ms: u64) -> Duration {
        Duration::from_millis(now_unix_ms.saturating_sub(self.written_unix_ms))
    }

    /// Bytes over every backend.
    #[must_use]
    pub fn total_bytes(&self) -> ByteCount {
        let mut total = ByteCount::default();
        for backend in &self.backends {
            total += ByteCount {
                up: backend.bytes_up,
                down: backend.bytes_down,
            };
        }
        total
    }
}

/// Bytes per second one backend moved between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub up: f64,
    pub down: f64,
}

/// The throughput of each backend of `current` since `previous`, in the
/// order of `current.backends`: `None` for a backend that `previous` lacks,
/// whose counters went backwards (another daemon run), or when no time
/// passed between the two snapshots.
#[must_use]
pub fn rates(previous: &Snapshot, current: &Snapshot) -> Vec<Option<Rate>> {
    let elapsed_ms = current
        .written_unix_ms
        .saturating_sub(previous.written_unix_ms);
    let same_run =
        previous.pid == current.pid && previous.started_unix_ms == current.started_unix_ms;
    current
        .backends
        .iter()
        .map(|now| {
            if elapsed_ms == 0 || !same_run {
                return None;
            }
            let before = previous.backends.iter().find(|b| b.name == now.name)?;
            let up = now.bytes_up.checked_sub(before.bytes_up)?;
            let down = now.bytes_down.checked_sub(before.bytes_down)?;
            let secs = elapsed_ms as f64 / 1000.0;
            Some(Rate {
                up: up as f64 / secs,
                down: down as f64 / secs,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        backend::{BackendId, BreakerSnapshot, BreakerState},
        forward::BackendSlot,
    };

    fn status(name: &str) -> BackendStatus {
        BackendStatus {
            id: BackendId(1),
            name: name.to_owned(),
            address: "10.0.0.1:1080".to_owned(),
            slot: BackendSlot(0),
            engine: BackendEngine::Auto,
            draining: false,
            admin: AdminState::Enabled,
            breaker: BreakerSnapshot {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                since_change: Duration::ZERO,
                reopens_in: None,
                history: Vec::new(),
            },
            success_rate: None,
            latency: None,
            active: 0,
            attempts: 0,
            successes: 0,
            failures: [0; FAILURE_LABELS.len()],
            retries: 0,
            probes_ok: 0,
            probes_failed: 0,
            since_attempt: None,
            since_success: None,
            since_failure: None,
        }
    }

    fn snapshot(backends: Vec<BackendSnapshot>) -> Snapshot {
        Snapshot {
            version: FORMAT_VERSION,
            instance: "default".to_owned(),
            pid: 42,
            engine: "sockmap".to_owned(),
            started_unix_ms: 1_000,
            written_unix_ms: 5_000,
            uptime_secs: 4.0,
            counters: DaemonCounters::from_counters(&Counters::default()),
            backends,
        }
    }

    fn backend(name: &str, up: u64, down: u64) -> BackendSnapshot {
        BackendSnapshot::new(&status(name), None, ByteCount { up, down }, None, 0)
    }

    #[test]
    fn a_snapshot_survives_a_json_round_trip() {
        let mut busy = status("b");
        busy.success_rate = Some(0.75);
        busy.latency = Some(Duration::from_micros(2_500));
        busy.failures[2] = 3;
        busy.probes_ok = 4;
        busy.probes_failed = 1;
        let snap = snapshot(vec![
            backend("a", 1, 2),
            BackendSnapshot::new(&busy, Some("eu"), ByteCount { up: 10, down: 20 }, None, 0),
        ]);
        let text = serde_json::to_string_pretty(&snap).expect("serializes");
        let back: Snapshot = serde_json::from_str(&text).expect("parses");
        assert_eq!(back, snap);
        assert_eq!(back.backends[1].latency_ema_ms, Some(2.5));
        assert_eq!(back.backends[1].failures_total(), 3);
        assert_eq!(back.backends[1].failures["handshake"], 3);
        assert_eq!(
            (back.backends[1].probes_ok, back.backends[1].probes_failed),
            (4, 1)
        );
    }

    #[test]
    fn an_empty_window_is_null_not_zero() {
        let snap = snapshot(vec![backend("a", 0, 0)]);
        let json: serde_json::Value = serde_json::to_value(&snap).expect("serializes");
        assert!(json["backends"][0]["success_rate"].is_null(), "{json}");
        assert!(json["backends"][0]["latency_ema_ms"].is_null(), "{json}");
    }

    #[test]
    fn every_failure_and_handshake_label_is_listed_even_at_zero() {
        let snap = snapshot(vec![backend("a", 0, 0)]);
        assert_eq!(snap.backends[0].failures.len(), FAILURE_LABELS.len());
        assert_eq!(
            snap.counters.handshake_failures.len(),
            HandshakeFailure::ALL.len()
        );
    }

    #[test]
    fn daemon_counters_copy_every_value() {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = Counters::default();
        counters.accepted.store(9, Relaxed);
        counters.retries.store(2, Relaxed);
        counters.exhausted.store(1, Relaxed);
        counters.handshake_failed(HandshakeFailure::AuthFailed);
        let copy = DaemonCounters::from_counters(&counters);
        assert_eq!((copy.accepted, copy.retries, copy.exhausted), (9, 2, 1));
        assert_eq!(copy.handshake_failures["auth_failed"], 1);
        assert_eq!(copy.handshake_failures["timeout"], 0);
    }

    #[test]
    fn total_bytes_sum_every_backend() {
        let snap = snapshot(vec![backend("a", 1, 2), backend("b", 10, 20)]);
        assert_eq!(snap.total_bytes(), ByteCount { up: 11, down: 22 });
    }

    #[test]
    fn age_is_measured_from_the_write_and_never_negative() {
        let snap = snapshot(Vec::new());
        assert_eq!(snap.age(7_500), Duration::from_millis(2_500));
        assert_eq!(snap.age(10), Duration::ZERO);
    }

    #[test]
    fn rates_divide_the_byte_delta_by_the_time_between_snapshots() {
        let before = snapshot(vec![backend("a", 0, 0), backend("b", 5, 5)]);
        let mut after = snapshot(vec![
            backend("a", 2_000, 4_000),
            backend("b", 1, 5),
            backend("new", 7, 7),
        ]);
        after.written_unix_ms += 2_000;
        let rates = rates(&before, &after);
        assert_eq!(
            rates[0],
            Some(Rate {
                up: 1_000.0,
                down: 2_000.0
            })
        );
        assert_eq!(rates[1], None, "counters went backwards");
        assert_eq!(rates[2], None, "not in the previous snapshot");
    }

    #[test]
    fn no_rate_without_elapsed_time_or_across_daemon_runs() {
        let before = snapshot(vec![backend("a", 0, 0)]);
        let same_time = snapshot(vec![backend("a", 10, 10)]);
        assert_eq!(rates(&before, &same_time), vec![None]);
        let mut restarted = same_time.clone();
        restarted.written_unix_ms += 1_000;
        restarted.pid += 1;
        assert_eq!(rates(&before, &restarted), vec![None]);
    }
}
