//! The sliding window of a backend's last N outcomes and its success rate.
//!
//! Lock-free: a slot is claimed by a ticket from one atomic cursor and its
//! old value is swapped out, so the success/failure counters are adjusted
//! by exactly what each slot held. No recorded outcome is ever lost, even
//! when many threads record at once.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};

const EMPTY: u8 = 0;
const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;

/// The last `capacity` outcomes of one backend.
#[derive(Debug)]
pub struct OutcomeWindow {
    slots: Box<[AtomicU8]>,
    cursor: AtomicU64,
    // Signed: a racing swap may decrement before the matching increment.
    successes: AtomicI64,
    failures: AtomicI64,
}

impl OutcomeWindow {
    /// A window over the last `capacity` outcomes (at least one).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            slots: (0..capacity).map(|_| AtomicU8::new(EMPTY)).collect(),
            cursor: AtomicU64::new(0),
            successes: AtomicI64::new(0),
            failures: AtomicI64::new(0),
        }
    }

    /// How many outcomes the window keeps.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Records one outcome, pushing out the oldest when the window is full.
    pub fn record(&self, success: bool) {
        let ticket = self.cursor.fetch_add(1, Ordering::Relaxed);
        // The modulo keeps the index below `slots.len()`, which is a usize.
        let index = usize::try_from(ticket % self.slots.len() as u64).unwrap_or(0);
        let new = if success { SUCCESS } else { FAILURE };
        self.counter(new).fetch_add(1, Ordering::Relaxed);
        let old = self.slots[index].swap(new, Ordering::AcqRel);
        if old != EMPTY {
            self.counter(old).fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn counter(&self, value: u8) -> &AtomicI64 {
        if value == SUCCESS {
            &self.successes
        } else {
            &self.failures
        }
    }

    /// Successes currently in the window.
    #[must_use]
    pub fn successes(&self) -> u64 {
        clamp(self.successes.load(Ordering::Relaxed))
    }

    /// Failures currently in the window.
    #[must_use]
    pub fn failures(&self) -> u64 {
        clamp(self.failures.load(Ordering::Relaxed))
    }

    /// Outcomes currently in the window.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.successes() + self.failures()
    }

    /// Whether nothing has been recorded yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Outcomes ever recorded, including those pushed out of the window.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    /// Share of successes in the window, `None` when it is empty: no data
    /// is "unknown", neither 0 % nor 100 %.
    #[must_use]
    pub fn success_rate(&self) -> Option<f64> {
        let successes = self.successes();
        let total = successes + self.failures();
        #[expect(
            clippy::cast_precision_loss,
            reason = "window sizes are far below 2^52"
        )]
        (total > 0).then(|| successes as f64 / total as f64)
    }
}

fn clamp(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn seven_successes_and_three_failures_are_seventy_percent() {
        let window = OutcomeWindow::new(10);
        (0..7).for_each(|_| window.record(true));
        (0..3).for_each(|_| window.record(false));
        assert_eq!(window.success_rate(), Some(0.7));
    }

    #[test]
    fn only_the_last_ten_of_fifteen_attempts_count() {
        let window = OutcomeWindow::new(10);
        (0..5).for_each(|_| window.record(false));
        (0..10).for_each(|_| window.record(true));
        assert_eq!(window.len(), 10);
        assert_eq!(window.failures(), 0);
        assert_eq!(window.success_rate(), Some(1.0));
        assert_eq!(window.total(), 15);
    }

    #[test]
    fn empty_window_is_unknown_not_zero() {
        let window = OutcomeWindow::new(10);
        assert!(window.is_empty());
        assert_eq!(window.success_rate(), None);
    }

    proptest::proptest! {
        #[test]
        fn the_window_always_matches_the_last_n_outcomes(
            capacity in 1usize..20,
            outcomes in proptest::collection::vec(proptest::bool::ANY, 0..100),
        ) {
            let window = OutcomeWindow::new(capacity);
            outcomes.iter().for_each(|ok| window.record(*ok));
            let last: Vec<bool> = outcomes.iter().rev().take(capacity).copied().collect();
            let successes = last.iter().filter(|ok| **ok).count() as u64;
            proptest::prop_assert_eq!(window.successes(), successes);
            proptest::prop_assert_eq!(window.len(), last.len() as u64);
            proptest::prop_assert_eq!(window.total(), outcomes.len() as u64);
        }
    }

    #[test]
    fn concurrent_recording_from_eight_threads_loses_no_count() {
        let window = Arc::new(OutcomeWindow::new(80_000));
        let small = Arc::new(OutcomeWindow::new(10));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let window = Arc::clone(&window);
                let small = Arc::clone(&small);
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let ok = (i + t) % 4 != 0;
                        window.record(ok);
                        small.record(ok);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("recording thread panicked");
        }
        assert_eq!(window.successes(), 60_000);
        assert_eq!(window.failures(), 20_000);
        assert_eq!(small.len(), 10);
        assert_eq!(small.total(), 80_000);
    }
}
