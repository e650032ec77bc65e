//! The daemon's side of `balancer stats`: every second, a [`Snapshot`]
//! (taken by the shared [`StatsSource`]) goes to the status file of the
//! instance's run directory; on shutdown the file goes.
//!
//! [`Snapshot`]: super::snapshot::Snapshot

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use super::{
    identity::{self, Identity},
    source::StatsSource,
    status_file::{self, StatusError},
};

/// How often the status file is rewritten.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Where the snapshots go, and what they are taken from.
#[derive(Debug)]
pub struct StatusWriter {
    /// The run directory (`Config::run_dir`).
    pub dir: PathBuf,
    pub source: Arc<StatsSource>,
}

impl StatusWriter {
    #[must_use]
    pub fn new(dir: PathBuf, source: Arc<StatsSource>) -> Self {
        Self { dir, source }
    }

    /// Takes a snapshot now and writes it.
    ///
    /// # Errors
    /// The status file could not be written.
    pub fn write_now(&self) -> Result<(), StatusError> {
        status_file::write(&self.dir, &self.source.snapshot_now())?;
        identity::write(&self.dir, &self.source.identity())
    }

    /// Rewrites the identity file when the backends changed since `last`.
    fn refresh_identity(&self, last: &mut Option<Identity>) -> Result<(), StatusError> {
        let now = self.source.identity();
        if last.as_ref() != Some(&now) {
            identity::write(&self.dir, &now)?;
            *last = Some(now);
        }
        Ok(())
    }

    /// Rewrites the file every [`INTERVAL`] until `shutdown`, then removes
    /// it. A failed write is logged once (and again after it recovered).
    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut failing = false;
        let mut identity = None;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let written = status_file::write(&self.dir, &self.source.snapshot_now())
                .and_then(|()| self.refresh_identity(&mut identity));
            match written {
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
        identity::remove(&self.dir);
        status_file::remove(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{clock, stats::source::tests::two_backends};

    #[tokio::test]
    async fn the_task_writes_at_once_and_removes_the_file_on_shutdown() {
        let dir = std::env::temp_dir().join(format!("balancer-writer-{}", std::process::id()));
        let writer = StatusWriter::new(dir.clone(), Arc::new(two_backends()));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(writer.run(shutdown.clone()));
        let path = status_file::path_in(&dir);
        // The first tick is due at once, but the timer fires it only once
        // its millisecond has passed: wait in time, not in turns of the
        // runtime (a fast machine takes 1,000 turns in under a millisecond).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !path.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let snap = status_file::read_live("t", &dir, clock::wall_now()).expect("written");
        assert_eq!(snap.backends.len(), 2);
        shutdown.cancel();
        task.await.expect("writer task");
        assert!(!path.exists());
        assert!(!dir.exists());
    }
}
