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
