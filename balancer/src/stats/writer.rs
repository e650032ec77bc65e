//! The daemon's side of `balancer stats`: every second, a [`Snapshot`] of
//! the counters, the registry and the engine's per-backend bytes goes to the
//! status file of the instance's run directory; on shutdown the file goes.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio_util::sync::CancellationToken;

use super::{
    Counters,
    snapshot::{BackendSnapshot, DaemonCounters, FORMAT_VERSION, Snapshot},
    status_file::{self, StatusError},
};
use crate::{backend::Registry, clock, forward::Engine};

/// How often the status file is rewritten.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// What a snapshot is taken from, and where it goes.
#[derive(Debug)]
pub struct StatusWriter {
    pub instance: String,
    /// The run directory (`Config::run_dir`).
    pub dir: PathBuf,
    pub engine: Arc<Engine>,
    pub registry: Arc<Registry>,
    pub counters: Arc<Counters>,
    started: Instant,
    started_wall: SystemTime,
}

impl StatusWriter {
    /// A writer for a daemon that started now.
    #[must_use]
    pub fn new(
        instance: String,
        dir: PathBuf,
        engine: Arc<Engine>,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            instance,
            dir,
            engine,
            registry,
            counters,
            started: clock::now(),
            started_wall: clock::wall_now(),
        }
    }

    /// The status at (`now`, `wall`). Bytes come from the engine, which
    /// knows where they are counted: the kernel's per-backend array for
    /// sockmap pairs plus the user-space counters of pairs that splice
    /// carries (so each byte is counted once).
    #[must_use]
    pub fn snapshot(&self, now: Instant, wall: SystemTime) -> Snapshot {
        let pool = self.registry.pool();
        let draining = self.registry.draining();
        let backends = pool
            .backends()
            .iter()
            .chain(draining.iter())
            .map(|backend| {
                BackendSnapshot::new(
                    &backend.status(now),
                    backend.scope(),
                    self.engine.backend_bytes(backend.slot),
                )
            })
            .collect();
        Snapshot {
            version: FORMAT_VERSION,
            instance: self.instance.clone(),
            pid: std::process::id(),
            engine: self.engine.name().to_string(),
            started_unix_ms: status_file::unix_ms(self.started_wall),
            written_unix_ms: status_file::unix_ms(wall),
            uptime_secs: now.saturating_duration_since(self.started).as_secs_f64(),
            counters: DaemonCounters::from_counters(&self.counters),
            backends,
        }
    }

    /// Takes a snapshot now and writes it.
    ///
    /// # Errors
    /// The status file could not be written.
    pub fn write_now(&self) -> Result<(), StatusError> {
        status_file::write(&self.dir, &self.snapshot(clock::now(), clock::wall_now()))
    }

    /// Rewrites the file every [`INTERVAL`] until `shutdown`, then removes
    /// it. A failed write is logged once (and again after it recovered).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            match self.write_now() {
                Ok(()) if failing => {
                    tracing::info!(dir = %self.dir.display(), "status file written again");
                    failing = false;
                }
                Ok(()) => {}
                Err(error) if !failing => {
                    tracing::warn!(%error, "cannot write the status file; `balancer stats` will not see this instance");
                    failing = true;
                }
                Err(_) => {}
            }
        }
        status_file::remove(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::{
        backend::{BackendSpec, HealthConfig},
        forward::{ForwardOptions, splice::SpliceEngine},
    };

    fn writer(dir: PathBuf) -> StatusWriter {
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
        StatusWriter::new(
            "t".to_owned(),
            dir,
            Arc::new(Engine::Splice(engine)),
            registry,
            counters,
        )
    }

    #[test]
    fn a_snapshot_lists_every_backend_of_the_pool_with_its_engine_bytes() {
        let writer = writer(PathBuf::from("/nonexistent"));
        let later = clock::now() + Duration::from_secs(3);
        let snap = writer.snapshot(later, clock::wall_now());
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

    #[tokio::test]
    async fn the_task_writes_at_once_and_removes_the_file_on_shutdown() {
        let dir = std::env::temp_dir().join(format!("balancer-writer-{}", std::process::id()));
        let writer = writer(dir.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(writer.run(shutdown.clone()));
        let path = status_file::path_in(&dir);
        // The first tick is immediate: a few turns of this single-threaded
        // runtime let the task write.
        for _ in 0..1_000 {
            if path.exists() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let snap = status_file::read_live("t", &dir, clock::wall_now()).expect("written");
        assert_eq!(snap.backends.len(), 2);
        shutdown.cancel();
        task.await.expect("writer task");
        assert!(!path.exists());
        assert!(!dir.exists());
    }
}
