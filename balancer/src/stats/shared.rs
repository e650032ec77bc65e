//! The memory the daemon's counters live in, and typed views into it.
//!
//! Under sockmap that memory is the `BACKEND_STATS` / `DAEMON_STATS` BPF
//! array maps, mapped into the daemon (see [`crate::bpf::MappedWords`]):
//! every `fetch_add` of a backend or daemon counter is a plain atomic
//! instruction on the map's pages, and `balancer stats` reads the same
//! pages through the pins, so the maps are the one source of truth. Without
//! BPF the same layout (`balancer_common::stat`) sits in ordinary process
//! memory and the status file carries it out.

use std::{
    ops::Deref,
    ptr::NonNull,
    sync::{Arc, atomic::AtomicU64},
    time::Instant,
};

use balancer_common::{BACKEND_STAT_WORDS, DAEMON_STAT_WORDS, MAX_BACKENDS};

use crate::bpf::MappedWords;

/// An array of `u64` atomics: a mapped BPF map or a heap block.
#[derive(Debug)]
pub enum SharedWords {
    /// A `BPF_F_MMAPABLE` map of the loaded object.
    Mapped(Arc<MappedWords>),
    /// Process memory (no BPF, or unit tests).
    Heap(Box<[AtomicU64]>),
}

impl SharedWords {
    /// `words` zeroed atomics on the heap.
    #[must_use]
    pub fn heap(words: usize) -> Self {
        Self::Heap((0..words).map(|_| AtomicU64::new(0)).collect())
    }

    /// Every word.
    #[must_use]
    pub fn words(&self) -> &[AtomicU64] {
        match self {
            Self::Mapped(mapped) => mapped.words(),
            Self::Heap(words) => words,
        }
    }
}

/// A `T` (an atomic or an array of them) inside a [`SharedWords`], which the
/// view keeps alive. Derefs to `T` with no check: the range was checked once
/// when the view was made, so a counter update costs what a field of a heap
/// struct costs.
pub struct View<T> {
    target: NonNull<T>,
    _owner: Arc<SharedWords>,
}

// SAFETY: `T` is an atomic (or an array of them), which is Send and Sync;
// the owner keeps the memory alive and in place for the view's lifetime.
unsafe impl<T: Sync> Send for View<T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for View<T> {}

impl<T> Deref for View<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `target` points into `_owner`'s words (checked in `at`),
        // whose memory (a Box or a mapping) never moves and lives as long as
        // this Arc.
        unsafe { self.target.as_ref() }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for View<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl<const N: usize> View<[AtomicU64; N]> {
    /// The `entry`-th block of `N` words of `owner`, `None` past its end.
    #[must_use]
    pub fn entry(owner: &Arc<SharedWords>, entry: usize) -> Option<Self> {
        let start = entry.checked_mul(N)?;
        let words = owner.words().get(start..start.checked_add(N)?)?;
        let block: &[AtomicU64; N] = words.try_into().ok()?;
        Some(Self {
            target: NonNull::from(block),
            _owner: Arc::clone(owner),
        })
    }

    /// `N` zeroed words of its own on the heap.
    #[must_use]
    pub fn alone() -> Self {
        let owner = Arc::new(SharedWords::heap(N));
        match Self::entry(&owner, 0) {
            Some(view) => view,
            // `heap(N)` holds exactly one entry of N words.
            None => unreachable!("a heap block of N words has entry 0"),
        }
    }

    /// The word at `index` as a view of its own.
    #[must_use]
    pub fn word(&self, index: usize) -> Option<View<AtomicU64>> {
        let word = self.get(index)?;
        Some(View {
            target: NonNull::from(word),
            _owner: Arc::clone(&self._owner),
        })
    }
}

/// Where the per-backend counters of a registry live: one block of
/// [`BACKEND_STAT_WORDS`] per slot, and the instant their `*_NS` timestamps
/// count from (`daemon_stat::EPOCH_UNIX_MS` says when that was on the wall).
#[derive(Clone, Debug)]
pub struct BackendStore {
    pub words: Arc<SharedWords>,
    pub epoch: Instant,
}

impl BackendStore {
    /// A store over `words` (at least `MAX_BACKENDS` blocks).
    #[must_use]
    pub fn new(words: Arc<SharedWords>, epoch: Instant) -> Self {
        Self { words, epoch }
    }

    /// A heap store of every slot (no BPF).
    #[must_use]
    pub fn heap(epoch: Instant) -> Self {
        Self::new(
            Arc::new(SharedWords::heap(
                BACKEND_STAT_WORDS * MAX_BACKENDS as usize,
            )),
            epoch,
        )
    }

    /// The block of `slot`, `None` past the store's end.
    #[must_use]
    pub fn slot(&self, slot: u32) -> Option<View<[AtomicU64; BACKEND_STAT_WORDS]>> {
        View::entry(&self.words, usize::try_from(slot).ok()?)
    }
}

impl PartialEq for BackendStore {
    /// The same memory: a reload that keeps the store keeps the config equal.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.words, &other.words) && self.epoch == other.epoch
    }
}

/// The daemon-wide block.
pub type DaemonWords = View<[AtomicU64; DAEMON_STAT_WORDS]>;

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use balancer_common::{BackendStats, stat};

    use super::*;

    #[test]
    fn a_write_through_a_slot_view_reads_back_through_the_pod_layout() {
        let store = BackendStore::heap(crate::clock::now());
        let view = store.slot(3).expect("slot 3 exists");
        view[stat::ATTEMPTS].fetch_add(5, Ordering::Relaxed);
        view[stat::FAILURES_0 + 2].fetch_add(1, Ordering::Relaxed);
        let words: Vec<u64> = store.words.words()[3 * BACKEND_STAT_WORDS..4 * BACKEND_STAT_WORDS]
            .iter()
            .map(|w| w.load(Ordering::Relaxed))
            .collect();
        let stats: BackendStats = *bytemuck::from_bytes(bytemuck::cast_slice(&words));
        assert_eq!(stats.words[stat::ATTEMPTS], 5);
        assert_eq!(stats.words[stat::FAILURES_0 + 2], 1);
        assert_eq!(stats.words.iter().sum::<u64>(), 6, "no other word moved");
    }

    #[test]
    fn a_slot_past_the_store_has_no_view() {
        let store = BackendStore::heap(crate::clock::now());
        assert!(store.slot(MAX_BACKENDS).is_none());
        assert!(store.slot(MAX_BACKENDS - 1).is_some());
    }

    #[test]
    fn a_word_view_shares_the_block() {
        let block: DaemonWords = View::alone();
        let word = block.word(2).expect("word 2");
        word.fetch_add(7, Ordering::Relaxed);
        assert_eq!(block[2].load(Ordering::Relaxed), 7);
        assert!(block.word(DAEMON_STAT_WORDS).is_none());
    }
}
