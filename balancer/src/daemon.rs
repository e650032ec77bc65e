//! The running daemon: opens the forwarding engine, builds the backend
//! registry, binds every listener, starts the health prober, the status
//! file writer (for `balancer stats`) and the HTTP server on `metrics.listen`
//! (`/metrics`, `/health`, the JSON API), applies reloaded configs (see
//! [`crate::reload`]), and on shutdown stops accepting, lets live
//! connections drain for `forwarding.drain_timeout`, then closes what is
//! left. With `transparent.manage_rules` it also applies the iptables rules
//! of its listeners once they are bound, and removes them last.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::{
    sync::{Semaphore, mpsc},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

use crate::{
    api::{ApiServer, ApiState},
    backend::{BreakerConfig, HealthConfig, Registry},
    clock,
    config::{self, Config},
    forward::{Engine, EngineKind, advice},
    health,
    iptables::{
        Plan,
        runner::{Managed, Runner},
    },
    listener::{Listener, ListenerSpec, Mode},
    reload::{self, ReloadPlan},
    select::{SelectionConfig, Selector, Strategy},
    session::Context,
    socks5::{Credentials, ServerAuth},
    stats::{
        Counters,
        shared::{BackendStore, SharedWords, View},
        source::StatsSource,
        status_file,
        writer::StatusWriter,
    },
    upstream::DialOptions,
};

/// Most connections served at once; each holds two sockets.
const MAX_CONNECTIONS: usize = 50_000;

/// Runs until `shutdown` fires, then drains and cleans up. Config is already
/// validated; so is every config received on `reloads`, which is applied as
/// [`reload::plan`] says (a closed channel just means no more reloads).
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    mut reloads: mpsc::Receiver<Config>,
) -> anyhow::Result<()> {
    let engine_kind = match config.forwarding.engine {
        config::Engine::Auto => EngineKind::Auto,
        config::Engine::Sockmap => EngineKind::Sockmap,
        config::Engine::Splice => EngineKind::Splice,
    };
    nofile_limit();
    let options = config.forwarding.forward_options(Some(config.pin_dir()));
    let engine = Arc::new(
        Engine::open(engine_kind, options)
            .await
            .context("opening the forwarding engine")?,
    );

    // The daemon's counters go where `balancer stats` reads them: the
    // mapped BPF maps under sockmap, process memory (and the status file)
    // otherwise.
    let epoch = (clock::now(), clock::wall_now());
    let (store, counters) = match engine.stats_memory() {
        Some((backends, daemon)) => {
            let daemon = Arc::new(SharedWords::Mapped(daemon));
            let counters = View::entry(&daemon, 0).map(Counters::in_words);
            (
                Some(BackendStore::new(
                    Arc::new(SharedWords::Mapped(backends)),
                    epoch.0,
                )),
                counters.unwrap_or_default(),
            )
        }
        None => (None, Counters::default()),
    };
    counters.stamp_owner(std::process::id(), status_file::unix_ms(epoch.1));
    let counters = Arc::new(counters);
    let registry = Arc::new(Registry::new(HealthConfig {
        stats: store,
        ..health_config(&config.health)
    }));
    registry
        .replace_all(reload::backend_specs(&config), clock::now())
        .context("building the backend registry")?;
    let dial = DialOptions {
        connect_timeout: config.forwarding.connect_timeout.0,
        handshake_timeout: config.forwarding.handshake_timeout.0,
        mark: (config.forwarding.mark != 0).then_some(config.forwarding.mark),
    };
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
    let mut selectors = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let bound = Listener::bind(listener_spec(listener, &config.balancing))?;
        let addr = bound.local_addr().context("reading a bound address")?;
        tracing::info!(listener = %listener.name, mode = bound.spec.mode.name(), %addr, "listening");
        selectors.push((bound.spec.clone(), listener.pool.clone()));
        listeners.push(bound);
    }
    let rules = manage_rules(&config)?;
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
            tracing::info!(%addr, dashboard = %format_args!("http://{addr}/"), "metrics listening");
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
    tasks.spawn(clean_registry(
        registry.clone(),
        engine.clone(),
        accepting.clone(),
    ));
    tasks.spawn(advise_engines(
        registry.clone(),
        engine.clone(),
        accepting.clone(),
    ));
    if let Some(api) = api {
        tasks.spawn(api.serve(shutdown.clone()));
    }
    for listener in listeners {
        tasks.spawn(listener.serve(context.clone(), limit.clone(), accepting.clone()));
    }
    let mut live = Live {
        config,
        registry: registry.clone(),
        selectors,
        dial,
        accepting: accepting.clone(),
        prober: None,
    };
    live.prober = live.spawn_prober(&mut tasks);

    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(new) = reloads.recv() => live.reload(&new, &mut tasks),
        }
    }
    let drain_timeout = live.config.forwarding.drain_timeout.0;
    tracing::info!(
        ?drain_timeout,
        "shutting down: no new connections, draining live ones"
    );
    accepting.cancel();
    let drained = tokio::time::timeout(
        drain_timeout,
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
    // Last: the rules lead to listeners, which are closed now; connections
    // already diverted keep their NAT entries.
    drop(rules);
    tracing::info!("stopped");
    Ok(())
}

/// Raises the descriptor limit and says how many connections it allows.
fn nofile_limit() {
    match crate::sys::limits::raise_nofile() {
        Ok(limit) => {
            // Two sockets a connection, and room for listeners, pipes of
            // the splice engine's first connections, probes and the API.
            let connections = limit.now.saturating_sub(64) / 2;
            if connections < MAX_CONNECTIONS as u64 {
                tracing::warn!(
                    nofile = limit.now,
                    connections,
                    "the descriptor limit allows about this many connections at once (2 sockets each, 4 more descriptors with splice); raise the hard limit (systemd LimitNOFILE=, ulimit -Hn) for more"
                );
            } else if limit.was < limit.now {
                tracing::debug!(
                    was = limit.was,
                    now = limit.now,
                    "raised the descriptor limit"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the descriptor limit"),
    }
}

/// Applies the iptables rules of the redirect/tproxy listeners when the
/// config asks the daemon to manage them.
fn manage_rules(config: &Config) -> anyhow::Result<Option<Managed>> {
    if !config.transparent.manage_rules {
        return Ok(None);
    }
    let plan = Plan::for_config(config);
    if plan.is_empty() {
        tracing::warn!(
            "transparent.manage_rules is set but no listener is redirect or tproxy: no rules to apply"
        );
        return Ok(None);
    }
    let (rules, applied) = Managed::apply(plan, Runner::host())
        .context("applying the iptables rules (transparent.manage_rules)")?;
    tracing::info!(
        added = applied.added,
        already_present = applied.present,
        "iptables rules applied; they are removed when the daemon stops"
    );
    Ok(Some(rules))
}

/// What a reload can change in the running daemon.
struct Live {
    /// The config in force (see [`ReloadPlan::effective`]).
    config: Config,
    registry: Arc<Registry>,
    /// Each running listener and its `pool`, from the config it was bound
    /// with: listeners are not rebound, so their scope stays.
    selectors: Vec<(Arc<ListenerSpec>, Option<String>)>,
    dial: DialOptions,
    accepting: CancellationToken,
    /// Stops the running prober, if any.
    prober: Option<CancellationToken>,
}

impl Live {
    fn spawn_prober(&self, tasks: &mut JoinSet<()>) -> Option<CancellationToken> {
        if !self.config.health.probe.enabled {
            return None;
        }
        let stop = self.accepting.child_token();
        tasks.spawn(health::run(
            self.registry.clone(),
            self.dial.clone(),
            health::ProbeOptions::from_config(&self.config.health),
            stop.clone(),
        ));
        Some(stop)
    }

    /// Applies `new` as far as it can live; warns about the rest. On a
    /// registry refusal nothing changes.
    fn reload(&mut self, new: &Config, tasks: &mut JoinSet<()>) {
        let ReloadPlan {
            backends,
            balancing,
            probe,
            applied,
            needs_restart,
            iptables_only,
            effective,
        } = reload::plan(&self.config, new);
        let report = match self.registry.replace_all(backends, clock::now()) {
            Ok(report) => report,
            Err(error) => {
                tracing::warn!(%error, "config not reloaded: the backend list cannot be applied; keeping the running config");
                return;
            }
        };
        if let Some(balancing) = &balancing {
            for (spec, scope) in &self.selectors {
                let config = selection_config(balancing, scope.clone());
                spec.selector.store(Arc::new(Selector::new(config)));
            }
        }
        self.config = effective;
        if probe.is_some() {
            if let Some(stop) = self.prober.take() {
                stop.cancel();
            }
            self.prober = self.spawn_prober(tasks);
        }
        let kept = self
            .registry
            .pool()
            .len()
            .saturating_sub(report.added.len() + report.replaced.len());
        tracing::info!(
            added = report.added.len(),
            removed = report.removed.len(),
            kept,
            updated = report.updated.len(),
            replaced = report.replaced.len(),
            changed = %list(&applied),
            needs_restart = %list(&needs_restart),
            "config reloaded"
        );
        for key in &needs_restart {
            tracing::warn!(%key, "changed in the config file but needs a restart; still running with the old value");
        }
        for key in &iptables_only {
            tracing::warn!(%key, "changed: used by `balancer iptables`, not the daemon; re-run it to apply");
        }
        // Old listeners with the new backends can leave a listener's pool
        // empty; say so rather than fail its clients silently.
        if let Err(error) = self.config.validate() {
            tracing::warn!(error = %error, "the running mix of old and reloaded settings is inconsistent until a restart");
        }
    }
}

/// Keys for a log field: comma-separated, `none` rather than nothing.
fn list(keys: &[String]) -> String {
    if keys.is_empty() {
        "none".to_owned()
    } else {
        keys.join(",")
    }
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
        selector: ArcSwap::from_pointee(Selector::new(selection_config(
            balancing,
            listener.pool.clone(),
        ))),
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

/// How often the daemon looks at each backend's skb counters for advice.
const ADVICE_INTERVAL: Duration = Duration::from_secs(10);

/// Under sockmap, tells the operator once per backend (and daemon run) when
/// a backend's downloads come in small skbs, where splice serves better
/// (`forward::advice`). Backends already on `engine: splice` are skipped.
async fn advise_engines(registry: Arc<Registry>, engine: Arc<Engine>, stop: CancellationToken) {
    if !matches!(*engine, Engine::Sockmap(_)) {
        return;
    }
    let mut advised = std::collections::HashSet::new();
    every(ADVICE_INTERVAL, &stop, || {
        for backend in registry.pool().backends() {
            if advised.contains(&backend.id) {
                continue;
            }
            let Some(mean) = engine
                .redirected(backend.slot)
                .and_then(|redirected| advice::splice_advised(backend.spec().engine, &redirected))
            else {
                continue;
            };
            advised.insert(backend.id);
            tracing::warn!(
                backend = backend.name(),
                bytes_per_skb = mean,
                "downloads from this backend reach the sockmap verdict in small skbs \
                 ({mean} bytes each on average); sockmap pays per skb, and behind such \
                 backends splice moved 1.5-2 times as much per download in the benchmarks: \
                 consider `engine: splice` on this backend's entry"
            );
        }
    })
    .await;
}

/// Runs `work` now and then every `period` until `stop`.
async fn every(period: Duration, stop: &CancellationToken, mut work: impl FnMut()) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => work(),
        }
    }
}

/// How often the registry frees drained backends and expires idle run-time
/// ones.
const CLEANUP_INTERVAL: Duration = Duration::from_secs(10);

/// Removes run-time backends idle for `health.runtime_idle_timeout` and
/// frees the slots of drained backends nobody holds any more, zeroing their
/// byte counters so the slot's next backend starts at zero.
async fn clean_registry(registry: Arc<Registry>, engine: Arc<Engine>, stop: CancellationToken) {
    every(CLEANUP_INTERVAL, &stop, || {
        let report = registry.cleanup(clock::now());
        for name in &report.expired {
            tracing::info!(backend = %name, "removed an idle run-time backend");
        }
        for slot in report.reaped {
            engine.clear_slot(slot);
            tracing::debug!(slot = slot.0, "freed the slot of a drained backend");
        }
    })
    .await;
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
        runtime_idle_timeout: health.runtime_idle_timeout.0,
        seed: rand::random(),
        ..HealthConfig::default()
    }
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
