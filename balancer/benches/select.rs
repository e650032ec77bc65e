//! Nanoseconds per pick for every strategy at 10, 1,000 and 10,000
//! backends, plus the hot per-outcome paths. A plain harness (no
//! criterion): `cargo bench -p balancer --bench select`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use balancer::backend::window::OutcomeWindow;
use balancer::backend::{BackendSpec, HealthConfig, Origin, Registry};
use balancer::clock;
use balancer::select::{SelectionConfig, Selector, Strategy};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const STRATEGIES: [Strategy; 5] = [
    Strategy::RoundRobin,
    Strategy::LeastConnections,
    Strategy::LowestLatency,
    Strategy::WeightedRandom,
    Strategy::ConsistentHash,
];

fn registry(n: usize) -> Registry {
    let now = clock::now();
    let registry = Registry::new(HealthConfig::default());
    for i in 0..n {
        let mut spec = BackendSpec::new(
            format!("b{i}"),
            format!("10.0.{}.{}:1080", i / 256, i % 256),
        );
        spec.weight = u32::try_from(i % 4 + 1).unwrap_or(1);
        let backend = registry
            .register(spec, Origin::Config, now)
            .unwrap_or_else(|e| panic!("register: {e}"));
        let millis = u64::try_from(5 + i % 97).unwrap_or(5);
        backend.record(Ok(Duration::from_millis(millis)), now);
    }
    registry
}

/// Runs `pick` `iterations` times and returns ns per call.
fn measure(iterations: u32, mut pick: impl FnMut(u32)) -> f64 {
    for i in 0..iterations / 10 {
        pick(i);
    }
    let start = clock::now();
    for i in 0..iterations {
        pick(i);
    }
    (clock::now() - start).as_secs_f64() * 1e9 / f64::from(iterations)
}

fn main() {
    let mut rng = SmallRng::seed_from_u64(1);
    println!(
        "{:<18} {:>8} {:>14} {:>12}",
        "strategy", "backends", "max_active", "ns/pick"
    );
    for n in [10usize, 1_000, 10_000] {
        let registry = registry(n);
        let pool = registry.pool();
        let iterations = u32::try_from((3_000_000 / n).clamp(300, 200_000)).unwrap_or(300);
        for max_active in [None, Some(8)] {
            if n == 10 && max_active.is_some() {
                continue;
            }
            for strategy in STRATEGIES {
                let selector = Selector::new(SelectionConfig {
                    strategy,
                    max_active_backends: max_active,
                    ..SelectionConfig::default()
                });
                let now = clock::now();
                let ns = measure(iterations, |i| {
                    let client = IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i));
                    black_box(selector.candidates(&pool, client, now, &mut rng));
                });
                let cap = max_active.map_or("-".to_owned(), |k| k.to_string());
                println!("{:<18} {n:>8} {cap:>14} {ns:>12.0}", strategy.label());
            }
        }
    }
    let registry = registry(1);
    let backend = std::sync::Arc::clone(&registry.pool().backends()[0]);
    let now = clock::now();
    let ns = measure(1_000_000, |i| {
        black_box(backend.record(Ok(Duration::from_micros(u64::from(i % 1000))), now));
    });
    println!("Backend::record (ok)               {ns:>8.1} ns");
    let ns = measure(1_000_000, |_| {
        black_box(backend.allows(now));
    });
    println!("Backend::allows (closed)           {ns:>8.1} ns");
    let window = OutcomeWindow::new(100);
    let ns = measure(1_000_000, |i| window.record(i % 3 != 0));
    println!("OutcomeWindow::record              {ns:>8.1} ns");
    let ns = measure(1_000_000, |_| {
        black_box(window.success_rate());
    });
    println!("OutcomeWindow::success_rate        {ns:>8.1} ns");
}
