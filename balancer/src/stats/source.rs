//! The one place a [`Snapshot`] is taken: the registry's backends (the pool
//! in order, then draining ones), the engine's per-backend bytes and the
//! daemon-wide counters. The status file writer and the HTTP side (`/metrics`,
//! the JSON API) both read through it, so they never disagree on a figure.

use std::{
    sync::Arc,
    time::{Instant, SystemTime},
};

use super::{
    Counters,
    identity::{Identity, SlotOwner},
    snapshot::{BackendSnapshot, DaemonCounters, FORMAT_VERSION, Snapshot},
    status_file,
};
use crate::{
    backend::{HistogramSnapshot, Registry},
    clock,
    forward::Engine,
};

/// What a snapshot is taken from.
#[derive(Debug)]
pub struct StatsSource {
    instance: String,
    engine: Arc<Engine>,
    registry: Arc<Registry>,
    counters: Arc<Counters>,
    started: Instant,
    started_wall: SystemTime,
}

/// A snapshot plus each backend's latency histogram, taken in one pass over
/// the registry: `latency[i]` belongs to `snapshot.backends[i]`. The
/// histogram stays out of [`Snapshot`] because the status file (a stable
/// serde format) does not carry it; only `/metrics` does.
#[derive(Clone, Debug, PartialEq)]
pub struct Scrape {
    pub snapshot: Snapshot,
    pub latency: Vec<HistogramSnapshot>,
}

impl StatsSource {
    /// A source for a daemon that started now.
    #[must_use]
    pub fn new(
        instance: String,
        engine: Arc<Engine>,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            instance,
            engine,
            registry,
            counters,
            started: clock::now(),
            started_wall: clock::wall_now(),
        }
    }

    /// The registry, for readers that need less than a snapshot (`/health`).
    #[must_use]
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The status and latency histograms at (`now`, `wall`). Bytes come from
    /// the engine, which knows where they are counted: the kernel's
    /// per-backend array for sockmap pairs plus the user-space counters of
    /// pairs that splice carries (so each byte is counted once).
    #[must_use]
    pub fn scrape(&self, now: Instant, wall: SystemTime) -> Scrape {
        let pool = self.registry.pool();
        let draining = self.registry.draining();
        let (backends, latency) = pool
            .backends()
            .iter()
            .chain(draining.iter())
            .map(|backend| {
                let (bytes, kernel) = self.engine.backend_counts(backend.slot);
                let snapshot = BackendSnapshot::new(
                    &backend.status(now),
                    backend.scope(),
                    bytes,
                    kernel,
                    status_file::unix_ms(wall),
                );
                (snapshot, backend.latency_histogram())
            })
            .unzip();
        Scrape {
            snapshot: Snapshot {
                version: FORMAT_VERSION,
                instance: self.instance.clone(),
                pid: std::process::id(),
                engine: self.engine.name().to_string(),
                started_unix_ms: status_file::unix_ms(self.started_wall),
                written_unix_ms: status_file::unix_ms(wall),
                uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
                counters: DaemonCounters::from_counters(&self.counters),
                backends,
            },
            latency,
        }
    }

    /// Zeroes the daemon-wide counters and every backend's (the pool's and
    /// draining ones'), the engine's byte counters included (the kernel's
    /// per-CPU array too). Breaker states, latency, active connections and
    /// timestamps stay. Returns how many backends were reset.
    pub fn reset_counters(&self) -> usize {
        self.counters.reset();
        let pool = self.registry.pool();
        let draining = self.registry.draining();
        let mut reset = 0;
        for backend in pool.backends().iter().chain(draining.iter()) {
            backend.reset_counters();
            self.engine.clear_slot(backend.slot);
            reset += 1;
        }
        reset
    }

    /// Which backend owns which slot now, for the identity file.
    #[must_use]
    pub fn identity(&self) -> Identity {
        let pool = self.registry.pool();
        let draining = self.registry.draining();
        Identity {
            instance: self.instance.clone(),
            pid: std::process::id(),
            engine: self.engine.name().to_string(),
            started_unix_ms: status_file::unix_ms(self.started_wall),
            backends: pool
                .backends()
                .iter()
                .chain(draining.iter())
                .map(|backend| SlotOwner {
                    slot: backend.slot.0,
                    id: backend.id.0,
                    name: backend.name().to_owned(),
                    address: backend.address().to_owned(),
                    scope: backend.scope().map(str::to_owned),
                    engine: backend.spec().engine,
                })
                .collect(),
        }
    }

    /// The status at (`now`, `wall`), without the histograms.
    #[must_use]
    pub fn snapshot(&self, now: Instant, wall: SystemTime) -> Snapshot {
        self.scrape(now, wall).snapshot
    }

    /// The status now.
    #[must_use]
    pub fn snapshot_now(&self) -> Snapshot {
        self.snapshot(clock::now(), clock::wall_now())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use super::*;
    use crate::{
        backend::{BackendSpec, HealthConfig},
        forward::{ForwardOptions, splice::SpliceEngine},
    };

    /// A source over a splice engine and two backends, `b` scoped to `eu`.
    pub(crate) fn two_backends() -> StatsSource {
        let registry = Arc::new(Registry::new(HealthConfig::default()));
        let mut scoped = BackendSpec::new("b", "10.0.0.2:1080");
        scoped.scope = Some("eu".to_owned());
        registry
            .replace_all(
                vec![BackendSpec::new("a", "10.0.0.1:1080"), scoped],
                clock::now(),
            )
            .expect("two backends");
        let engine = SpliceEngine::new(ForwardOptions::default()).expect("splice engine");
        let counters = Arc::new(Counters::default());
        counters.accepted.store(3, Ordering::Relaxed);
        StatsSource::new(
            "t".to_owned(),
            Arc::new(Engine::Splice(engine)),
            registry,
            counters,
        )
    }

    #[test]
    fn a_snapshot_lists_every_backend_of_the_pool_with_its_engine_bytes() {
        let source = two_backends();
        let later = clock::now() + Duration::from_secs(3);
        let snap = source.snapshot(later, clock::wall_now());
        assert_eq!(snap.engine, "splice");
        assert_eq!(snap.pid, std::process::id());
        assert_eq!(snap.counters.accepted, 3);
        assert!(snap.uptime_secs >= 3.0, "{}", snap.uptime_secs);
        let names: Vec<_> = snap.backends.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(snap.backends[1].scope.as_deref(), Some("eu"));
        assert_eq!(snap.backends[0].success_rate, None);
        assert_eq!(
            (snap.backends[0].bytes_up, snap.backends[0].bytes_down),
            (0, 0)
        );
    }

    #[test]
    fn a_scrape_pairs_each_backend_with_its_latency_histogram() {
        let source = two_backends();
        let pool = source.registry().pool();
        let _ = pool.backends()[1].record(Ok(Duration::from_millis(3)), clock::now());
        let scrape = source.scrape(clock::now(), clock::wall_now());
        assert_eq!(scrape.latency.len(), scrape.snapshot.backends.len());
        assert_eq!(scrape.latency[0].count, 0);
        assert_eq!(scrape.latency[1].count, 1);
    }
}
