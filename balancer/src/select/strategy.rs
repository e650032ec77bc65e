//! Strategies: each orders a filtered set of pool indices and returns the
//! best `limit` of them, distinct. None costs O(n) per pick on a large set:
//!
//! - `round_robin`: a cursor, O(limit).
//! - `least_connections`: an exact partial selection while the set has at
//!   most [`EXACT_LEAST_CONNECTIONS`] backends, where it is cheap and a
//!   tie rotation spreads equal backends; above, power of two choices
//!   (P2C, as linkerd2 and Finagle do): the less loaded of two random
//!   candidates, O(limit). P2C never puts the most loaded backend first
//!   and avoids the herd an exact minimum sends to one freshly emptied
//!   backend from many tasks at once (the counts they read are a moment
//!   old); the price is that the winner is the better of two, not the
//!   best of all, which on a pool that large evens out over picks.
//! - `lowest_latency`: a ranking cached per filtered set (see
//!   [`super::Selector`]).
//! - `weighted_random`: draws from an alias table of the filtered set,
//!   O(1) each; built once per filtered set, so it never yields a
//!   filtered backend and always finds one if any passes.
//! - `consistent_hash`: a ring with points per unit of weight, built once
//!   per pool generation; a binary search for the key, then a bounded walk
//!   clockwise past filtered backends. When few backends pass, a ring of
//!   just those (same points, so the same answers) is built once per
//!   filtered set instead.

use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rand::Rng;

use super::tables::{Members, Ring, WeightTable, cached};
use crate::backend::{Pool, hash_bytes};

/// How candidates are ordered once filters have run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each pick starts one backend further.
    #[default]
    RoundRobin,
    /// Fewest open connections per unit of weight: exact on a small set,
    /// the less loaded of two random picks (P2C) on a large one.
    LeastConnections,
    /// Lowest latency EMA first, with a tolerance band against flapping.
    LowestLatency,
    /// Random in proportion to weight (injected RNG).
    WeightedRandom,
    /// A weighted consistent-hash ring on the client IP: a client keeps
    /// its backend, and removing a backend moves only that backend's
    /// clients.
    ConsistentHash,
}

impl Strategy {
    /// The name used in configuration and logs.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::LowestLatency => "lowest_latency",
            Self::WeightedRandom => "weighted_random",
            Self::ConsistentHash => "consistent_hash",
        }
    }
}

/// The `k` indices of `set` with the smallest keys, smallest first; ties
/// keep the order of `set`. One pass with a small sorted buffer when `k` is
/// small (the usual failover budget), otherwise a partial selection.
pub(crate) fn smallest_k(
    set: &[u32],
    k: usize,
    mut key: impl FnMut(usize, u32) -> f64,
) -> Vec<u32> {
    let k = k.min(set.len());
    if k == 0 {
        return Vec::new();
    }
    let before =
        |a: &(f64, usize, u32), b: &(f64, usize, u32)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
    if k <= SMALL_K {
        let mut best: Vec<(f64, usize, u32)> = Vec::with_capacity(k + 1);
        for (pos, &index) in set.iter().enumerate() {
            let entry = (key(pos, index), pos, index);
            if best.len() == k
                && best
                    .last()
                    .is_some_and(|worst| before(&entry, worst).is_ge())
            {
                continue;
            }
            let at = best.partition_point(|held| before(held, &entry).is_lt());
            best.insert(at, entry);
            best.truncate(k);
        }
        return best.into_iter().map(|(_, _, index)| index).collect();
    }
    let mut keyed: Vec<(f64, usize, u32)> = set
        .iter()
        .enumerate()
        .map(|(pos, &index)| (key(pos, index), pos, index))
        .collect();
    if keyed.len() > k {
        keyed.select_nth_unstable_by(k - 1, before);
        keyed.truncate(k);
    }
    keyed.sort_unstable_by(before);
    keyed.into_iter().map(|(_, _, index)| index).collect()
}

/// Up to this many results, [`smallest_k`] keeps a sorted buffer.
const SMALL_K: usize = 16;

/// Round robin from `start`.
pub(crate) fn round_robin(set: &[u32], limit: usize, start: usize) -> Vec<u32> {
    let len = set.len();
    (0..limit.min(len))
        .map(|i| set[(start + i) % len])
        .collect()
}

/// Fewest active connections per weight; ties rotate with `start` so equal
/// backends share the load.
pub(crate) fn least_connections(pool: &Pool, set: &[u32], limit: usize, start: usize) -> Vec<u32> {
    let backends = pool.backends();
    let len = set.len().max(1);
    #[expect(
        clippy::cast_precision_loss,
        reason = "connection counts are far below 2^52"
    )]
    smallest_k(set, limit, |pos, index| {
        let backend = &backends[index as usize];
        let load = backend.active() as f64 / f64::from(backend.weight().max(1));
        // The rotation only breaks ties: it stays below one connection.
        load + ((pos + len - start % len) % len) as f64 / (len as f64 + 1.0) * 1e-6
    })
}

/// Latency EMA ascending; backends with no sample go last.
pub(crate) fn lowest_latency(pool: &Pool, set: &[u32], limit: usize) -> Vec<u32> {
    let backends = pool.backends();
    smallest_k(set, limit, |_, index| {
        backends[index as usize]
            .latency()
            .map_or(f64::INFINITY, |l| l.as_secs_f64())
    })
}

/// Efraimidis–Spirakis weighted sampling without replacement: key
/// `-ln(u) / w`, smallest first. Weight 0 only after everything else.
/// O(n): the fallback of [`weighted_draws`].
pub(crate) fn weighted_random<R: Rng + ?Sized>(
    pool: &Pool,
    set: &[u32],
    limit: usize,
    rng: &mut R,
) -> Vec<u32> {
    let weights = pool.weights();
    smallest_k(set, limit, |_, index| {
        let weight = weights[index as usize];
        let u: f64 = 1.0 - rng.random::<f64>();
        if weight == 0 {
            f64::MAX - u
        } else {
            -u.ln() / f64::from(weight)
        }
    })
}

/// Weighted sampling without replacement by repeated draws from `table`
/// (built for `set`), skipping repeats: the first candidate is exactly
/// weight-proportional. If the draws run out before `limit` distinct ones
/// (zero weights, or one backend holding nearly all the weight), the rest
/// come from [`weighted_random`] over the set, so every member stays
/// reachable.
pub(crate) fn weighted_draws<R: Rng + ?Sized>(
    table: &WeightTable,
    pool: &Pool,
    set: &[u32],
    limit: usize,
    rng: &mut R,
) -> Vec<u32> {
    let limit = limit.min(set.len());
    let mut chosen = Vec::with_capacity(limit);
    for _ in 0..DRAWS_PER_CANDIDATE * limit {
        if chosen.len() == limit {
            return chosen;
        }
        let Some(pos) = table.draw(rng) else { break };
        if !chosen.contains(&set[pos]) {
            chosen.push(set[pos]);
        }
    }
    if chosen.len() < limit {
        top_up(&mut chosen, limit, weighted_random(pool, set, limit, rng));
    }
    chosen
}

/// Adds members of `rest` not chosen yet until `chosen` holds `limit`: the
/// exact fallback of a sampler whose draws ran out.
fn top_up(chosen: &mut Vec<u32>, limit: usize, rest: Vec<u32>) {
    for index in rest {
        if chosen.len() == limit {
            break;
        }
        if !chosen.contains(&index) {
            chosen.push(index);
        }
    }
}

/// Random draws allowed per wanted candidate before a sampler falls back
/// to a scan; at least half of the set is always still unchosen, so the
/// fallback is for degenerate weights, not bad luck.
const DRAWS_PER_CANDIDATE: usize = 32;

/// Up to this many backends in the filtered set, `least_connections` is an
/// exact scan; above, power of two choices.
pub(crate) const EXACT_LEAST_CONNECTIONS: usize = 16;

/// Whether backend `a` should be preferred to `b`: fewer active
/// connections per unit of weight; on a tie the higher weight (more
/// capacity), then `a` (the first random draw, so ties stay random). Not
/// latency: on a large pool reading the EMA too costs one more cache miss
/// per sample, which doubled the pick (`lowest_latency` is for that).
fn less_loaded(pool: &Pool, a: u32, b: u32) -> bool {
    let (x, y) = (&pool.backends()[a as usize], &pool.backends()[b as usize]);
    // Compared as x.active / x.weight vs y.active / y.weight, without division.
    let lhs = u128::from(x.active()) * u128::from(y.weight().max(1));
    let rhs = u128::from(y.active()) * u128::from(x.weight().max(1));
    match lhs.cmp(&rhs) {
        std::cmp::Ordering::Less => true,
        std::cmp::Ordering::Greater => false,
        std::cmp::Ordering::Equal => x.weight() >= y.weight(),
    }
}

/// Power of two choices: the first candidate is the less loaded of two
/// distinct members of `set` drawn at random; each next one is the less
/// loaded of the previous round's loser and a fresh draw, so every
/// candidate still beats a rival and a pick reads `limit + 1` backends,
/// not `2 * limit` (on a large pool each read is a cache miss). Use it
/// while at most half of the set is wanted, so draws rarely repeat; if
/// the draw budget still runs out, the rest come from an exact scan.
pub(crate) fn two_choices<R: Rng + ?Sized>(
    pool: &Pool,
    set: &[u32],
    limit: usize,
    rng: &mut R,
) -> Vec<u32> {
    let limit = limit.min(set.len());
    let mut chosen: Vec<u32> = Vec::with_capacity(limit);
    let mut budget = DRAWS_PER_CANDIDATE * limit;
    let mut draw = |chosen: &[u32], rival: Option<u32>, budget: &mut usize| {
        while *budget > 0 {
            *budget -= 1;
            let index = set[rng.random_range(0..set.len())];
            if Some(index) != rival && !chosen.contains(&index) {
                return Some(index);
            }
        }
        None
    };
    let mut rival = draw(&chosen, None, &mut budget);
    while chosen.len() < limit {
        let Some(a) = rival else { break };
        // The last member left has no rival.
        if set.len() - chosen.len() == 1 {
            chosen.push(a);
            break;
        }
        let Some(b) = draw(&chosen, Some(a), &mut budget) else {
            break;
        };
        let (winner, loser) = if less_loaded(pool, a, b) {
            (a, b)
        } else {
            (b, a)
        };
        chosen.push(winner);
        rival = Some(loser);
    }
    if chosen.len() < limit {
        top_up(&mut chosen, limit, least_connections(pool, set, limit, 0));
    }
    chosen
}

/// Stable hash of a client address.
#[must_use]
pub fn hash_ip(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Points walked per wanted candidate on the whole-pool ring before it
/// gives up and the caller uses a ring of the filtered set: at least a
/// quarter of the points are allowed when the whole ring is walked, so
/// this is rarely reached.
pub(crate) const RING_WALK_STEPS: usize = 64;

/// A filtered set smaller than the pool by more than this factor walks a
/// ring of its own: walking the whole ring would skip too many points.
pub(crate) const SPARSE_FACTOR: usize = 4;

/// The rings `consistent_hash` walks, each rebuilt only when what it
/// depends on changes: the whole pool's ring (per pool generation), the
/// filtered set as a bitmap to walk it with, and the ring of a sparse
/// filtered set (both per filtered set).
#[derive(Debug, Default)]
pub(crate) struct HashRings {
    ring: ArcSwapOption<Ring>,
    members: ArcSwapOption<Members>,
    set_ring: ArcSwapOption<Ring>,
}

impl HashRings {
    /// The first `limit` distinct members of `set` clockwise from the
    /// client's hash: on the whole pool's ring, walked past filtered
    /// backends, while at least a quarter of the pool passes; otherwise
    /// (or if the bounded walk fell short) on a ring of the filtered set
    /// alone, which gives the same answers.
    pub(crate) fn order(
        &self,
        pool: &Pool,
        set: &Arc<[u32]>,
        limit: usize,
        client: IpAddr,
    ) -> Vec<u32> {
        let limit = limit.min(set.len());
        let key = hash_ip(client);
        let generation = pool.generation();
        let mut out = Vec::with_capacity(limit);
        if set.len() * SPARSE_FACTOR >= pool.len() {
            let ring = cached(
                &self.ring,
                |ring| ring.is_for_pool(generation),
                || Ring::for_pool(generation, pool.key_hashes(), pool.weights()),
            );
            let steps = RING_WALK_STEPS * limit.max(1);
            let found = if set.len() == pool.len() {
                ring.walk(key, limit, steps, |_| true, &mut out)
            } else {
                let members = cached(
                    &self.members,
                    |members| members.is_for(set),
                    || Members::new(set, pool.len()),
                );
                ring.walk(key, limit, steps, |i| members.contains(i), &mut out)
            };
            if found {
                return out;
            }
            out.clear();
        }
        let ring = cached(
            &self.set_ring,
            |ring| ring.is_for_set(generation, set),
            || Ring::for_set(generation, set, pool.key_hashes(), pool.weights()),
        );
        // Every point of this ring is allowed: one lap finds them all.
        ring.walk(key, limit, usize::MAX, |_| true, &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_k_returns_the_k_smallest_in_order_with_stable_ties() {
        let set = [10, 11, 12, 13, 14];
        let keys = [5.0, 1.0, 3.0, 1.0, 0.5];
        assert_eq!(smallest_k(&set, 3, |pos, _| keys[pos]), vec![14, 11, 13]);
        assert_eq!(smallest_k(&set, 9, |pos, _| keys[pos]).len(), 5);
        assert!(smallest_k(&set, 0, |pos, _| keys[pos]).is_empty());
    }

    #[test]
    fn both_ways_of_taking_the_smallest_k_agree() {
        let set: Vec<u32> = (0..200).collect();
        let key = |_: usize, index: u32| f64::from((index * 7919) % 101);
        let small = smallest_k(&set, SMALL_K, key);
        let mut large = smallest_k(&set, SMALL_K + 1, key);
        large.truncate(SMALL_K);
        assert_eq!(small, large);
    }

    #[test]
    fn round_robin_wraps_around_the_set() {
        assert_eq!(round_robin(&[1, 2, 3], 3, 2), vec![3, 1, 2]);
        assert_eq!(round_robin(&[1, 2, 3], 5, 4), vec![2, 3, 1]);
    }
}
