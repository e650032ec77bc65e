//! Selection: filters, then a strategy, produce an ordered list of distinct
//! candidate backends that failover pulls from, first to last.
//!
//! Filters, in order: selectable (not draining, not disabled by an
//! operator) and in scope; breaker admits (a half-open trial counts);
//! latency EMA under `max_latency` (skipped if it would leave nothing: slow
//! beats none); the `max_active_backends` best by score, cached and
//! refreshed with hysteresis so the set does not churn; backups only when
//! no primary passes (so failback is automatic). When nothing passes and
//! the pool allows panic mode, the least recently failed selectable
//! backends are offered and [`Candidates::panic`] says so.
//!
//! A pick costs the same on 10 or 10,000 backends: the filtered set is
//! cached (see [`Selector`]) and every strategy reads it, or a table built
//! from it, in O(log n) at most. Caches that every pick reads sit behind
//! `ArcSwapOption`, not a lock.
//!
//! - [`strategy`]: the orderings.
//! - [`sticky`]: client → backend memory.
//! - `tables`: the weight table and hash ring that keep picks sublinear.

pub mod sticky;
pub mod strategy;
mod tables;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rand::Rng;

use crate::backend::{Backend, BackendId, Pool};
pub use sticky::StickyMap;
pub use strategy::Strategy;
use tables::{WeightTable, cached};

/// Selection tuning of one listener.
#[derive(Clone, Debug, PartialEq)]
pub struct SelectionConfig {
    /// How candidates are ordered.
    pub strategy: Strategy,
    /// Skip backends whose latency EMA is above this.
    pub max_latency: Option<Duration>,
    /// Use only this many of the best backends (by expected time per
    /// successful handshake: latency EMA / success rate).
    pub max_active_backends: Option<usize>,
    /// How long a computed active set is kept before it is re-scored.
    pub active_set_refresh: Duration,
    /// A member of the active set is kept unless an outsider is better by
    /// more than this share.
    pub active_set_margin: f64,
    /// `lowest_latency` keeps its current leader unless another backend is
    /// faster by more than this share.
    pub latency_tolerance: f64,
    /// Keep a client on its backend this long; `None` disables stickiness.
    pub sticky_ttl: Option<Duration>,
    /// Clients remembered at most.
    pub sticky_capacity: usize,
    /// Candidates returned per pick (the failover budget).
    pub limit: usize,
    /// Only backends of this scope or of none; `None` uses every backend.
    pub scope: Option<String>,
    /// How long the admitted set may be reused while no breaker changes:
    /// bounds how late an elapsed open interval or a latency change under
    /// `max_latency` is noticed.
    pub scan_cache_ttl: Duration,
}

impl Default for SelectionConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::RoundRobin,
            max_latency: None,
            max_active_backends: None,
            active_set_refresh: Duration::from_secs(1),
            active_set_margin: 0.2,
            latency_tolerance: 0.2,
            sticky_ttl: None,
            sticky_capacity: 65_536,
            limit: 3,
            scope: None,
            scan_cache_ttl: Duration::from_millis(100),
        }
    }
}

/// Which tier the candidates come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tier {
    /// Primary backends.
    Primary,
    /// Backups: no primary was available.
    Backup,
    /// Panic mode: every backend was open; dial with `admit(now, true)`.
    Panic,
}

/// Ordered distinct candidates of one pick.
#[derive(Debug)]
pub struct Candidates {
    backends: Vec<Arc<Backend>>,
    tier: Tier,
    sticky: bool,
}

impl Candidates {
    /// In the order to try them.
    #[must_use]
    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Iterates in the order to try them.
    pub fn iter(&self) -> std::slice::Iter<'_, Arc<Backend>> {
        self.backends.iter()
    }

    /// How many.
    #[must_use]
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether there is none: fail the client.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The tier.
    #[must_use]
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Whether these come from panic mode (log it loudly).
    #[must_use]
    pub fn panic(&self) -> bool {
        self.tier == Tier::Panic
    }

    /// Whether the first one is the client's sticky backend.
    #[must_use]
    pub fn sticky(&self) -> bool {
        self.sticky
    }
}

impl IntoIterator for Candidates {
    type Item = Arc<Backend>;
    type IntoIter = std::vec::IntoIter<Arc<Backend>>;

    fn into_iter(self) -> Self::IntoIter {
        self.backends.into_iter()
    }
}

#[derive(Debug, Default)]
struct ActiveSet {
    generation: u64,
    refreshed: Option<Instant>,
    latency_filtered: bool,
    // Pool indices, ascending.
    members: Arc<[u32]>,
}

#[derive(Debug)]
struct Scan {
    generation: u64,
    version: u64,
    at: Instant,
    tier: Tier,
    latency_filtered: bool,
    // Pool indices, ascending.
    set: Arc<[u32]>,
}

/// Picks backends for one listener. Cheap to share (`&self` everywhere).
#[derive(Debug)]
pub struct Selector {
    config: SelectionConfig,
    cursor: AtomicUsize,
    active: Mutex<ActiveSet>,
    leader: Mutex<Option<BackendId>>,
    sticky: Option<Mutex<StickyMap>>,
    scan: ArcSwapOption<Scan>,
    latency_rank: Mutex<Option<LatencyRank>>,
    weight_table: ArcSwapOption<WeightTable>,
    rings: strategy::HashRings,
}

#[derive(Debug)]
struct LatencyRank {
    set: Arc<[u32]>,
    limit: usize,
    at: Instant,
    order: Vec<u32>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are caches: a panic mid-update loses nothing.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Selector {
    /// A selector with empty caches.
    #[must_use]
    pub fn new(config: SelectionConfig) -> Self {
        let sticky = config
            .sticky_ttl
            .map(|ttl| Mutex::new(StickyMap::new(ttl, config.sticky_capacity)));
        Self {
            config,
            cursor: AtomicUsize::new(0),
            active: Mutex::new(ActiveSet::default()),
            leader: Mutex::new(None),
            sticky,
            scan: ArcSwapOption::empty(),
            latency_rank: Mutex::new(None),
            weight_table: ArcSwapOption::empty(),
            rings: strategy::HashRings::default(),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &SelectionConfig {
        &self.config
    }

    fn in_scope(&self, backend: &Backend) -> bool {
        match (&self.config.scope, backend.scope()) {
            (None, _) | (_, None) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
        }
    }

    fn passes(&self, backend: &Backend, now: Instant) -> bool {
        self.in_scope(backend) && backend.allows(now).admitted()
    }

    fn fast_enough(&self, backend: &Backend) -> bool {
        match (self.config.max_latency, backend.latency()) {
            (Some(max), Some(latency)) => latency <= max,
            _ => true,
        }
    }

    /// The ordered candidates for a client.
    pub fn candidates<R: Rng + ?Sized>(
        &self,
        pool: &Pool,
        client: IpAddr,
        now: Instant,
        rng: &mut R,
    ) -> Candidates {
        let limit = self.config.limit.max(1);
        let (set, tier) = self.filtered(pool, now);
        let mut order = if set.is_empty() {
            return self.panic_candidates(pool, limit);
        } else {
            self.order(pool, &set, limit, client, now, rng)
        };
        let sticky = self.sticky_index(pool, client, tier, now);
        if let Some(index) = sticky {
            order.retain(|i| *i != index);
            order.insert(0, index);
            order.truncate(limit);
        }
        Candidates {
            backends: order
                .into_iter()
                .map(|i| Arc::clone(&pool.backends()[i as usize]))
                .collect(),
            tier,
            sticky: sticky.is_some(),
        }
    }

    /// Sticks `client` to `backend` (call after a successful handshake).
    pub fn remember(&self, client: IpAddr, backend: &Backend, now: Instant) {
        if let Some(sticky) = &self.sticky {
            lock(sticky).remember(client, backend.id, now);
        }
    }

    fn sticky_index(&self, pool: &Pool, client: IpAddr, tier: Tier, now: Instant) -> Option<u32> {
        let id = lock(self.sticky.as_ref()?).get(client, now)?;
        let index = pool.index_of(id)?;
        let backend = &pool.backends()[index];
        // A client stuck to a backup returns to the primaries once they are
        // back: failback wins over stickiness.
        let right_tier = backend.backup() == (tier == Tier::Backup);
        (right_tier && self.passes(backend, now)).then(|| u32::try_from(index).ok())?
    }

    /// The filtered set (pool indices, ascending) and its tier.
    fn filtered(&self, pool: &Pool, now: Instant) -> (Arc<[u32]>, Tier) {
        if let Some(k) = self.config.max_active_backends
            && let Some(members) = self.cached_active(pool, now, k)
        {
            return (members, Tier::Primary);
        }
        let scan = self.scan(pool, now);
        match self.config.max_active_backends {
            Some(k) if scan.set.len() > k => {
                let members =
                    self.refresh_active(pool, &scan.set, k, scan.tier, scan.latency_filtered, now);
                (members, scan.tier)
            }
            _ => (Arc::clone(&scan.set), scan.tier),
        }
    }

    /// Admitted, in-scope, fast-enough backends of the first tier that has
    /// any; reused while the pool, every breaker and the clock (within
    /// `scan_cache_ttl`) stay put, so a pick need not touch every backend.
    /// A rescan that finds the same set keeps the same `Arc`, so tables
    /// built for it survive.
    fn scan(&self, pool: &Pool, now: Instant) -> Arc<Scan> {
        let version = pool.health_version();
        let previous = self.scan.load_full();
        if let Some(scan) = previous.as_ref()
            && scan.generation == pool.generation()
            && scan.version == version
            && now >= scan.at
            && now.saturating_duration_since(scan.at) < self.config.scan_cache_ttl
        {
            return Arc::clone(scan);
        }
        let mut result = Scan {
            generation: pool.generation(),
            version,
            at: now,
            tier: Tier::Primary,
            latency_filtered: false,
            set: Arc::from(Vec::new()),
        };
        for (tier, backup) in [(Tier::Primary, false), (Tier::Backup, true)] {
            let admitted: Vec<u32> = (0u32..)
                .zip(pool.backends())
                .filter(|(_, b)| b.backup() == backup && self.passes(b, now))
                .map(|(i, _)| i)
                .collect();
            if admitted.is_empty() {
                continue;
            }
            let mut latency_filtered = false;
            let set = if self.config.max_latency.is_some() {
                let fast: Vec<u32> = admitted
                    .iter()
                    .copied()
                    .filter(|i| self.fast_enough(&pool.backends()[*i as usize]))
                    .collect();
                latency_filtered = !fast.is_empty();
                if fast.is_empty() { admitted } else { fast }
            } else {
                admitted
            };
            result.tier = tier;
            result.latency_filtered = latency_filtered;
            result.set = match previous {
                Some(old) if old.generation == result.generation && *old.set == *set => {
                    Arc::clone(&old.set)
                }
                _ => Arc::from(set),
            };
            break;
        }
        let result = Arc::new(result);
        self.scan.store(Some(Arc::clone(&result)));
        result
    }

    /// The cached active set, if still valid: same snapshot, fresh, every
    /// member still admitted.
    fn cached_active(&self, pool: &Pool, now: Instant, k: usize) -> Option<Arc<[u32]>> {
        let cache = lock(&self.active);
        let fresh = cache
            .refreshed
            .is_some_and(|at| now.saturating_duration_since(at) < self.config.active_set_refresh);
        if !fresh || cache.generation != pool.generation() || cache.members.len() != k {
            return None;
        }
        let valid = cache.members.iter().all(|i| {
            let backend = &pool.backends()[*i as usize];
            !backend.backup()
                && self.passes(backend, now)
                && (!cache.latency_filtered || self.fast_enough(backend))
        });
        valid.then(|| Arc::clone(&cache.members))
    }

    /// Scores `set` and keeps the best `k`, favouring current members.
    fn refresh_active(
        &self,
        pool: &Pool,
        set: &[u32],
        k: usize,
        tier: Tier,
        latency_filtered: bool,
        now: Instant,
    ) -> Arc<[u32]> {
        let backends = pool.backends();
        let known: Vec<f64> = set
            .iter()
            .filter_map(|i| backends[*i as usize].latency())
            .map(|l| l.as_secs_f64())
            .collect();
        // Unknown latency counts as the mean of the known ones: neutral, so
        // a new backend neither jumps the queue nor is starved.
        #[expect(clippy::cast_precision_loss, reason = "pool sizes are far below 2^52")]
        let neutral = if known.is_empty() {
            0.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        let mut cache = lock(&self.active);
        let same_pool = cache.generation == pool.generation();
        let bonus = 1.0 - self.config.active_set_margin.clamp(0.0, 0.9);
        let mut members = strategy::smallest_k(set, k, |_, index| {
            let backend = &backends[index as usize];
            let latency = backend.latency().map_or(neutral, |l| l.as_secs_f64());
            let rate = backend.success_rate().unwrap_or(1.0).max(0.05);
            let cost = (latency + 1e-4) / rate;
            let member = same_pool && cache.members.binary_search(&index).is_ok();
            if member { cost * bonus } else { cost }
        });
        members.sort_unstable();
        let members: Arc<[u32]> = Arc::from(members);
        if tier == Tier::Primary {
            *cache = ActiveSet {
                generation: pool.generation(),
                refreshed: Some(now),
                latency_filtered,
                members: Arc::clone(&members),
            };
        }
        members
    }

    fn order<R: Rng + ?Sized>(
        &self,
        pool: &Pool,
        set: &Arc<[u32]>,
        limit: usize,
        client: IpAddr,
        now: Instant,
        rng: &mut R,
    ) -> Vec<u32> {
        match self.config.strategy {
            Strategy::RoundRobin => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                strategy::round_robin(set, limit, start)
            }
            Strategy::LeastConnections
                if set.len() > strategy::EXACT_LEAST_CONNECTIONS && limit * 2 <= set.len() =>
            {
                strategy::two_choices(pool, set, limit, rng)
            }
            Strategy::LeastConnections => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                strategy::least_connections(pool, set, limit, start)
            }
            Strategy::LowestLatency => self.lowest_latency(pool, set, limit, now),
            Strategy::WeightedRandom => {
                let table = cached(
                    &self.weight_table,
                    |table| table.is_for(set),
                    || WeightTable::new(set, pool.weights()),
                );
                strategy::weighted_draws(&table, pool, set, limit, rng)
            }
            Strategy::ConsistentHash => self.rings.order(pool, set, limit, client),
        }
    }

    /// The latency ranking of `set`, reused for `scan_cache_ttl` while the
    /// set is the same one (same `Arc`): every pick in that time would go
    /// to the same leader anyway, and a fresh set means a fresh ranking.
    fn latency_order(&self, pool: &Pool, set: &Arc<[u32]>, limit: usize, now: Instant) -> Vec<u32> {
        let mut cache = lock(&self.latency_rank);
        if let Some(rank) = cache.as_ref()
            && Arc::ptr_eq(&rank.set, set)
            && rank.limit == limit
            && now >= rank.at
            && now.saturating_duration_since(rank.at) < self.config.scan_cache_ttl
        {
            return rank.order.clone();
        }
        let order = strategy::lowest_latency(pool, set, limit);
        *cache = Some(LatencyRank {
            set: Arc::clone(set),
            limit,
            at: now,
            order: order.clone(),
        });
        order
    }

    /// Lowest latency with a tolerance band: the current leader stays first
    /// until another backend is faster by more than `latency_tolerance`.
    fn lowest_latency(
        &self,
        pool: &Pool,
        set: &Arc<[u32]>,
        limit: usize,
        now: Instant,
    ) -> Vec<u32> {
        let mut order = self.latency_order(pool, set, limit, now);
        let Some(&best) = order.first() else {
            return order;
        };
        let backends = pool.backends();
        let mut leader = lock(&self.leader);
        let current = (*leader)
            .and_then(|id| pool.index_of(id))
            .and_then(|i| u32::try_from(i).ok())
            .filter(|i| set.binary_search(i).is_ok());
        let keep = current.filter(|&current| {
            let current_latency = backends[current as usize].latency();
            let best_latency = backends[best as usize].latency();
            match (current_latency, best_latency) {
                (Some(c), Some(b)) => {
                    b.as_secs_f64() >= c.as_secs_f64() * (1.0 - self.config.latency_tolerance)
                }
                (None, _) => false,
                (Some(_), None) => true,
            }
        });
        match keep {
            Some(current) => {
                order.retain(|i| *i != current);
                order.insert(0, current);
                order.truncate(limit);
            }
            None => *leader = Some(backends[best as usize].id),
        }
        order
    }

    /// Panic mode: every in-scope backend, least recently failed first.
    fn panic_candidates(&self, pool: &Pool, limit: usize) -> Candidates {
        if !pool.panic_mode() {
            return Candidates {
                backends: Vec::new(),
                tier: Tier::Primary,
                sticky: false,
            };
        }
        let backends = pool.backends();
        let set: Vec<u32> = (0u32..)
            .zip(backends)
            .filter(|(_, b)| self.in_scope(b) && b.is_selectable())
            .map(|(i, _)| i)
            .collect();
        let oldest = backends.iter().filter_map(|b| b.last_failure()).min();
        let order = strategy::smallest_k(&set, limit, |_, index| {
            match (backends[index as usize].last_failure(), oldest) {
                (Some(at), Some(oldest)) => at.saturating_duration_since(oldest).as_secs_f64(),
                _ => -1.0,
            }
        });
        Candidates {
            backends: order
                .into_iter()
                .map(|i| Arc::clone(&backends[i as usize]))
                .collect(),
            tier: Tier::Panic,
            sticky: false,
        }
    }
}

#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
