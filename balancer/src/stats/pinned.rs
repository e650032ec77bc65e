//! A [`Snapshot`] read straight from the pinned maps of a running instance
//! (`BACKEND_BYTES`, `BACKEND_STATS`, `DAEMON_STATS`) joined with its
//! identity file: what `balancer stats` shows under sockmap, with no help
//! from the daemon beyond the counters it keeps in those maps.

use std::{path::Path, time::SystemTime};

use balancer_common::{
    BackendBytes, BackendStats, DaemonStats, FAILURE_CATEGORIES, UNKNOWN, daemon_stat, stat,
};

use super::{
    HandshakeFailure,
    identity::{self, SlotOwner},
    snapshot::{BackendSnapshot, DaemonCounters, FORMAT_VERSION, KernelQueue, Snapshot},
    status_file::{self, StatusError},
};
use crate::{
    backend::{
        AdminState, FAILURE_LABELS, admin_from_code, breaker_from_code, latency::LatencyEma,
    },
    bpf::{BpfError, PinnedStats},
    forward::{EngineName, advice},
};

/// The pins could not give a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum PinnedError {
    #[error(transparent)]
    Bpf(#[from] BpfError),
    #[error(
        "instance `{instance}` is not running (its pins under {dir} name pid {pid}, which has exited)"
    )]
    DeadPid {
        instance: String,
        dir: String,
        pid: u64,
    },
    #[error(
        "instance `{instance}` has pinned maps but no identity file in {dir} (not started yet, or it was removed)"
    )]
    NoIdentity { instance: String, dir: String },
    #[error(transparent)]
    Identity(#[from] StatusError),
}

/// Reads the instance whose maps are pinned in `pin_dir` and whose identity
/// file is in `run_dir`, at wall time `now`.
///
/// # Errors
/// [`PinnedError`]: pins unreadable (privilege), daemon gone, no identity.
pub fn read(
    instance: &str,
    pin_dir: &Path,
    run_dir: &Path,
    now: SystemTime,
) -> Result<Snapshot, PinnedError> {
    let pins = PinnedStats::open(pin_dir)?;
    let daemon = pins.daemon_stats();
    let pid = daemon.words[daemon_stat::PID];
    let no_identity = || PinnedError::NoIdentity {
        instance: instance.to_owned(),
        dir: run_dir.display().to_string(),
    };
    // Pinned but not stamped yet: the daemon is starting.
    if pid == 0 {
        return Err(no_identity());
    }
    if !u32::try_from(pid).is_ok_and(status_file::pid_alive) {
        return Err(PinnedError::DeadPid {
            instance: instance.to_owned(),
            dir: pin_dir.display().to_string(),
            pid,
        });
    }
    let identity = identity::read(run_dir)?.ok_or_else(no_identity)?;
    if u64::from(identity.pid) != pid {
        return Err(no_identity());
    }
    let mut backends = Vec::with_capacity(identity.backends.len());
    for owner in &identity.backends {
        let stats = pins.backend_stats(owner.slot);
        // Freed and reused since the file was written: not this backend.
        if stats.words[stat::BACKEND_ID] != owner.id {
            continue;
        }
        let kernel = pins.backend_bytes(owner.slot)?;
        let epoch_unix_ms = daemon.words[daemon_stat::EPOCH_UNIX_MS];
        backends.push(backend(owner, &stats, kernel, epoch_unix_ms));
    }
    let written_unix_ms = status_file::unix_ms(now);
    Ok(Snapshot {
        version: FORMAT_VERSION,
        instance: identity.instance.clone(),
        pid: identity.pid,
        engine: identity.engine.clone(),
        started_unix_ms: identity.started_unix_ms,
        written_unix_ms,
        uptime_secs: written_unix_ms.saturating_sub(identity.started_unix_ms) as f64 / 1000.0,
        counters: counters(&daemon),
        backends,
    })
}

fn counters(daemon: &DaemonStats) -> DaemonCounters {
    DaemonCounters {
        accepted: daemon.words[daemon_stat::ACCEPTED],
        retries: daemon.words[daemon_stat::RETRIES],
        exhausted: daemon.words[daemon_stat::EXHAUSTED],
        handshake_failures: HandshakeFailure::ALL
            .iter()
            .map(|&failure| {
                let count = daemon.words[daemon_stat::HANDSHAKE_FAILED_0 + failure as usize];
                (failure.label().to_owned(), count)
            })
            .collect(),
        pairs_finished: EngineName::CARRIERS
            .iter()
            .map(|&carrier| {
                let count = daemon.words[daemon_stat::PAIRS_FINISHED_0 + carrier.carrier_index()];
                (carrier.to_string(), count)
            })
            .collect(),
        kernel_queue: KernelQueue::from_words(|index| daemon.words[index]),
    }
}

/// One row from a slot's words and what the verdict redirected for the
/// slot (`kernel`); `Identity` gives the names. The `*_NS` stamps count from
/// the daemon's epoch, `epoch_unix_ms` on the wall.
fn backend(
    owner: &SlotOwner,
    stats: &BackendStats,
    kernel: BackendBytes,
    epoch_unix_ms: u64,
) -> BackendSnapshot {
    let word = |index: usize| stats.words[index];
    let stamp = |index: usize| {
        stat::stamp_nanos(word(index)).map(|nanos| epoch_unix_ms.saturating_add(nanos / 1_000_000))
    };
    let admin = admin_from_code(word(stat::ADMIN_STATE)).unwrap_or(AdminState::Enabled);
    BackendSnapshot {
        name: owner.name.clone(),
        address: owner.address.clone(),
        scope: owner.scope.clone(),
        state: breaker_from_code(word(stat::BREAKER_STATE))
            .map_or("unknown", |state| state.label())
            .to_owned(),
        draining: word(stat::REMOVED) != 0,
        disabled: !admin.admits(),
        admin: admin.label().to_owned(),
        active: word(stat::ACTIVE),
        attempts: word(stat::ATTEMPTS),
        successes: word(stat::SUCCESSES),
        failures: FAILURE_LABELS
            .iter()
            .zip(&stats.words[stat::FAILURES_0..stat::FAILURES_0 + FAILURE_CATEGORIES])
            .map(|(label, count)| ((*label).to_owned(), *count))
            .collect(),
        retries: word(stat::RETRIES),
        probes_ok: word(stat::PROBES_OK),
        probes_failed: word(stat::PROBES_FAILED),
        success_rate: match word(stat::SUCCESS_RATE_PPM) {
            UNKNOWN => None,
            ppm => Some(ppm as f64 / 1e6),
        },
        latency_ema_ms: LatencyEma::read(word(stat::LATENCY_EMA_SECONDS_F64))
            .map(|latency| latency.as_secs_f64() * 1000.0),
        // The kernel's bytes plus those user space moved (the relay, and
        // splice for pairs the sockmap could not take): each byte counted
        // in one of them.
        bytes_up: kernel.up.wrapping_add(word(stat::FALLBACK_BYTES_UP)),
        bytes_down: kernel.down.wrapping_add(word(stat::FALLBACK_BYTES_DOWN)),
        sockmap: Some(kernel.into()),
        engine: owner.engine,
        splice_advised: advice::splice_advised(owner.engine, &kernel).is_some(),
        last_success_unix_ms: stamp(stat::LAST_SUCCESS_NS),
        last_failure_unix_ms: stamp(stat::LAST_FAILURE_NS),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use balancer_common::BACKEND_STAT_WORDS;

    use super::*;
    use crate::{
        backend::{BackendSpec, FailureCategory, HealthConfig, Registry},
        clock,
        stats::shared::BackendStore,
    };

    #[test]
    fn a_row_built_from_slot_words_equals_what_the_backend_recorded() {
        let store = BackendStore::heap(clock::now());
        let registry = Arc::new(Registry::new(HealthConfig {
            stats: Some(store.clone()),
            ..HealthConfig::default()
        }));
        registry
            .replace_all(vec![BackendSpec::new("a", "10.0.0.1:1080")], clock::now())
            .expect("one backend");
        let backend = Arc::clone(&registry.pool().backends()[0]);
        let now = clock::now();
        let _ = backend.record(Ok(std::time::Duration::from_millis(4)), now);
        let _ = backend.record(Err(FailureCategory::ConnectRefused), now);
        let _open = backend.connection_opened();
        let view = store.slot(backend.slot.0).expect("slot");
        let words: Vec<u64> = view.iter().map(|w| w.load(Ordering::Relaxed)).collect();
        let mut stats = BackendStats {
            words: [0; BACKEND_STAT_WORDS],
        };
        stats.words.copy_from_slice(&words);
        let owner = SlotOwner {
            slot: backend.slot.0,
            id: backend.id.0,
            name: "a".to_owned(),
            address: "10.0.0.1:1080".to_owned(),
            scope: None,
            engine: crate::forward::BackendEngine::Auto,
        };
        assert_eq!(stats.words[stat::BACKEND_ID], backend.id.0);
        let mut row = backend_row(&owner, &stats);
        let status = backend.status(now);
        let mut expected = BackendSnapshot::new(
            &status,
            None,
            crate::forward::ByteCount { up: 1, down: 2 },
            Some(KERNEL),
            0,
        );
        // Both stamped (a success and a failure were recorded); the two
        // paths count from different clocks, so compare the rest exactly.
        for (stamps, what) in [(&mut row, "row"), (&mut expected, "status")] {
            assert!(
                stamps.last_success_unix_ms.take().is_some(),
                "{what}: no success time"
            );
            assert!(
                stamps.last_failure_unix_ms.take().is_some(),
                "{what}: no failure time"
            );
        }
        assert_eq!(row, expected);
        assert_eq!((row.attempts, row.successes, row.active), (2, 1, 1));
        assert_eq!(row.failures["connect_refused"], 1);
        assert_eq!(row.success_rate, Some(0.5));
    }

    // Needs root (CAP_BPF): real pins of a loaded object, read back the way
    // `balancer stats` reads them.
    #[test]
    fn pins_read_back_what_the_daemon_wrote_and_need_a_live_pid_and_an_identity() {
        let pin_dir = std::path::PathBuf::from(format!(
            "/sys/fs/bpf/balancer-test-pinned-{}",
            std::process::id()
        ));
        let run_dir =
            std::env::temp_dir().join(format!("balancer-pinned-run-{}", std::process::id()));
        let bpf =
            crate::bpf::Bpf::load(Some(&pin_dir), false).expect("load with pins (needs root)");
        let daemon = Arc::new(crate::stats::shared::SharedWords::Mapped(
            bpf.daemon_stats(),
        ));
        let counters = crate::stats::Counters::in_words(
            crate::stats::shared::View::entry(&daemon, 0).expect("entry 0"),
        );
        let store = BackendStore::new(
            Arc::new(crate::stats::shared::SharedWords::Mapped(
                bpf.backend_stats(),
            )),
            clock::now(),
        );
        let registry = Registry::new(HealthConfig {
            stats: Some(store),
            ..HealthConfig::default()
        });
        let backend = registry
            .register(
                BackendSpec::new("a", "10.0.0.1:1080"),
                crate::backend::Origin::Config,
                clock::now(),
            )
            .expect("registers");
        let _ = backend.record(Err(FailureCategory::ConnectTimeout), clock::now());
        counters.accepted.fetch_add(2, Ordering::Relaxed);

        let not_started = read("t", &pin_dir, &run_dir, clock::wall_now());
        assert!(
            matches!(not_started, Err(PinnedError::NoIdentity { .. })),
            "{not_started:?}"
        );
        counters.stamp_owner(4_194_305, 0);
        let dead = read("t", &pin_dir, &run_dir, clock::wall_now());
        assert!(matches!(dead, Err(PinnedError::DeadPid { .. })), "{dead:?}");
        counters.stamp_owner(std::process::id(), 0);
        identity::write(
            &run_dir,
            &identity::Identity {
                instance: "t".to_owned(),
                pid: std::process::id(),
                engine: "sockmap".to_owned(),
                started_unix_ms: 0,
                backends: vec![SlotOwner {
                    slot: backend.slot.0,
                    id: backend.id.0,
                    name: "a".to_owned(),
                    address: "10.0.0.1:1080".to_owned(),
                    scope: None,
                    engine: crate::forward::BackendEngine::Auto,
                }],
            },
        )
        .expect("identity");
        let snapshot = read("t", &pin_dir, &run_dir, clock::wall_now());
        identity::remove(&run_dir);
        let _ = std::fs::remove_dir(&run_dir);
        drop(bpf);
        let snapshot = snapshot.expect("a live instance");
        assert_eq!(snapshot.counters.accepted, 2);
        assert_eq!(snapshot.backends.len(), 1);
        assert_eq!(snapshot.backends[0].attempts, 1);
        assert_eq!(snapshot.backends[0].failures["connect_timeout"], 1);
        assert_eq!(snapshot.backends[0].success_rate, Some(0.0));
        // Read from the pins, the verdict's share is there, zero so far.
        assert_eq!(
            snapshot.backends[0].sockmap,
            Some(crate::stats::snapshot::SockmapShare::default())
        );
    }

    /// The kernel's share of the row: 1 byte up, 2 down, in 1 and 2 skbs.
    const KERNEL: BackendBytes = BackendBytes {
        up: 1,
        down: 2,
        up_skbs: 1,
        down_skbs: 2,
    };

    fn backend_row(owner: &SlotOwner, stats: &BackendStats) -> BackendSnapshot {
        backend(owner, stats, KERNEL, 1_000)
    }
}
