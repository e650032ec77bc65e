//! Backends: who they are, what they did lately and whether they may take
//! traffic. Pure bookkeeping: no sockets, no clock (every call takes `now`).
//!
//! - [`outcome`]: the one classification of an attempt.
//! - [`window`]: the last N outcomes and the success rate.
//! - [`latency`]: latency EMA and histogram.
//! - [`breaker`]: the circuit breaker.
//! - [`registry`]: the set of backends, swapped as immutable snapshots.
//! - [`admin`]: an operator's enable/disable/drain override.

pub mod admin;
pub mod breaker;
pub mod latency;
pub mod outcome;
pub mod registry;
pub mod window;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use admin::AdminState;
pub use breaker::{
    Admission, Breaker, BreakerConfig, BreakerSnapshot, BreakerState, TransitionEvent,
    TransitionReason,
};
pub use latency::{HistogramSnapshot, LATENCY_BUCKETS_SECONDS};
pub use outcome::{FAILURE_LABELS, FailureCategory, Outcome};
pub use registry::{CleanupReport, Pool, Registry, RegistryError, ReplaceReport};

use balancer_common::{BACKEND_STAT_WORDS, FAILURE_CATEGORIES, LATENCY_BUCKETS, UNKNOWN, stat};

use crate::forward::{BackendEngine, BackendSlot};
use crate::stats::shared::{BackendStore, View};
use admin::AdminCell;
use breaker::{Signal, Source};
use latency::LatencyEma;
use window::OutcomeWindow;

const _: () = assert!(FAILURE_LABELS.len() == FAILURE_CATEGORIES);
const _: () = assert!(LATENCY_BUCKETS_SECONDS.len() + 1 == LATENCY_BUCKETS);

/// Health tuning shared by every backend of a registry.
#[derive(Clone, Debug, PartialEq)]
pub struct HealthConfig {
    /// Outcomes kept per backend for the success rate (`metrics_window_size`).
    pub window_size: usize,
    /// Weight of the newest latency sample, see [`latency::DEFAULT_EMA_ALPHA`].
    pub ema_alpha: f64,
    /// The circuit breaker.
    pub breaker: BreakerConfig,
    /// When every backend of a pool is open, admit the least recently
    /// failed ones as if half-open instead of failing every client.
    pub panic_mode: bool,
    /// Backends registered at run time (not from the config file) that saw
    /// no attempt for this long are removed by [`Registry::cleanup`].
    pub runtime_idle_timeout: Duration,
    /// Seed of the per-backend jitter RNGs (each backend mixes in its id).
    pub seed: u64,
    /// Where each backend's counters live (the mapped `BACKEND_STATS`
    /// under sockmap); `None` gives every backend a block of its own.
    pub stats: Option<BackendStore>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            window_size: 100,
            ema_alpha: latency::DEFAULT_EMA_ALPHA,
            breaker: BreakerConfig::default(),
            panic_mode: true,
            runtime_idle_timeout: Duration::from_secs(600),
            seed: 0x5eed_ba1a_11ce_0001,
            stats: None,
        }
    }
}

/// Unique id of a backend for the registry's lifetime, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendId(pub u64);

/// Where a backend came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file; removed only by a reload.
    Config,
    /// Registered at run time (API); removed when idle too long.
    Runtime,
}

/// What a backend is, as configured.
#[derive(Clone, PartialEq, Eq)]
pub struct BackendSpec {
    /// Unique name.
    pub name: String,
    /// `host:port`, resolved when dialing.
    pub address: String,
    /// SOCKS5 username.
    pub username: Option<String>,
    /// SOCKS5 password.
    pub password: Option<String>,
    /// Relative weight for weighted strategies; 0 takes no weighted traffic.
    pub weight: u32,
    /// Only listeners of this scope use the backend; `None` serves all.
    pub scope: Option<String>,
    /// Used only while no primary backend is available.
    pub backup: bool,
    /// Free-form labels.
    pub metadata: BTreeMap<String, String>,
    /// Which engine carries its connections.
    pub engine: BackendEngine,
}

impl BackendSpec {
    /// A primary backend of weight 1 with no credentials.
    #[must_use]
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            address: address.into(),
            username: None,
            password: None,
            weight: 1,
            scope: None,
            backup: false,
            metadata: BTreeMap::new(),
            engine: BackendEngine::Auto,
        }
    }

    /// Whether dialing `other` reaches the same proxy with the same identity.
    fn same_identity(&self, other: &Self) -> bool {
        self.address == other.address
            && self.username == other.username
            && self.password == other.password
    }
}

impl std::fmt::Debug for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendSpec")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("weight", &self.weight)
            .field("scope", &self.scope)
            .field("backup", &self.backup)
            .field("metadata", &self.metadata)
            .field("engine", &self.engine)
            .finish()
    }
}

/// Counts the backends of a registry that are not open, so passive
/// outcomes never eject the last one. Approximate under races by design:
/// two last backends failing at once can both open, and panic mode covers
/// that case.
#[derive(Debug, Default)]
pub(crate) struct Census {
    admitted: AtomicUsize,
    // Bumped on every breaker transition and drain, so selection can cache
    // the admitted set until something changes.
    version: AtomicU64,
}

impl Census {
    fn bump(&self) {
        self.version.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

/// Live state of a backend. Shared by the successive [`Backend`] values a
/// reload creates when only tunables (weight, scope...) change, so its
/// counters survive.
///
/// Counters, gauges, latency and timestamps live in `cells`, a block laid
/// out as `balancer_common::stat` says: the backend's slot of the mapped
/// `BACKEND_STATS` under sockmap, so every update below is one atomic
/// instruction on the map that `balancer stats` reads.
#[derive(Debug)]
pub struct Health {
    created: Instant,
    // The instant the `*_NS` timestamps count from.
    epoch: Instant,
    breaker: Breaker,
    window: OutcomeWindow,
    ema: LatencyEma,
    cells: View<[AtomicU64; BACKEND_STAT_WORDS]>,
    draining: AtomicBool,
    admin: AdminCell,
    census: Arc<Census>,
}

/// The breaker state as the maps store it (`stat::BREAKER_STATE`).
#[must_use]
pub fn breaker_code(state: BreakerState) -> u64 {
    match state {
        BreakerState::Unknown => 0,
        BreakerState::Closed => 1,
        BreakerState::Open => 2,
        BreakerState::HalfOpen => 3,
    }
}

/// The breaker state of a `stat::BREAKER_STATE` word.
#[must_use]
pub fn breaker_from_code(code: u64) -> Option<BreakerState> {
    [
        BreakerState::Unknown,
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ]
    .into_iter()
    .find(|state| breaker_code(*state) == code)
}

/// The operator state as the maps store it (`stat::ADMIN_STATE`).
#[must_use]
pub fn admin_code(state: AdminState) -> u64 {
    match state {
        AdminState::Enabled => 0,
        AdminState::Disabled => 1,
        AdminState::Draining => 2,
    }
}

/// The operator state of a `stat::ADMIN_STATE` word.
#[must_use]
pub fn admin_from_code(code: u64) -> Option<AdminState> {
    [
        AdminState::Enabled,
        AdminState::Disabled,
        AdminState::Draining,
    ]
    .into_iter()
    .find(|state| admin_code(*state) == code)
}

/// A success rate as `stat::SUCCESS_RATE_PPM` stores it.
fn rate_ppm(rate: Option<f64>) -> u64 {
    rate.map_or(UNKNOWN, |rate| (rate.clamp(0.0, 1.0) * 1e6).round() as u64)
}

impl Health {
    fn new(
        config: &HealthConfig,
        now: Instant,
        seed: u64,
        (id, slot): (BackendId, BackendSlot),
        census: Arc<Census>,
    ) -> Self {
        census.admitted.fetch_add(1, Ordering::Relaxed);
        let (cells, epoch) = match &config.stats {
            Some(store) => (store.slot(slot.0).unwrap_or_else(View::alone), store.epoch),
            None => (View::alone(), now),
        };
        let breaker = Breaker::new(config.breaker.clone(), now, seed);
        // The slot's previous owner is gone (the registry frees a slot only
        // then): start from zero, and say whose the block is now.
        for cell in cells.iter() {
            cell.store(0, Ordering::Relaxed);
        }
        cells[stat::SUCCESS_RATE_PPM].store(UNKNOWN, Ordering::Relaxed);
        cells[stat::LATENCY_EMA_SECONDS_F64].store(latency::NO_SAMPLE, Ordering::Relaxed);
        cells[stat::BREAKER_STATE].store(breaker_code(breaker.state()), Ordering::Relaxed);
        cells[stat::BACKEND_ID].store(id.0, Ordering::Release);
        Self {
            created: now,
            epoch,
            breaker,
            window: OutcomeWindow::new(config.window_size),
            ema: LatencyEma::new(config.ema_alpha),
            cells,
            draining: AtomicBool::new(false),
            admin: AdminCell::default(),
            census,
        }
    }

    fn cell(&self, index: usize) -> &AtomicU64 {
        &self.cells[index]
    }

    fn count(&self, index: usize) -> u64 {
        self.cells[index].load(Ordering::Relaxed)
    }

    fn stamp(&self, index: usize, now: Instant) {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        self.cells[index].fetch_max(
            stat::stamp_word(u64::try_from(nanos).unwrap_or(u64::MAX)),
            Ordering::Relaxed,
        );
    }

    fn read_stamp(&self, index: usize) -> Option<Instant> {
        stat::stamp_nanos(self.cells[index].load(Ordering::Relaxed))
            .map(|nanos| self.epoch + Duration::from_nanos(nanos))
    }

    /// Publishes the operator and pool state for readers of the maps.
    fn publish_exclusion(&self) {
        self.cells[stat::ADMIN_STATE].store(admin_code(self.admin.get()), Ordering::Relaxed);
        self.cells[stat::REMOVED].store(
            u64::from(self.draining.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
    }

    fn record_latency(&self, latency: Duration) {
        self.ema
            .record_in(self.cell(stat::LATENCY_EMA_SECONDS_F64), latency);
        self.cell(stat::LATENCY_BUCKET_0 + latency::bucket_index(latency))
            .fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.cell(stat::LATENCY_SUM_MICROS)
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Whether selection must skip it: removed from the pool, or held back
    /// by an operator. The census counts only backends that are neither
    /// excluded nor open.
    fn excluded(&self) -> bool {
        self.draining.load(Ordering::Relaxed) || !self.admin.get().admits()
    }

    /// Keeps the census in step with a change of [`Self::excluded`].
    fn account_exclusion(&self, was: bool) {
        self.publish_exclusion();
        let is = self.excluded();
        if was != is && self.breaker.state() != BreakerState::Open {
            if is {
                self.census.admitted.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.census.admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.census.bump();
    }

    /// Zeroes the counters; breaker, window, latency, the active gauge and
    /// timestamps stay.
    fn reset_counters(&self) {
        for index in [
            stat::ATTEMPTS,
            stat::SUCCESSES,
            stat::RETRIES,
            stat::PROBES_OK,
            stat::PROBES_FAILED,
        ]
        .into_iter()
        .chain(stat::FAILURES_0..stat::FAILURES_0 + FAILURE_CATEGORIES)
        {
            self.cells[index].store(0, Ordering::Relaxed);
        }
    }

    /// Keeps the census in step with a transition.
    fn account(&self, event: Option<TransitionEvent>) -> Option<TransitionEvent> {
        if let Some(event) = &event {
            self.census.bump();
            self.cells[stat::BREAKER_STATE].store(breaker_code(event.to), Ordering::Relaxed);
        }
        if let Some(event) = &event
            && !self.excluded()
        {
            let was_open = event.from == BreakerState::Open;
            let is_open = event.to == BreakerState::Open;
            if is_open && !was_open {
                self.census.admitted.fetch_sub(1, Ordering::Relaxed);
            } else if was_open && !is_open {
                self.census.admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
        event
    }

    fn feed(&self, healthy: bool, source: Source, now: Instant) -> Option<TransitionEvent> {
        self.window.record(healthy);
        let rate = self.window.success_rate();
        self.cells[stat::SUCCESS_RATE_PPM].store(rate_ppm(rate), Ordering::Relaxed);
        let window = rate.map(|rate| (rate, self.window.len()));
        let signal = if healthy {
            Signal::Healthy
        } else {
            Signal::Failed
        };
        let census = &self.census;
        let event = self.breaker.record(signal, source, window, now, || {
            census.admitted.load(Ordering::Relaxed) > 1
        });
        self.account(event)
    }
}

impl Drop for Health {
    fn drop(&mut self) {
        if !self.excluded() && self.breaker.state() != BreakerState::Open {
            self.census.admitted.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// One upstream SOCKS5 proxy.
#[derive(Debug)]
pub struct Backend {
    /// Unique for the registry's lifetime.
    pub id: BackendId,
    /// Index of its byte counters in the forwarding engine.
    pub slot: BackendSlot,
    /// Where it came from.
    pub origin: Origin,
    spec: BackendSpec,
    key_hash: u64,
    health: Arc<Health>,
}

/// Decrements a backend's active connections when dropped.
#[derive(Debug)]
pub struct ActiveConnection {
    health: Arc<Health>,
}

impl Drop for ActiveConnection {
    fn drop(&mut self) {
        self.health
            .cell(stat::ACTIVE)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A status line for one backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendStatus {
    /// Id.
    pub id: BackendId,
    /// Name.
    pub name: String,
    /// `host:port`.
    pub address: String,
    /// Engine counter slot.
    pub slot: BackendSlot,
    /// Which engine carries its connections (`backends[].engine`).
    pub engine: BackendEngine,
    /// Removed, waiting for its connections to finish.
    pub draining: bool,
    /// The operator's override.
    pub admin: AdminState,
    /// Breaker state, failures in a row, time in state, transitions.
    pub breaker: BreakerSnapshot,
    /// Success rate over the window, `None` when the window is empty.
    pub success_rate: Option<f64>,
    /// Latency EMA.
    pub latency: Option<Duration>,
    /// Connections now open through it.
    pub active: u64,
    /// Attempts ever.
    pub attempts: u64,
    /// Successful attempts ever.
    pub successes: u64,
    /// Failures per label of [`FAILURE_LABELS`], same order.
    pub failures: [u64; FAILURE_LABELS.len()],
    /// Attempts that were failovers from another backend.
    pub retries: u64,
    /// Active probes that succeeded.
    pub probes_ok: u64,
    /// Active probes that failed.
    pub probes_failed: u64,
    /// Time since the last attempt, success and failure.
    pub since_attempt: Option<Duration>,
    /// Time since the last success.
    pub since_success: Option<Duration>,
    /// Time since the last failure.
    pub since_failure: Option<Duration>,
}

impl Backend {
    pub(crate) fn new(
        id: BackendId,
        slot: BackendSlot,
        origin: Origin,
        spec: BackendSpec,
        health: Arc<Health>,
    ) -> Self {
        Self {
            id,
            slot,
            origin,
            key_hash: hash_bytes(spec.name.as_bytes()),
            spec,
            health,
        }
    }

    /// Unique name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// `host:port`, unresolved.
    #[must_use]
    pub fn address(&self) -> &str {
        &self.spec.address
    }

    /// SOCKS5 username.
    #[must_use]
    pub fn username(&self) -> Option<&str> {
        self.spec.username.as_deref()
    }

    /// SOCKS5 password.
    #[must_use]
    pub fn password(&self) -> Option<&str> {
        self.spec.password.as_deref()
    }

    /// Relative weight.
    #[must_use]
    pub fn weight(&self) -> u32 {
        self.spec.weight
    }

    /// Scope, `None` for every listener.
    #[must_use]
    pub fn scope(&self) -> Option<&str> {
        self.spec.scope.as_deref()
    }

    /// Whether it is a backup.
    #[must_use]
    pub fn backup(&self) -> bool {
        self.spec.backup
    }

    /// Free-form labels.
    #[must_use]
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.spec.metadata
    }

    /// The whole configured description.
    #[must_use]
    pub fn spec(&self) -> &BackendSpec {
        &self.spec
    }

    /// Stable hash of the name, for consistent hashing across restarts.
    #[must_use]
    pub fn key_hash(&self) -> u64 {
        self.key_hash
    }

    /// The live state (shared with a reloaded copy of this backend).
    #[must_use]
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Whether it was removed and only finishes its connections.
    #[must_use]
    pub fn is_draining(&self) -> bool {
        self.health.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_draining(&self) {
        let was = self.health.excluded();
        self.health.draining.store(true, Ordering::Relaxed);
        self.health.account_exclusion(was);
    }

    /// The operator's override.
    #[must_use]
    pub fn admin_state(&self) -> AdminState {
        self.health.admin.get()
    }

    /// Sets the operator's override, returning the previous one. Shared
    /// with a reloaded copy of this backend, so a reload keeps it.
    pub fn set_admin_state(&self, state: AdminState) -> AdminState {
        let was = self.health.excluded();
        let previous = self.health.admin.swap(state);
        self.health.account_exclusion(was);
        previous
    }

    /// Whether selection may consider it at all: neither removed nor held
    /// back by an operator. The one check every path to a new connection
    /// goes through ([`Self::allows`], [`Self::admit`], panic mode).
    #[must_use]
    pub fn is_selectable(&self) -> bool {
        !self.health.excluded()
    }

    /// Zeroes its counters (attempts, successes, failures, retries,
    /// probes); breaker state, outcome window, latency and timestamps stay.
    pub fn reset_counters(&self) {
        self.health.reset_counters();
    }

    /// Whether selection may offer it now (no claim is made).
    #[must_use]
    pub fn allows(&self, now: Instant) -> Admission {
        if !self.is_selectable() {
            return Admission::Rejected;
        }
        self.health.breaker.allows(now)
    }

    /// Claims an attempt right before dialing; skip the backend when this
    /// says `Rejected` (a candidate list is a snapshot: a half-open trial
    /// place may have been taken since). With `panic` (the candidates came
    /// from panic mode) an open or full half-open breaker is admitted as a
    /// trial anyway.
    pub fn admit(&self, now: Instant, panic: bool) -> (Admission, Option<TransitionEvent>) {
        // Candidates are a snapshot: the backend may have been disabled or
        // removed since they were picked.
        if !self.is_selectable() {
            return (Admission::Rejected, None);
        }
        if panic
            && matches!(
                self.health.breaker.state(),
                BreakerState::Open | BreakerState::HalfOpen
            )
        {
            let event = self.health.breaker.admit_in_panic(now);
            return (Admission::Trial, self.health.account(event));
        }
        let (admission, event) = self.health.breaker.admit(now);
        (admission, self.health.account(event))
    }

    /// Records the outcome of one client attempt: counted under its label,
    /// fed to the window and the breaker.
    pub fn record(&self, outcome: Outcome, now: Instant) -> Option<TransitionEvent> {
        let health = &self.health;
        health.cell(stat::ATTEMPTS).fetch_add(1, Ordering::Relaxed);
        health.stamp(stat::LAST_ATTEMPT_NS, now);
        let healthy = match outcome {
            Ok(latency) => {
                health.cell(stat::SUCCESSES).fetch_add(1, Ordering::Relaxed);
                health.stamp(stat::LAST_SUCCESS_NS, now);
                health.record_latency(latency);
                true
            }
            Err(category) => {
                health
                    .cell(stat::FAILURES_0 + category.index())
                    .fetch_add(1, Ordering::Relaxed);
                health.stamp(stat::LAST_FAILURE_NS, now);
                false
            }
        };
        health.feed(healthy, Source::Passive, now)
    }

    /// Records an active probe's result; a probe's latency feeds the EMA
    /// so lowest-latency selection learns about backends it never picks.
    pub fn record_probe(&self, outcome: Outcome, now: Instant) -> Option<TransitionEvent> {
        let health = &self.health;
        let healthy = match outcome {
            Ok(latency) => {
                health.cell(stat::PROBES_OK).fetch_add(1, Ordering::Relaxed);
                health
                    .ema
                    .record_in(health.cell(stat::LATENCY_EMA_SECONDS_F64), latency);
                true
            }
            Err(_) => {
                health
                    .cell(stat::PROBES_FAILED)
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
        };
        health.feed(healthy, Source::Probe, now)
    }

    /// Counts an attempt that is a failover from another backend.
    pub fn record_retry(&self) {
        self.health
            .cell(stat::RETRIES)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Materialises an elapsed open interval (for a periodic task).
    pub fn poll(&self, now: Instant) -> Option<TransitionEvent> {
        let event = self.health.breaker.poll(now);
        self.health.account(event)
    }

    /// Forces the breaker (operator action).
    pub fn force(&self, to: BreakerState, now: Instant) -> Option<TransitionEvent> {
        let event = self.health.breaker.force(to, now);
        self.health.account(event)
    }

    /// Counts a connection as open until the guard is dropped.
    #[must_use]
    pub fn connection_opened(&self) -> ActiveConnection {
        self.health
            .cell(stat::ACTIVE)
            .fetch_add(1, Ordering::Relaxed);
        ActiveConnection {
            health: Arc::clone(&self.health),
        }
    }

    /// Connections now open through it.
    #[must_use]
    pub fn active(&self) -> u64 {
        self.health.count(stat::ACTIVE)
    }

    /// Breaker state.
    #[must_use]
    pub fn state(&self) -> BreakerState {
        self.health.breaker.state()
    }

    /// Latency EMA, `None` before the first sample.
    #[must_use]
    pub fn latency(&self) -> Option<Duration> {
        LatencyEma::read(self.health.count(stat::LATENCY_EMA_SECONDS_F64))
    }

    /// Latency histogram.
    #[must_use]
    pub fn latency_histogram(&self) -> HistogramSnapshot {
        let cells = &self.health.cells;
        HistogramSnapshot::from_buckets(
            &cells[stat::LATENCY_BUCKET_0..stat::LATENCY_BUCKET_0 + LATENCY_BUCKETS],
            &cells[stat::LATENCY_SUM_MICROS],
        )
    }

    /// Success rate over the window, `None` when empty.
    #[must_use]
    pub fn success_rate(&self) -> Option<f64> {
        self.health.window.success_rate()
    }

    /// When it last failed.
    #[must_use]
    pub fn last_failure(&self) -> Option<Instant> {
        self.health.read_stamp(stat::LAST_FAILURE_NS)
    }

    /// When a client connection last tried it (probes do not count).
    #[must_use]
    pub fn last_client_attempt(&self) -> Option<Instant> {
        self.health.read_stamp(stat::LAST_ATTEMPT_NS)
    }

    /// When it was last tried, or registered if never.
    #[must_use]
    pub fn last_activity(&self) -> Instant {
        self.health
            .read_stamp(stat::LAST_ATTEMPT_NS)
            .unwrap_or(self.health.created)
    }

    /// A status line.
    #[must_use]
    pub fn status(&self, now: Instant) -> BackendStatus {
        let health = &self.health;
        let since = |index| {
            health
                .read_stamp(index)
                .map(|at| now.saturating_duration_since(at))
        };
        BackendStatus {
            id: self.id,
            name: self.spec.name.clone(),
            address: self.spec.address.clone(),
            slot: self.slot,
            engine: self.spec.engine,
            draining: self.is_draining(),
            admin: self.admin_state(),
            breaker: health.breaker.snapshot(now),
            success_rate: self.success_rate(),
            latency: self.latency(),
            active: self.active(),
            attempts: health.count(stat::ATTEMPTS),
            successes: health.count(stat::SUCCESSES),
            failures: std::array::from_fn(|i| health.count(stat::FAILURES_0 + i)),
            retries: health.count(stat::RETRIES),
            probes_ok: health.count(stat::PROBES_OK),
            probes_failed: health.count(stat::PROBES_FAILED),
            since_attempt: since(stat::LAST_ATTEMPT_NS),
            since_success: since(stat::LAST_SUCCESS_NS),
            since_failure: since(stat::LAST_FAILURE_NS),
        }
    }
}

/// FNV-1a then a SplitMix64 finaliser: stable across runs and builds,
/// unlike `std`'s randomly keyed hasher.
#[must_use]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(hash)
}

/// SplitMix64 finaliser: spreads every input bit over the output.
#[must_use]
pub fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
