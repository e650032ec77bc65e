//! Selection tests, with a hand-driven clock and a seeded RNG.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::backend::{
    Admission, BackendSpec, BreakerState, FailureCategory, HealthConfig, Origin, Registry,
};

pub(super) fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc000_0200 + n))
}

pub(super) fn registry_with(specs: Vec<BackendSpec>, now: Instant) -> Registry {
    let registry = Registry::new(HealthConfig::default());
    for spec in specs {
        registry
            .register(spec, Origin::Config, now)
            .expect("registers");
    }
    registry
}

pub(super) fn named(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec::new(format!("b{i}"), format!("b{i}.test:1080")))
        .collect()
}

pub(super) fn names(candidates: &Candidates) -> Vec<String> {
    candidates.iter().map(|b| b.name().to_owned()).collect()
}

pub(super) fn selector(strategy: Strategy) -> Selector {
    Selector::new(SelectionConfig {
        strategy,
        ..SelectionConfig::default()
    })
}

pub(super) fn open(backend: &Backend, now: Instant) {
    backend.force(BreakerState::Open, now);
}

pub(super) fn rng() -> StdRng {
    StdRng::seed_from_u64(42)
}

#[test]
fn round_robin_starts_one_further_each_pick_with_distinct_candidates() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let selector = selector(Strategy::RoundRobin);
    let pool = registry.pool();
    let firsts: Vec<_> = (0..6)
        .map(|_| names(&selector.candidates(&pool, ip(1), now, &mut rng()))[0].clone())
        .collect();
    assert_eq!(firsts, ["b0", "b1", "b2", "b0", "b1", "b2"]);
    let all = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(names(&all), ["b0", "b1", "b2"]);
}

#[test]
fn candidates_are_capped_at_the_limit() {
    let now = crate::clock::now();
    let registry = registry_with(named(10), now);
    let selector = Selector::new(SelectionConfig {
        limit: 4,
        ..SelectionConfig::default()
    });
    assert_eq!(
        selector
            .candidates(&registry.pool(), ip(1), now, &mut rng())
            .len(),
        4
    );
}

#[test]
fn open_backends_are_filtered_and_half_open_trials_count_as_admitted() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    open(&pool.backends()[1], now);
    let selector = selector(Strategy::RoundRobin);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(names(&got), ["b0", "b2"]);
    let later = now + Duration::from_secs(30);
    assert_eq!(pool.backends()[1].allows(later), Admission::Trial);
    let got = selector.candidates(&pool, ip(1), later, &mut rng());
    assert!(names(&got).contains(&"b1".to_owned()));
}

#[test]
fn slow_backends_are_skipped_unless_all_are_slow() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    for (backend, ms) in pool.backends().iter().zip([500, 20, 800]) {
        backend.record(Ok(Duration::from_millis(ms)), now);
    }
    let selector = Selector::new(SelectionConfig {
        max_latency: Some(Duration::from_millis(100)),
        ..SelectionConfig::default()
    });
    assert_eq!(
        names(&selector.candidates(&pool, ip(1), now, &mut rng())),
        ["b1"]
    );
    open(&pool.backends()[1], now);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(got.len(), 2, "slow beats none");
}

#[test]
fn the_active_set_keeps_the_best_and_does_not_churn_on_small_changes() {
    let mut now = crate::clock::now();
    let registry = registry_with(named(6), now);
    let pool = registry.pool();
    for (backend, ms) in pool.backends().iter().zip([50, 10, 60, 12, 70, 80]) {
        backend.record(Ok(Duration::from_millis(ms)), now);
    }
    let selector = Selector::new(SelectionConfig {
        max_active_backends: Some(2),
        limit: 6,
        ..SelectionConfig::default()
    });
    let mut set = names(&selector.candidates(&pool, ip(1), now, &mut rng()));
    set.sort();
    assert_eq!(set, ["b1", "b3"]);
    // b0 gets a little faster than b3, but not by the margin.
    for _ in 0..30 {
        pool.backends()[0].record(Ok(Duration::from_millis(11)), now);
    }
    now += Duration::from_secs(2);
    let mut set = names(&selector.candidates(&pool, ip(1), now, &mut rng()));
    set.sort();
    assert_eq!(set, ["b1", "b3"], "within the margin the set stays");
    // A member that fails is replaced at once, without waiting for a refresh.
    open(&pool.backends()[3], now);
    let mut set = names(&selector.candidates(&pool, ip(1), now, &mut rng()));
    set.sort();
    assert_eq!(set, ["b0", "b1"]);
}

#[test]
fn backups_serve_only_while_no_primary_is_available_and_fail_back_by_themselves() {
    let now = crate::clock::now();
    let mut specs = named(2);
    specs[1].backup = true;
    let registry = registry_with(specs, now);
    let pool = registry.pool();
    let selector = selector(Strategy::RoundRobin);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(
        (names(&got), got.tier()),
        (vec!["b0".to_owned()], Tier::Primary)
    );
    open(&pool.backends()[0], now);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(
        (names(&got), got.tier()),
        (vec!["b1".to_owned()], Tier::Backup)
    );
    pool.backends()[0].force(BreakerState::Closed, now);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(names(&got), ["b0"]);
}

#[test]
fn least_connections_prefers_the_fewest_connections_per_weight() {
    let now = crate::clock::now();
    let mut specs = named(3);
    specs[2].weight = 4;
    let registry = registry_with(specs, now);
    let pool = registry.pool();
    let _guards: Vec<_> = [(0, 1), (1, 3), (2, 8)]
        .iter()
        .flat_map(|&(i, n)| (0..n).map(move |_| i))
        .map(|i| pool.backends()[i].connection_opened())
        .collect();
    // Loads per weight: b0 1, b1 3, b2 8/4 = 2.
    let got = selector(Strategy::LeastConnections).candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(names(&got), ["b0", "b2", "b1"]);
}

#[test]
fn least_connections_spreads_ties() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    let selector = selector(Strategy::LeastConnections);
    let firsts: std::collections::HashSet<_> = (0..3)
        .map(|_| names(&selector.candidates(&pool, ip(1), now, &mut rng()))[0].clone())
        .collect();
    assert_eq!(firsts.len(), 3);
}

#[test]
fn lowest_latency_does_not_flap_inside_the_band_but_returns_to_a_clearly_faster_backend() {
    let now = crate::clock::now();
    let registry = registry_with(named(2), now);
    let pool = registry.pool();
    let (a, b) = (&pool.backends()[0], &pool.backends()[1]);
    a.record(Ok(Duration::from_millis(10)), now);
    b.record(Ok(Duration::from_millis(20)), now);
    let selector = selector(Strategy::LowestLatency);
    // Each phase is a second later: the ranking is cached for the scan TTL.
    let first = |phase: u64| {
        let at = now + Duration::from_secs(phase);
        names(&selector.candidates(&pool, ip(1), at, &mut rng()))[0].clone()
    };
    assert_eq!(first(0), "b0");
    // a slows to 22 ms: b (20 ms) is faster, but by less than 20 %.
    (0..40).for_each(|_| {
        a.record(Ok(Duration::from_millis(22)), now);
    });
    assert_eq!(first(1), "b0", "inside the tolerance band");
    (0..40).for_each(|_| {
        a.record(Ok(Duration::from_millis(60)), now);
    });
    assert_eq!(first(2), "b1", "clearly slower: switch");
    (0..40).for_each(|_| {
        a.record(Ok(Duration::from_millis(5)), now);
    });
    assert_eq!(first(3), "b0", "recovered and clearly faster: back");
}

#[test]
fn the_latency_ranking_is_reused_within_the_scan_cache_ttl() {
    let now = crate::clock::now();
    let registry = registry_with(named(2), now);
    let pool = registry.pool();
    pool.backends()[0].record(Ok(Duration::from_millis(10)), now);
    pool.backends()[1].record(Ok(Duration::from_millis(20)), now);
    let selector = selector(Strategy::LowestLatency);
    let first = |at| names(&selector.candidates(&pool, ip(1), at, &mut rng()))[0].clone();
    assert_eq!(first(now), "b0");
    (0..40).for_each(|_| {
        pool.backends()[0].record(Ok(Duration::from_millis(90)), now);
    });
    assert_eq!(first(now + Duration::from_millis(50)), "b0");
    assert_eq!(first(now + Duration::from_millis(150)), "b1");
}

#[test]
fn weighted_random_follows_the_weights() {
    let now = crate::clock::now();
    let mut specs = named(2);
    specs[1].weight = 3;
    let registry = registry_with(specs, now);
    let pool = registry.pool();
    let selector = selector(Strategy::WeightedRandom);
    let mut rng = rng();
    let heavy = (0..10_000)
        .filter(|_| selector.candidates(&pool, ip(1), now, &mut rng).backends()[0].name() == "b1")
        .count();
    assert!(
        (7_200..=7_800).contains(&heavy),
        "{heavy} of 10000, want ~7500"
    );
}

#[test]
fn consistent_hash_keeps_clients_and_moves_only_the_removed_backends_clients() {
    let now = crate::clock::now();
    let registry = registry_with(named(5), now);
    let selector = selector(Strategy::ConsistentHash);
    let pick = |pool: &Pool| -> HashMap<u32, String> {
        (0..1000)
            .map(|n| {
                let got = selector.candidates(pool, ip(n), now, &mut rng());
                (n, got.backends()[0].name().to_owned())
            })
            .collect()
    };
    let before = pick(&registry.pool());
    assert_eq!(before, pick(&registry.pool()), "same client, same backend");
    let per_backend = before.values().filter(|name| *name == "b2").count();
    assert!((120..=280).contains(&per_backend), "{per_backend}");
    registry.unregister("b2").expect("removes");
    let after = pick(&registry.pool());
    for (client, name) in &before {
        if name != "b2" {
            assert_eq!(&after[client], name, "client {client} moved needlessly");
        } else {
            assert_ne!(&after[client], "b2");
        }
    }
}

#[test]
fn a_sticky_client_returns_to_its_backend_until_the_ttl_expires() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    let selector = Selector::new(SelectionConfig {
        sticky_ttl: Some(Duration::from_secs(60)),
        ..SelectionConfig::default()
    });
    let chosen = Arc::clone(&pool.backends()[2]);
    selector.remember(ip(9), &chosen, now);
    for _ in 0..3 {
        let got = selector.candidates(&pool, ip(9), now + Duration::from_secs(30), &mut rng());
        assert!(got.sticky());
        assert_eq!(got.backends()[0].name(), "b2");
        assert_eq!(got.len(), 3, "the others follow for failover");
    }
    let firsts: std::collections::HashSet<_> = (0..3)
        .map(|_| {
            let got = selector.candidates(&pool, ip(9), now + Duration::from_secs(61), &mut rng());
            got.backends()[0].name().to_owned()
        })
        .collect();
    assert_eq!(firsts.len(), 3, "expired: round robin again");
}

#[test]
fn stickiness_yields_when_the_backend_is_open() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    let selector = Selector::new(SelectionConfig {
        sticky_ttl: Some(Duration::from_secs(60)),
        ..SelectionConfig::default()
    });
    selector.remember(ip(9), &pool.backends()[2], now);
    open(&pool.backends()[2], now);
    let got = selector.candidates(&pool, ip(9), now, &mut rng());
    assert!(!got.sticky());
    assert!(!names(&got).contains(&"b2".to_owned()));
}

#[test]
fn panic_mode_offers_the_least_recently_failed_when_every_backend_is_open() {
    let t0 = crate::clock::now();
    let registry = registry_with(named(3), t0);
    let pool = registry.pool();
    for (i, backend) in pool.backends().iter().enumerate() {
        let at = t0 + Duration::from_secs([3, 1, 2][i]);
        backend.record(Err(FailureCategory::ConnectRefused), at);
        open(backend, at);
    }
    let now = t0 + Duration::from_secs(4);
    let got = selector(Strategy::RoundRobin).candidates(&pool, ip(1), now, &mut rng());
    assert!(got.panic());
    assert_eq!(names(&got), ["b1", "b2", "b0"]);
    let (admission, event) = got.backends()[0].admit(now, true);
    assert_eq!(admission, Admission::Trial);
    assert_eq!(event.map(|e| e.to), Some(BreakerState::HalfOpen));
}

#[test]
fn without_panic_mode_an_all_open_pool_gives_no_candidate() {
    let now = crate::clock::now();
    let registry = Registry::new(HealthConfig {
        panic_mode: false,
        ..HealthConfig::default()
    });
    let backend = registry
        .register(BackendSpec::new("a", "a.test:1080"), Origin::Config, now)
        .expect("registers");
    open(&backend, now);
    let got = selector(Strategy::RoundRobin).candidates(&registry.pool(), ip(1), now, &mut rng());
    assert!(got.is_empty());
    assert!(!got.panic());
}

#[test]
fn a_scoped_selector_uses_its_scope_and_unscoped_backends() {
    let now = crate::clock::now();
    let mut specs = named(3);
    specs[0].scope = Some("eu".into());
    specs[1].scope = Some("us".into());
    let registry = registry_with(specs, now);
    let selector = Selector::new(SelectionConfig {
        scope: Some("eu".into()),
        ..SelectionConfig::default()
    });
    let mut got = names(&selector.candidates(&registry.pool(), ip(1), now, &mut rng()));
    got.sort();
    assert_eq!(got, ["b0", "b2"]);
}

#[test]
fn the_cached_admitted_set_notices_a_breaker_opening_at_once() {
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    let selector = selector(Strategy::RoundRobin);
    assert_eq!(selector.candidates(&pool, ip(1), now, &mut rng()).len(), 3);
    open(&pool.backends()[1], now);
    let got = selector.candidates(&pool, ip(1), now, &mut rng());
    assert!(!names(&got).contains(&"b1".to_owned()));
}

#[test]
fn an_elapsed_open_interval_is_noticed_within_the_scan_cache_ttl() {
    let now = crate::clock::now();
    let registry = registry_with(named(2), now);
    let pool = registry.pool();
    open(&pool.backends()[1], now);
    let selector = selector(Strategy::RoundRobin);
    assert_eq!(selector.candidates(&pool, ip(1), now, &mut rng()).len(), 1);
    let recovered = now + Duration::from_secs(12);
    assert_eq!(
        selector
            .candidates(&pool, ip(1), recovered, &mut rng())
            .len(),
        2
    );
}

#[test]
fn an_operator_disabled_backend_is_offered_by_no_strategy_nor_panic_mode() {
    use crate::backend::AdminState;
    let now = crate::clock::now();
    let registry = registry_with(named(3), now);
    let pool = registry.pool();
    pool.backends()[1].set_admin_state(AdminState::Disabled);
    for strategy in [
        Strategy::RoundRobin,
        Strategy::LeastConnections,
        Strategy::LowestLatency,
        Strategy::WeightedRandom,
        Strategy::ConsistentHash,
    ] {
        let selector = selector(strategy);
        for client in 0..20 {
            let got = selector.candidates(&pool, ip(client), now, &mut rng());
            assert!(!names(&got).contains(&"b1".to_owned()), "{strategy:?}");
        }
    }
    // Admission refuses it even from a stale candidate list, panic or not.
    assert_eq!(pool.backends()[1].admit(now, false).0, Admission::Rejected);
    assert_eq!(pool.backends()[1].admit(now, true).0, Admission::Rejected);

    // Every other backend open: panic mode still skips the disabled one,
    // and a drained one too.
    pool.backends()[2].set_admin_state(AdminState::Draining);
    open(&pool.backends()[0], now);
    let got = selector(Strategy::RoundRobin).candidates(&pool, ip(1), now, &mut rng());
    assert!(got.panic());
    assert_eq!(names(&got), ["b0"]);

    // Enabled again, it is a candidate at once (the cached scan noticed).
    pool.backends()[1].set_admin_state(AdminState::Enabled);
    let got = selector(Strategy::RoundRobin).candidates(&pool, ip(1), now, &mut rng());
    assert_eq!(names(&got), ["b1"]);
}
