//! What a counter update costs where the counters live: process memory or
//! the mapped `BACKEND_STATS` BPF map (needs root/CAP_BPF for the latter).
//! `cargo run --release -p balancer --example counter_cost`

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use balancer::{
    backend::{BackendSpec, HealthConfig, Origin, Registry},
    bpf::Bpf,
    clock,
    stats::shared::{BackendStore, SharedWords},
};
use balancer_common::stat;

/// Runs `step` `iterations` times (after a tenth as warm-up), ns per call.
fn measure(iterations: u32, mut step: impl FnMut(u32)) -> f64 {
    for i in 0..iterations / 10 {
        step(i);
    }
    let start = clock::now();
    for i in 0..iterations {
        step(i);
    }
    (clock::now() - start).as_secs_f64() * 1e9 / f64::from(iterations)
}

fn record_cost(store: Option<BackendStore>) -> f64 {
    let registry = Registry::new(HealthConfig {
        stats: store,
        ..HealthConfig::default()
    });
    let now = clock::now();
    let backend = registry
        .register(BackendSpec::new("b", "10.0.0.1:1080"), Origin::Config, now)
        .unwrap_or_else(|e| panic!("register: {e}"));
    measure(1_000_000, |i| {
        black_box(backend.record(Ok(Duration::from_micros(u64::from(i % 1000))), now));
    })
}

fn main() {
    let bpf = Bpf::load(None, false).unwrap_or_else(|e| panic!("load BPF (root/CAP_BPF): {e}"));
    let mapped = Arc::new(SharedWords::Mapped(bpf.backend_stats()));
    let heap = Arc::new(SharedWords::heap(64));
    let heap_word: &AtomicU64 = &heap.words()[stat::ATTEMPTS];
    let map_word: &AtomicU64 = &mapped.words()[stat::ATTEMPTS];
    for _ in 0..3 {
        let heap_ns = measure(20_000_000, |_| {
            black_box(heap_word.fetch_add(1, Ordering::Relaxed));
        });
        let map_ns = measure(20_000_000, |_| {
            black_box(map_word.fetch_add(1, Ordering::Relaxed));
        });
        let heap_record = record_cost(None);
        let map_record = record_cost(Some(BackendStore::new(Arc::clone(&mapped), clock::now())));
        println!(
            "fetch_add heap {heap_ns:5.2} ns  map {map_ns:5.2} ns | Backend::record heap {heap_record:6.1} ns  map {map_record:6.1} ns"
        );
    }
}
