//! Active health checks: a probe is a TCP connect, the SOCKS5 handshake and a
//! CONNECT to `probe.target` through the backend, exactly what a client
//! connection does before its bytes flow. [`schedule`] decides who is probed;
//! outcomes go to the backend as probe outcomes, counted apart from clients.

pub mod schedule;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{
    backend::{Backend, BackendId, FailureCategory, Registry},
    clock, config,
    socks5::TargetAddr,
    upstream::{self, DialOptions},
};
use schedule::{ProbeView, probe_due};

/// How backends are probed.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Where probes CONNECT through the backend.
    pub target: TargetAddr,
    pub interval: Duration,
    /// Whole probe (connect + handshake + CONNECT reply).
    pub timeout: Duration,
    /// Backends with recent real traffic are judged by it alone.
    pub passive: bool,
}

impl ProbeOptions {
    pub fn from_config(health: &config::HealthConfig) -> Self {
        let target = &health.probe.target;
        let target = match target.host.socket_addr(target.port) {
            Some(addr) => TargetAddr::Ip(addr),
            None => TargetAddr::Domain(target.host.to_string(), target.port),
        };
        Self {
            target,
            interval: health.probe.interval.0,
            timeout: health.probe.timeout.0,
            passive: health.passive_monitoring,
        }
    }
}

/// How often the schedule is evaluated; half-open trials start within this.
const TICK: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Probed {
    last: Option<Instant>,
    in_flight: bool,
}

/// Probes backends until `stop` fires.
pub async fn run(
    registry: Arc<Registry>,
    dial: DialOptions,
    options: ProbeOptions,
    stop: CancellationToken,
) {
    let dial = DialOptions {
        connect_timeout: dial.connect_timeout.min(options.timeout),
        handshake_timeout: dial.handshake_timeout.min(options.timeout),
        ..dial
    };
    let mut probed: HashMap<BackendId, Probed> = HashMap::new();
    let mut running: JoinSet<BackendId> = JoinSet::new();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(TICK) => {}
            Some(done) = running.join_next() => {
                if let Ok(id) = done {
                    probed.entry(id).or_default().in_flight = false;
                }
                continue;
            }
        }
        let now = clock::now();
        let pool = registry.pool();
        let backends = pool.backends();
        probed.retain(|id, _| backends.iter().any(|b| b.id == *id));
        for backend in backends.iter().cloned() {
            upstream::log_transition(&backend, backend.poll(now));
            let entry = probed.entry(backend.id).or_default();
            let view = ProbeView {
                state: backend.state(),
                last_traffic: backend.last_client_attempt(),
                last_probe: entry.last,
                in_flight: entry.in_flight,
            };
            let Some(reason) = probe_due(view, now, options.interval, options.passive) else {
                continue;
            };
            tracing::debug!(backend = backend.name(), ?reason, "probing");
            entry.last = Some(now);
            entry.in_flight = true;
            let (dial, options) = (dial.clone(), options.clone());
            running.spawn(async move {
                probe(&backend, &dial, &options).await;
                backend.id
            });
        }
    }
    running.shutdown().await;
}

async fn probe(backend: &Backend, dial: &DialOptions, options: &ProbeOptions) {
    let outcome = match tokio::time::timeout(
        options.timeout,
        upstream::dial(backend, Some(&options.target), dial),
    )
    .await
    {
        Ok(Ok(dialled)) => Ok(dialled.latency),
        Ok(Err(error)) => {
            tracing::debug!(backend = backend.name(), %error, "probe failed");
            Err(error.category())
        }
        Err(_) => Err(FailureCategory::ConnectTimeout),
    };
    upstream::log_transition(backend, backend.record_probe(outcome, clock::now()));
}
