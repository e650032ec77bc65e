//! The running daemon: opens the forwarding engine, builds the backend
//! registry, binds every listener, starts the health prober, the status
//! file writer (for `balancer stats`) and the HTTP server on `metrics.listen`
//! (`/metrics`, `/health`, the JSON API), and on shutdown stops accepting, lets
//! live connections drain, then closes what is left.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{sync::Semaphore, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiServer, ApiState},
    backend::{BackendSpec, BreakerConfig, HealthConfig, Registry},
    clock,
    config::{self, Config},
    forward::{Engine, EngineKind},
    health,
    listener::{Listener, ListenerSpec, Mode},
    select::{SelectionConfig, Selector, Strategy},
    session::Context,
    socks5::{Credentials, ServerAuth},
    stats::{Counters, source::StatsSource, writer::StatusWriter},
    upstream::DialOptions,
};

/// Most connections served at once; each holds two sockets.
const MAX_CONNECTIONS: usize = 50_000;
/// How long live connections may finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs until `shutdown` fires, then drains and cleans up. Config is already
/// validated.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let engine_kind = match config.forwarding.engine {
        config::Engine::Auto => EngineKind::Auto,
        config::Engine::Sockmap => EngineKind::Sockmap,
        config::Engine::Splice => EngineKind::Splice,
    };
    let options = config.forwarding.forward_options(Some(config.pin_dir()));
    let engine = Arc::new(
        Engine::open(engine_kind, options)
            .await
            .context("opening the forwarding engine")?,
    );

    let registry = Arc::new(Registry::new(health_config(&config.health)));
    registry
        .replace_all(backend_specs(&config), clock::now())
        .context("building the backend registry")?;
    let dial = DialOptions {
        connect_timeout: config.forwarding.connect_timeout.0,
        handshake_timeout: config.forwarding.handshake_timeout.0,
        mark: (config.forwarding.mark != 0).then_some(config.forwarding.mark),
    };
    let counters = Arc::new(Counters::default());
    let hard_stop = CancellationToken::new();
    let context = Arc::new(Context::new(
        engine.clone(),
        registry.clone(),
        dial.clone(),
        config.forwarding.handshake_timeout.0,
        counters.clone(),
        hard_stop.clone(),
    ));

    let mut listeners = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let bound = Listener::bind(listener_spec(listener, &config.balancing))?;
        let addr = bound.local_addr().context("reading a bound address")?;
        tracing::info!(listener = %listener.name, mode = bound.spec.mode.name(), %addr, "listening");
        listeners.push(bound);
    }
    let source = Arc::new(StatsSource::new(
        config.instance.clone(),
        engine.clone(),
        registry.clone(),
        counters,
    ));
    let api = match config.metrics.listen {
        Some(addr) => {
            let state = ApiState::new(source.clone(), config.metrics.token.clone());
            let server = ApiServer::bind(addr, state).await?;
            let addr = server.local_addr().context("reading the metrics address")?;
            tracing::info!(%addr, "metrics listening");
            Some(server)
        }
        None => None,
    };
    // The first status before "started", so `balancer stats` works as soon
    // as the daemon says it runs.
    let status = StatusWriter::new(config.run_dir(), source);
    if let Err(error) = status.write_now() {
        tracing::warn!(%error, "cannot write the status file; `balancer stats` will not see this instance");
    }
    tracing::info!(engine = %engine.name(), backends = registry.pool().len(), "balancer started");

    let accepting = CancellationToken::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut tasks = JoinSet::new();
    tasks.spawn(status.run(shutdown.clone()));
    if let Some(api) = api {
        tasks.spawn(api.serve(shutdown.clone()));
    }
    for listener in listeners {
        tasks.spawn(listener.serve(context.clone(), limit.clone(), accepting.clone()));
    }
    if config.health.probe.enabled {
        tasks.spawn(health::run(
            registry.clone(),
            dial,
            health::ProbeOptions::from_config(&config.health),
            accepting.clone(),
        ));
    }

    shutdown.cancelled().await;
    tracing::info!(drain_timeout = ?DRAIN_TIMEOUT, "shutting down: no new connections, draining live ones");
    accepting.cancel();
    let drained = tokio::time::timeout(
        DRAIN_TIMEOUT,
        limit.acquire_many(u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX)),
    )
    .await;
    if drained.is_err() {
        let live = MAX_CONNECTIONS - limit.available_permits();
        tracing::warn!(
            live,
            "drain timeout over: closing the remaining connections"
        );
    }
    hard_stop.cancel();
    // Connections close promptly once cancelled; give them a moment so the
    // engine's map entries are gone before it is dropped and unpinned.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        limit.acquire_many(u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX)),
    )
    .await;
    drop(context);
    tracing::info!("stopped");
    Ok(())
}

fn listener_spec(
    listener: &config::ListenerConfig,
    balancing: &config::BalancingConfig,
) -> ListenerSpec {
    let mode = match listener.mode {
        config::ListenerMode::Socks5 => Mode::Socks5 {
            auth: server_auth(listener.auth.as_ref()),
        },
        config::ListenerMode::Passthrough => Mode::Passthrough,
        config::ListenerMode::Redirect => Mode::Redirect,
        config::ListenerMode::Tproxy => Mode::Tproxy,
    };
    ListenerSpec {
        name: listener.name.clone(),
        mode,
        bind: listener.bind,
        selector: Selector::new(selection_config(balancing, listener.pool.clone())),
    }
}

fn selection_config(balancing: &config::BalancingConfig, scope: Option<String>) -> SelectionConfig {
    let strategy = match balancing.strategy {
        config::Strategy::RoundRobin => Strategy::RoundRobin,
        config::Strategy::LeastConnections => Strategy::LeastConnections,
        config::Strategy::LowestLatency => Strategy::LowestLatency,
        config::Strategy::WeightedRandom => Strategy::WeightedRandom,
        config::Strategy::ConsistentHash => Strategy::ConsistentHash,
    };
    let sticky = &balancing.sticky_sessions;
    SelectionConfig {
        strategy,
        max_latency: (balancing.max_latency_ms > 0)
            .then(|| Duration::from_millis(balancing.max_latency_ms)),
        max_active_backends: (balancing.max_active_backends > 0)
            .then_some(balancing.max_active_backends),
        sticky_ttl: sticky.enabled.then_some(sticky.ttl.0),
        limit: usize::try_from(balancing.max_attempts).unwrap_or(usize::MAX),
        scope,
        ..SelectionConfig::default()
    }
}

fn health_config(health: &config::HealthConfig) -> HealthConfig {
    HealthConfig {
        window_size: health.metrics_window_size,
        breaker: BreakerConfig {
            failure_threshold: health.circuit_threshold,
            recovery_interval: health.recovery_interval.0,
            max_recovery_interval: health.max_recovery_interval.0,
            ..BreakerConfig::default()
        },
        panic_mode: health.panic_mode,
        seed: rand::random(),
        ..HealthConfig::default()
    }
}

fn backend_specs(config: &Config) -> Vec<BackendSpec> {
    config
        .expanded_backends()
        .into_iter()
        .map(|backend| BackendSpec {
            address: backend.address(),
            name: backend.name,
            username: backend.username,
            password: backend.password.map(|secret| secret.expose().to_owned()),
            weight: backend.weight,
            scope: backend.scope,
            backup: backend.backup,
            metadata: backend.metadata,
        })
        .collect()
}

fn server_auth(auth: Option<&config::AuthConfig>) -> ServerAuth {
    let Some(auth) = auth else {
        return ServerAuth::NoAuth;
    };
    let users = auth
        .users
        .iter()
        .map(|user| Credentials::new(user.username.clone(), user.password.expose().to_owned()))
        .collect();
    if auth.required {
        ServerAuth::Required(users)
    } else {
        ServerAuth::Optional(users)
    }
}
