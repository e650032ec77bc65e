//! The only place that reads time: pure code takes `now: Instant` as an
//! argument, and whoever owns the loop asks a [`Clock`] for it.
#![expect(
    clippy::disallowed_methods,
    reason = "the clock module is the one place allowed to read time"
)]

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A source of monotonic time, injected so tests can drive time by hand.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The operating system's monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// The current instant of the system clock, for code that has no `Clock`.
#[must_use]
pub fn now() -> Instant {
    Instant::now()
}

/// Wall-clock time, for timestamps read by other processes (the status file
/// of `balancer stats`); never for measuring intervals.
#[must_use]
pub fn wall_now() -> SystemTime {
    SystemTime::now()
}

/// A clock that only moves when told to: tests advance it explicitly so
/// nothing depends on how fast the machine runs.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl ManualClock {
    /// A clock standing at an arbitrary fixed instant.
    #[must_use]
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut offset = self.offset.lock().unwrap_or_else(|e| e.into_inner());
        *offset += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = *self.offset.lock().unwrap_or_else(|e| e.into_inner());
        self.base + offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced() {
        let clock = ManualClock::new();
        let start = clock.now();
        assert_eq!(clock.now(), start);
        clock.advance(Duration::from_secs(3));
        assert_eq!(clock.now() - start, Duration::from_secs(3));
    }
}
