//! Selection on large pools: every strategy stays correct where it stops
//! scanning (P2C, alias table, hash ring), with a seeded RNG.

use std::collections::HashMap;

use super::tests::{ip, named, names, open, registry_with, rng, selector};
use super::*;
use crate::backend::{AdminState, BreakerState, HealthConfig, Registry};

/// A pool of `n` backends (weights 1 to 4 in turn) built in one swap.
fn large_registry(n: usize, now: Instant) -> Registry {
    let registry = Registry::new(HealthConfig::default());
    let specs = named(n)
        .into_iter()
        .zip((1..=4).cycle())
        .map(|(mut spec, weight)| {
            spec.weight = weight;
            spec
        })
        .collect();
    registry.replace_all(specs, now).expect("registers");
    registry
}

const ALL_STRATEGIES: [Strategy; 5] = [
    Strategy::RoundRobin,
    Strategy::LeastConnections,
    Strategy::LowestLatency,
    Strategy::WeightedRandom,
    Strategy::ConsistentHash,
];

#[test]
fn no_strategy_ever_offers_a_filtered_backend_in_a_large_pool() {
    let now = crate::clock::now();
    // Every 3rd backend selectable (the ring is walked past the others),
    // then every 50th (few enough that consistent_hash uses a ring of its own).
    for keep in [3, 50] {
        let registry = large_registry(1_000, now);
        let pool = registry.pool();
        for (i, backend) in pool.backends().iter().enumerate() {
            match i % keep {
                0 => {}
                1 => {
                    open(backend, now);
                }
                2 => {
                    backend.set_admin_state(AdminState::Draining);
                }
                _ => {
                    backend.set_admin_state(AdminState::Disabled);
                }
            }
        }
        for strategy in ALL_STRATEGIES {
            let selector = selector(strategy);
            let mut rng = rng();
            for client in 0..2_000 {
                let got = selector.candidates(&pool, ip(client), now, &mut rng);
                assert_eq!(got.len(), 3, "{strategy:?}");
                for backend in got.iter() {
                    assert!(backend.allows(now).admitted(), "{strategy:?} {keep}");
                }
            }
        }
    }
}

#[test]
fn every_strategy_finds_the_single_selectable_backend_among_ten_thousand() {
    let now = crate::clock::now();
    let registry = large_registry(10_000, now);
    let pool = registry.pool();
    for (i, backend) in pool.backends().iter().enumerate() {
        if i != 7_777 {
            backend.set_admin_state(AdminState::Disabled);
        }
    }
    for strategy in ALL_STRATEGIES {
        let selector = selector(strategy);
        for client in 0..50 {
            let got = selector.candidates(&pool, ip(client), now, &mut rng());
            assert_eq!(names(&got), ["b7777"], "{strategy:?}");
            assert_eq!(got.tier(), Tier::Primary);
        }
    }
}

#[test]
fn two_choices_always_takes_the_less_loaded_of_its_pair() {
    let now = crate::clock::now();
    let registry = registry_with(named(2), now);
    let pool = registry.pool();
    let _busy = pool.backends()[0].connection_opened();
    let mut rng = rng();
    for _ in 0..1_000 {
        assert_eq!(strategy::two_choices(&pool, &[0, 1], 1, &mut rng), [1]);
        assert_eq!(strategy::two_choices(&pool, &[0, 1], 2, &mut rng), [1, 0]);
    }
}

#[test]
fn least_connections_on_a_large_pool_never_puts_the_most_loaded_backend_first() {
    let now = crate::clock::now();
    let registry = large_registry(1_000, now);
    let pool = registry.pool();
    // Backend 5 is the busiest; the odd ones carry a little load.
    let _guards: Vec<_> = pool
        .backends()
        .iter()
        .enumerate()
        .flat_map(|(i, b)| {
            let n = match i {
                5 => 40,
                i if i % 2 == 1 => 8,
                _ => 0,
            };
            (0..n).map(move |_| b.connection_opened())
        })
        .collect();
    let selector = selector(Strategy::LeastConnections);
    let mut rng = rng();
    let mut idle_first = 0;
    for client in 0..10_000 {
        let got = selector.candidates(&pool, ip(client), now, &mut rng);
        assert_ne!(got.backends()[0].name(), "b5");
        if got.backends()[0].active() == 0 {
            idle_first += 1;
        }
    }
    // Two random picks are both loaded a quarter of the time (weights
    // shift that a little): the idle one wins the other three quarters.
    assert!(
        (6_500..=8_500).contains(&idle_first),
        "{idle_first} of 10000 went to an idle backend"
    );
}

#[test]
fn weighted_random_on_a_large_pool_follows_the_weights_over_100k_draws() {
    let now = crate::clock::now();
    let registry = large_registry(1_000, now);
    let pool = registry.pool();
    let selector = selector(Strategy::WeightedRandom);
    let mut rng = rng();
    let mut by_weight = [0u32; 5];
    for client in 0..100_000 {
        let got = selector.candidates(&pool, ip(client), now, &mut rng);
        by_weight[got.backends()[0].weight() as usize] += 1;
    }
    // 250 backends of each weight 1 to 4: weight w draws w tenths.
    for weight in 1..=4 {
        let expected = 10_000 * weight;
        assert!(
            by_weight[weight as usize].abs_diff(expected) < 600,
            "weight {weight}: {} draws, want ~{expected}",
            by_weight[weight as usize]
        );
    }
}

#[test]
fn consistent_hash_remaps_only_the_removed_backends_share_of_keys() {
    let now = crate::clock::now();
    let registry = registry_with(named(100), now);
    let selector = selector(Strategy::ConsistentHash);
    let pick = |pool: &Pool| -> Vec<String> {
        (0..20_000)
            .map(|n| {
                selector.candidates(pool, ip(n), now, &mut rng()).backends()[0]
                    .name()
                    .to_owned()
            })
            .collect()
    };
    let before = pick(&registry.pool());
    let mut share: HashMap<&str, usize> = HashMap::new();
    for name in &before {
        *share.entry(name).or_default() += 1;
    }
    // Fair is 200 keys each; 160 points per backend keep every share close.
    assert_eq!(share.len(), 100);
    assert!(share.values().all(|n| (100..=300).contains(n)), "{share:?}");
    registry.unregister("b42").expect("removes");
    let after = pick(&registry.pool());
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    assert_eq!(moved, share["b42"], "only b42's keys move");
    assert!(before.iter().zip(&after).all(|(b, a)| b == a || b == "b42"));
}

#[test]
fn consistent_hash_sends_an_open_backends_keys_elsewhere_and_takes_them_back() {
    let now = crate::clock::now();
    let registry = large_registry(1_000, now);
    let pool = registry.pool();
    let selector = selector(Strategy::ConsistentHash);
    let pick = |client: u32| selector.candidates(&pool, ip(client), now, &mut rng());
    let before: Vec<_> = (0..5_000).map(|n| names(&pick(n))).collect();
    open(&pool.backends()[3], now);
    for (n, was) in (0..).zip(&before) {
        let got = names(&pick(n));
        if was[0] == "b3" {
            assert_eq!(got[0], was[1], "the next one clockwise takes over");
        } else {
            assert_eq!(got[0], was[0], "client {n} moved needlessly");
        }
    }
    pool.backends()[3].force(BreakerState::Closed, now);
    let back: Vec<_> = (0..5_000).map(|n| names(&pick(n))).collect();
    assert_eq!(back, before);
}

#[test]
fn consistent_hash_shares_keys_in_proportion_to_weight() {
    let now = crate::clock::now();
    let mut specs = named(2);
    specs[1].weight = 3;
    let registry = registry_with(specs, now);
    let selector = selector(Strategy::ConsistentHash);
    let heavy = (0..20_000)
        .filter(|n| {
            selector
                .candidates(&registry.pool(), ip(*n), now, &mut rng())
                .backends()[0]
                .name()
                == "b1"
        })
        .count();
    assert!((13_500..=16_500).contains(&heavy), "{heavy} of 20000");
}
