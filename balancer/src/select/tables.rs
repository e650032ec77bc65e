//! Lookup tables that make a pick cost O(log n) at most instead of O(n):
//! an alias table of one filtered set (`weighted_random`), a consistent-hash
//! ring and a membership bitmap (`consistent_hash`). They are built when
//! what they depend on changes (a new filtered set, a new pool
//! generation), shared behind `ArcSwapOption` so concurrent picks read
//! them without a lock, and are pure: no clock, no I/O, randomness from
//! the caller's RNG.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rand::Rng;

use crate::backend::mix64;

/// The cached value in `slot` if `fresh` accepts it, else a new one from
/// `build`, stored for the next pick. Two picks that find the cache stale
/// at once both build (identical values; the last store wins): cheaper
/// than making every reader wait on a lock.
pub(crate) fn cached<T>(
    slot: &ArcSwapOption<T>,
    fresh: impl FnOnce(&T) -> bool,
    build: impl FnOnce() -> T,
) -> Arc<T> {
    if let Some(value) = slot.load_full()
        && fresh(&value)
    {
        return value;
    }
    let value = Arc::new(build());
    slot.store(Some(Arc::clone(&value)));
    value
}

/// An alias table (Vose) of one filtered set: a weighted draw is two
/// random numbers and two independent reads, O(1), where a binary search
/// of cumulative weights would be a chain of dependent reads that miss
/// the cache on a large pool. Integer thresholds keep it exact.
#[derive(Debug)]
pub(crate) struct WeightTable {
    // Held so its address stays unique while the table lives, which makes
    // `Arc::ptr_eq` a sound cache key.
    set: Arc<[u32]>,
    // Sum of the weights; every bucket holds exactly this much.
    total: u64,
    // Bucket `i` is position `i` below `threshold[i]`, else `alias[i]`.
    threshold: Vec<u64>,
    alias: Vec<u32>,
}

impl WeightTable {
    /// The table of `set` (pool indices) under `weights` (by pool index).
    pub(crate) fn new(set: &Arc<[u32]>, weights: &[u32]) -> Self {
        let n = set.len();
        let total: u64 = set.iter().map(|&i| u64::from(weights[i as usize])).sum();
        // Weights scaled by n so that the mean bucket is exactly `total`
        // (n is at most the pool size and a weight 32 bits: no overflow).
        let count = u64::try_from(n).unwrap_or(u64::MAX);
        let mut scaled: Vec<u64> = set
            .iter()
            .map(|&i| u64::from(weights[i as usize]) * count)
            .collect();
        let mut alias: Vec<u32> = (0..u32::try_from(n).unwrap_or(u32::MAX)).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) =
            alias.iter().partition(|&&p| scaled[p as usize] < total);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            // `s` keeps its own weight; `l` fills the rest of the bucket.
            alias[s as usize] = l;
            scaled[l as usize] -= total - scaled[s as usize];
            if scaled[l as usize] < total {
                large.pop();
                small.push(l);
            }
        }
        // With exact integers whatever is left is exactly full.
        Self {
            set: Arc::clone(set),
            total,
            threshold: scaled,
            alias,
        }
    }

    /// Whether it was built for this very set.
    pub(crate) fn is_for(&self, set: &Arc<[u32]>) -> bool {
        Arc::ptr_eq(&self.set, set)
    }

    /// A position in the set, drawn in proportion to weight; `None` when
    /// every weight is zero.
    pub(crate) fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        let bucket = rng.random_range(0..self.threshold.len());
        if rng.random_range(0..self.total) < self.threshold[bucket] {
            Some(bucket)
        } else {
            Some(self.alias[bucket] as usize)
        }
    }
}

/// Membership of one filtered set as a bitmap over pool indices: one read
/// per test (10,000 backends fit in 1.25 KiB), where a binary search of
/// the set would be a chain of dependent reads.
#[derive(Debug)]
pub(crate) struct Members {
    set: Arc<[u32]>,
    bits: Vec<u64>,
}

impl Members {
    /// The bitmap of `set` in a pool of `len` backends.
    pub(crate) fn new(set: &Arc<[u32]>, len: usize) -> Self {
        let mut bits = vec![0u64; len.div_ceil(64)];
        for &index in set.iter() {
            bits[index as usize / 64] |= 1 << (index % 64);
        }
        Self {
            set: Arc::clone(set),
            bits,
        }
    }

    /// Whether it was built for this very set.
    pub(crate) fn is_for(&self, set: &Arc<[u32]>) -> bool {
        Arc::ptr_eq(&self.set, set)
    }

    /// Whether pool index `index` is in the set.
    pub(crate) fn contains(&self, index: u32) -> bool {
        self.bits
            .get(index as usize / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }
}

/// Points per unit of weight while the pool is small (ketama's 160 per
/// server): each backend's share stays within a few percent of its weight.
const POINTS_PER_WEIGHT: f64 = 160.0;

/// At most this many points on one ring (12 bytes each, 3 MiB): a large
/// pool gets fewer points per backend, trading some evenness for memory
/// and build time.
const MAX_POINTS: f64 = 262_144.0;

/// A consistent-hash ring: every backend owns points in proportion to its
/// weight, and a key belongs to the first owner clockwise from its hash.
/// A point's hash depends only on its backend's name hash and its rank, so
/// removing a backend moves only the keys that backend owned.
#[derive(Debug)]
pub(crate) struct Ring {
    // The pool generation, or the filtered set, the ring was built for.
    generation: u64,
    set: Option<Arc<[u32]>>,
    // Sorted by (hash, owner); `owners` holds pool indices.
    hashes: Vec<u64>,
    owners: Vec<u32>,
}

impl Ring {
    /// Points per unit of weight for a pool with these weights: the same
    /// for the whole pool's ring and for a ring restricted to a subset, so
    /// both give the same answers.
    fn scale(weights: &[u32]) -> f64 {
        let total: f64 = weights.iter().map(|w| f64::from((*w).max(1))).sum();
        POINTS_PER_WEIGHT.min(MAX_POINTS / total.max(1.0))
    }

    /// The ring of every backend of a pool.
    pub(crate) fn for_pool(generation: u64, key_hashes: &[u64], weights: &[u32]) -> Self {
        let scale = Self::scale(weights);
        let members = 0..u32::try_from(key_hashes.len()).unwrap_or(u32::MAX);
        Self::build(generation, None, scale, members, key_hashes, weights)
    }

    /// The pool's ring with only the points of `set`: a walk of it gives
    /// exactly what a walk of the whole ring that skips non-members gives,
    /// without the skipping.
    pub(crate) fn for_set(
        generation: u64,
        set: &Arc<[u32]>,
        key_hashes: &[u64],
        weights: &[u32],
    ) -> Self {
        let scale = Self::scale(weights);
        let members = set.iter().copied();
        Self::build(
            generation,
            Some(Arc::clone(set)),
            scale,
            members,
            key_hashes,
            weights,
        )
    }

    fn build(
        generation: u64,
        set: Option<Arc<[u32]>>,
        scale: f64,
        members: impl Iterator<Item = u32>,
        key_hashes: &[u64],
        weights: &[u32],
    ) -> Self {
        let mut points: Vec<(u64, u32)> = Vec::new();
        for index in members {
            let key = key_hashes[index as usize];
            for rank in 0..points_of(weights[index as usize], scale) {
                points.push((point_hash(key, rank), index));
            }
        }
        points.sort_unstable();
        let (hashes, owners) = points.into_iter().unzip();
        Self {
            generation,
            set,
            hashes,
            owners,
        }
    }

    /// Whether it is the whole-pool ring of this generation.
    pub(crate) fn is_for_pool(&self, generation: u64) -> bool {
        self.set.is_none() && self.generation == generation
    }

    /// Whether it was built for this very set of this generation.
    pub(crate) fn is_for_set(&self, generation: u64, set: &Arc<[u32]>) -> bool {
        self.generation == generation && self.set.as_ref().is_some_and(|s| Arc::ptr_eq(s, set))
    }

    /// Walks clockwise from `key` over at most `max_steps` points, pushing
    /// onto `out` each owner not yet in it that `allowed` accepts, until
    /// `out` holds `limit`. Returns whether it got there.
    pub(crate) fn walk(
        &self,
        key: u64,
        limit: usize,
        max_steps: usize,
        mut allowed: impl FnMut(u32) -> bool,
        out: &mut Vec<u32>,
    ) -> bool {
        let len = self.hashes.len();
        let mut at = self.hashes.partition_point(|&h| h < key);
        for _ in 0..len.min(max_steps) {
            if out.len() >= limit {
                break;
            }
            // Past the last point the ring starts over (no division per step).
            if at == len {
                at = 0;
            }
            let owner = self.owners[at];
            at += 1;
            if !out.contains(&owner) && allowed(owner) {
                out.push(owner);
            }
        }
        out.len() >= limit
    }
}

/// How many points a backend of this weight owns (at least one).
fn points_of(weight: u32, scale: f64) -> u32 {
    let points = (f64::from(weight.max(1)) * scale).round();
    // `scale` keeps the total under MAX_POINTS, so this fits easily.
    if points < 1.0 {
        1
    } else if points >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        #[expect(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            reason = "checked to be in 1..u32::MAX just above"
        )]
        let points = points as u32;
        points
    }
}

/// The hash of a backend's `rank`-th point.
fn point_hash(key: u64, rank: u32) -> u64 {
    mix64(key ^ mix64(u64::from(rank).wrapping_add(0x9e37_79b9_7f4a_7c15)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_weight_table_draws_in_proportion_to_weight_and_never_a_zero_weight() {
        let weights = [0, 1, 3, 0, 6];
        let set: Arc<[u32]> = Arc::from(vec![0, 1, 2, 3, 4]);
        let table = WeightTable::new(&set, &weights);
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = [0u32; 5];
        for _ in 0..100_000 {
            let pos = table.draw(&mut rng).expect("positive total");
            counts[pos] += 1;
        }
        assert_eq!((counts[0], counts[3]), (0, 0));
        for (pos, expected) in [(1, 10_000), (2, 30_000), (4, 60_000)] {
            assert!(
                counts[pos].abs_diff(expected) < 1_000,
                "{pos}: {} want ~{expected}",
                counts[pos]
            );
        }
    }

    #[test]
    fn a_membership_bitmap_holds_exactly_the_set() {
        let set: Arc<[u32]> = Arc::from(vec![0, 63, 64, 129]);
        let members = Members::new(&set, 130);
        let held: Vec<u32> = (0..200).filter(|i| members.contains(*i)).collect();
        assert_eq!(held, [0, 63, 64, 129]);
    }

    #[test]
    fn a_weight_table_of_only_zero_weights_draws_nothing() {
        let set: Arc<[u32]> = Arc::from(vec![0, 1]);
        let table = WeightTable::new(&set, &[0, 0]);
        assert_eq!(table.draw(&mut StdRng::seed_from_u64(1)), None);
    }

    #[test]
    fn a_ring_restricted_to_a_set_answers_like_the_whole_ring_skipping_the_others() {
        let key_hashes: Vec<u64> = (0..50u64).map(|i| mix64(i + 1)).collect();
        let weights: Vec<u32> = (0..50).map(|i| i % 3 + 1).collect();
        let whole = Ring::for_pool(1, &key_hashes, &weights);
        let set: Arc<[u32]> = Arc::from((0..50).filter(|i| i % 7 == 0).collect::<Vec<u32>>());
        let part = Ring::for_set(1, &set, &key_hashes, &weights);
        for key in (0..500u64).map(mix64) {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            assert!(whole.walk(key, 3, usize::MAX, |i| i % 7 == 0, &mut a));
            assert!(part.walk(key, 3, usize::MAX, |_| true, &mut b));
            assert_eq!(a, b);
        }
    }

    #[test]
    fn a_large_pool_gets_fewer_points_per_backend_but_at_least_one() {
        let small = Ring::for_pool(1, &[1, 2, 3], &[1, 1, 2]);
        assert_eq!(small.hashes.len(), 4 * 160);
        let weights = vec![1; 300_000];
        let key_hashes: Vec<u64> = (0..300_000u64).collect();
        let ring = Ring::for_pool(1, &key_hashes, &weights);
        assert_eq!(ring.hashes.len(), 300_000);
        assert_eq!(points_of(1, 160.0), 160);
        assert_eq!(points_of(u32::MAX, 160.0), u32::MAX);
    }
}
