//! Nanoseconds per pick for every strategy at 10, 1,000 and 10,000
//! backends (all selectable, `max_active_backends: 8`, half or 1 % of
//! them disabled), plus the hot per-outcome paths. A plain harness (no
//! criterion): `cargo bench -p balancer --bench select`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use balancer::backend::window::OutcomeWindow;
use balancer::backend::{AdminState, BackendSpec, HealthConfig, Registry};
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
    let specs = (0..n)
        .map(|i| {
            let mut spec = BackendSpec::new(
                format!("b{i}"),
                format!("10.0.{}.{}:1080", i / 256, i % 256),
            );
            spec.weight = u32::try_from(i % 4 + 1).unwrap_or(1);
            spec
        })
        .collect();
    registry
        .replace_all(specs, now)
        .unwrap_or_else(|e| panic!("register: {e}"));
    for (i, backend) in registry.pool().backends().iter().enumerate() {
        let millis = u64::try_from(5 + i % 97).unwrap_or(5);
        backend.record(Ok(Duration::from_millis(millis)), now);
    }
    registry
}

/// Nanoseconds per call of `pick`: warmed up (tables get built), then
/// the fastest of `BATCHES` batches of about `BATCH` each. On a small
/// shared machine other work only ever adds time, so the fastest batch is
/// the steadiest estimate of the pick's own cost.
fn measure(mut pick: impl FnMut(u32)) -> f64 {
    const BATCHES: usize = 7;
    const BATCH: Duration = Duration::from_millis(20);
    let start = clock::now();
    let mut calls = 0u32;
    while clock::now() - start < BATCH || calls < 10 {
        pick(calls);
        calls += 1;
    }
    let per_call: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = clock::now();
            for i in 0..calls {
                pick(i);
            }
            (clock::now() - start).as_secs_f64() * 1e9 / f64::from(calls)
        })
        .collect();
    per_call.into_iter().fold(f64::INFINITY, f64::min)
}

/// Which backends a row leaves selectable (the rest are disabled by an
/// operator, which every filter honours), and `max_active_backends`.
#[derive(Clone, Copy)]
enum Scenario {
    All,
    MaxActive(usize),
    OneIn(usize),
}

impl Scenario {
    fn label(self) -> String {
        match self {
            Self::All => "all".to_owned(),
            Self::MaxActive(k) => format!("max_active {k}"),
            Self::OneIn(k) => format!("1 in {k}"),
        }
    }
}

/// Prints only rows whose strategy label contains the first argument that
/// is not a flag (`cargo bench` passes `--bench`), e.g. `-- consistent`.
fn main() {
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    let mut rng = SmallRng::seed_from_u64(1);
    println!(
        "{:<18} {:>8} {:>14} {:>12}",
        "strategy", "backends", "selectable", "ns/pick"
    );
    for n in [10usize, 1_000, 10_000] {
        let registry = registry(n);
        let pool = registry.pool();
        let scenarios: &[Scenario] = if n == 10 {
            &[Scenario::All]
        } else {
            &[
                Scenario::All,
                Scenario::MaxActive(8),
                Scenario::OneIn(2),
                Scenario::OneIn(100),
            ]
        };
        for &scenario in scenarios {
            let keep = match scenario {
                Scenario::OneIn(k) => k,
                _ => 1,
            };
            for (i, backend) in pool.backends().iter().enumerate() {
                backend.set_admin_state(if i % keep == 0 {
                    AdminState::Enabled
                } else {
                    AdminState::Disabled
                });
            }
            for strategy in STRATEGIES {
                if only
                    .as_ref()
                    .is_some_and(|o| !strategy.label().contains(o.as_str()))
                {
                    continue;
                }
                let selector = Selector::new(SelectionConfig {
                    strategy,
                    max_active_backends: match scenario {
                        Scenario::MaxActive(k) => Some(k),
                        _ => None,
                    },
                    ..SelectionConfig::default()
                });
                let now = clock::now();
                let ns = measure(|i| {
                    let client = IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i));
                    black_box(selector.candidates(&pool, client, now, &mut rng));
                });
                println!(
                    "{:<18} {n:>8} {:>14} {ns:>12.0}",
                    strategy.label(),
                    scenario.label()
                );
            }
        }
    }
    if only.is_some() {
        return;
    }
    let registry = registry(1);
    let backend = std::sync::Arc::clone(&registry.pool().backends()[0]);
    let now = clock::now();
    let ns = measure(|i| {
        black_box(backend.record(Ok(Duration::from_micros(u64::from(i % 1000))), now));
    });
    println!("Backend::record (ok)               {ns:>8.1} ns");
    let ns = measure(|_| {
        black_box(backend.allows(now));
    });
    println!("Backend::allows (closed)           {ns:>8.1} ns");
    let window = OutcomeWindow::new(100);
    let ns = measure(|i| window.record(i % 3 != 0));
    println!("OutcomeWindow::record              {ns:>8.1} ns");
    let ns = measure(|_| {
        black_box(window.success_rate());
    });
    println!("OutcomeWindow::success_rate        {ns:>8.1} ns");
}
