//! Strategies: each orders a filtered set of pool indices and returns the
//! best `limit` of them, distinct, in O(n) plus O(limit log limit) (a
//! partial selection, never a full sort per pick).

use std::net::IpAddr;

use rand::Rng;

use crate::backend::{Pool, hash_bytes, mix64};

/// How candidates are ordered once filters have run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Each pick starts one backend further.
    #[default]
    RoundRobin,
    /// Fewest open connections per unit of weight first.
    LeastConnections,
    /// Lowest latency EMA first, with a tolerance band against flapping.
    LowestLatency,
    /// Random in proportion to weight (injected RNG).
    WeightedRandom,
    /// Weighted rendezvous hashing on the client IP: a client keeps its
    /// backend, and removing a backend moves only that backend's clients.
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

/// Stable hash of a client address.
#[must_use]
pub fn hash_ip(client: IpAddr) -> u64 {
    match client {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// Weighted rendezvous: the same key ordering as `-ln(u) / w` with `u`
/// drawn from hash(client, backend) instead of an RNG.
pub(crate) fn consistent_hash(pool: &Pool, set: &[u32], limit: usize, client: IpAddr) -> Vec<u32> {
    let (keys, weights) = (pool.key_hashes(), pool.weights());
    let client = hash_ip(client);
    smallest_k(set, limit, |_, index| {
        let h = mix64(client ^ keys[index as usize]);
        #[expect(clippy::cast_precision_loss, reason = "53 bits fit an f64 exactly")]
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -u.ln() / f64::from(weights[index as usize].max(1))
    })
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
