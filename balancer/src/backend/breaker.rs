//! The circuit breaker of one backend: Unknown → Closed → Open → HalfOpen,
//! with exponential recovery backoff and jitter from an injected RNG.
//!
//! The hot path ([`Breaker::allows`] on a closed breaker) is one atomic
//! load; everything else takes a short mutex, since transitions are rare.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How many transitions a breaker remembers for status pages.
pub const HISTORY_LEN: usize = 8;

/// Tuning of a breaker.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Consecutive backend-fault failures that open the breaker.
    pub failure_threshold: u32,
    /// Also open when the window's success rate falls below this share...
    pub window_threshold: Option<f64>,
    /// ...provided the window holds at least this many outcomes.
    pub window_min_volume: u64,
    /// How long the breaker stays open the first time.
    pub recovery_interval: Duration,
    /// The cap of the doubling recovery interval.
    pub max_recovery_interval: Duration,
    /// Relative jitter applied to each open interval: 0.1 means ±10 %.
    pub jitter: f64,
    /// Attempts admitted at once while half-open.
    pub half_open_trials: u32,
    /// A trial whose outcome is not recorded within this time is presumed
    /// lost and frees its place, so a forgotten trial cannot wedge the
    /// breaker half-open forever.
    pub trial_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window_threshold: None,
            window_min_volume: 20,
            recovery_interval: Duration::from_secs(10),
            max_recovery_interval: Duration::from_secs(60),
            jitter: 0.1,
            half_open_trials: 1,
            trial_timeout: Duration::from_secs(30),
        }
    }
}

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// No outcome yet; admitted like closed.
    Unknown,
    /// Healthy: everything is admitted.
    Closed,
    /// Ejected: nothing is admitted until the recovery interval elapses.
    Open,
    /// Recovering: a limited number of trial attempts are admitted.
    HalfOpen,
}

impl BreakerState {
    /// Lower-case name for logs and metric labels.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Unknown => 0,
            Self::Closed => 1,
            Self::Open => 2,
            Self::HalfOpen => 3,
        }
    }
}

/// Why a breaker changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransitionReason {
    /// The first healthy outcome of a backend with no history.
    FirstSuccess,
    /// `failure_threshold` consecutive failures.
    ThresholdReached,
    /// The window's success rate fell below `window_threshold`.
    WindowBelowThreshold,
    /// The open interval elapsed.
    RecoveryElapsed,
    /// A half-open trial succeeded.
    TrialOk,
    /// A half-open trial failed.
    TrialFailed,
    /// An active health probe succeeded.
    ProbeOk,
    /// An active health probe failed.
    ProbeFailed,
    /// Every backend was open and this one was admitted anyway.
    Panic,
    /// An operator forced the state.
    Manual,
}

/// One state change, returned to the caller so it can log it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransitionEvent {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// Why.
    pub reason: TransitionReason,
    /// When.
    pub at: Instant,
    /// For a transition to `Open`: how long it stays open (jitter included).
    pub open_for: Option<Duration>,
}

/// What a breaker says about one more attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Normal traffic.
    Allowed,
    /// A half-open trial: its outcome decides the breaker.
    Trial,
    /// Not now.
    Rejected,
}

impl Admission {
    /// Whether the attempt may go ahead.
    #[must_use]
    pub fn admitted(&self) -> bool {
        !matches!(self, Self::Rejected)
    }
}

/// What the breaker learns from one outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// The backend did its job.
    Healthy,
    /// The backend is at fault.
    Failed,
}

/// Where a signal came from: passive traffic or an active probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A client's connection attempt.
    Passive,
    /// An active health probe.
    Probe,
}

/// The breaker of one backend.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    // Mirror of `inner.state` so a closed breaker admits without the lock.
    fast_state: AtomicU8,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Instant,
    nominal_interval: Duration,
    trials: Vec<Instant>,
    changed_at: Instant,
    history: VecDeque<TransitionEvent>,
    rng: SmallRng,
}

/// A copy of a breaker's state for status pages.
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: BreakerState,
    /// Backend-fault failures in a row.
    pub consecutive_failures: u32,
    /// Time in the current state.
    pub since_change: Duration,
    /// For an open breaker, time until it turns half-open.
    pub reopens_in: Option<Duration>,
    /// The last transitions, oldest first.
    pub history: Vec<TransitionEvent>,
}

impl Breaker {
    /// A breaker with no data; `seed` drives the jitter.
    #[must_use]
    pub fn new(config: BreakerConfig, now: Instant, seed: u64) -> Self {
        let nominal_interval = config.recovery_interval;
        Self {
            config,
            fast_state: AtomicU8::new(BreakerState::Unknown.to_u8()),
            inner: Mutex::new(Inner {
                state: BreakerState::Unknown,
                consecutive_failures: 0,
                open_until: now,
                nominal_interval,
                trials: Vec::new(),
                changed_at: now,
                history: VecDeque::with_capacity(HISTORY_LEN),
                rng: SmallRng::seed_from_u64(seed),
            }),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave `Inner` half-updated in a way that
        // matters more than losing health tracking entirely.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, without side effects (an elapsed open interval still
    /// reads `Open` until [`Self::poll`] or [`Self::admit`] moves it).
    #[must_use]
    pub fn state(&self) -> BreakerState {
        match self.fast_state.load(Ordering::Acquire) {
            0 => BreakerState::Unknown,
            1 => BreakerState::Closed,
            2 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether one more attempt would be admitted now, without claiming
    /// anything: selection filters with this.
    #[must_use]
    pub fn allows(&self, now: Instant) -> Admission {
        if matches!(self.state(), BreakerState::Unknown | BreakerState::Closed) {
            return Admission::Allowed;
        }
        let mut inner = self.lock();
        self.peek(&mut inner, now)
    }

    fn peek(&self, inner: &mut Inner, now: Instant) -> Admission {
        match inner.state {
            BreakerState::Unknown | BreakerState::Closed => Admission::Allowed,
            BreakerState::Open if now >= inner.open_until => Admission::Trial,
            BreakerState::Open => Admission::Rejected,
            BreakerState::HalfOpen => {
                let timeout = self.config.trial_timeout;
                inner
                    .trials
                    .retain(|started| now.saturating_duration_since(*started) < timeout);
                if inner.trials.len() < self.trial_limit() {
                    Admission::Trial
                } else {
                    Admission::Rejected
                }
            }
        }
    }

    fn trial_limit(&self) -> usize {
        usize::try_from(self.config.half_open_trials.max(1)).unwrap_or(1)
    }

    /// Claims an attempt: an elapsed open interval turns half-open and a
    /// trial place is taken. Call it right before dialing.
    pub fn admit(&self, now: Instant) -> (Admission, Option<TransitionEvent>) {
        if matches!(self.state(), BreakerState::Unknown | BreakerState::Closed) {
            return (Admission::Allowed, None);
        }
        let mut inner = self.lock();
        let admission = self.peek(&mut inner, now);
        if admission != Admission::Trial {
            return (admission, None);
        }
        let event = (inner.state == BreakerState::Open).then(|| {
            self.transition(
                &mut inner,
                BreakerState::HalfOpen,
                TransitionReason::RecoveryElapsed,
                now,
            )
        });
        inner.trials.push(now);
        (Admission::Trial, event)
    }

    /// Admits an attempt although the breaker is open, because every
    /// backend of the pool is: the attempt becomes a half-open trial.
    pub fn admit_in_panic(&self, now: Instant) -> Option<TransitionEvent> {
        let mut inner = self.lock();
        let event = (inner.state == BreakerState::Open).then(|| {
            self.transition(
                &mut inner,
                BreakerState::HalfOpen,
                TransitionReason::Panic,
                now,
            )
        });
        if inner.state == BreakerState::HalfOpen {
            inner.trials.push(now);
        }
        event
    }

    /// Materialises an elapsed open interval as `HalfOpen`, for a periodic
    /// task that wants the transition logged even without traffic.
    pub fn poll(&self, now: Instant) -> Option<TransitionEvent> {
        if self.state() != BreakerState::Open {
            return None;
        }
        let mut inner = self.lock();
        (inner.state == BreakerState::Open && now >= inner.open_until).then(|| {
            self.transition(
                &mut inner,
                BreakerState::HalfOpen,
                TransitionReason::RecoveryElapsed,
                now,
            )
        })
    }

    /// Feeds one outcome in. `window` is the success rate and volume of the
    /// backend's outcome window after this outcome; `may_eject` is asked
    /// before passive traffic alone opens a closed breaker (the pool says
    /// no for its last admitted backend).
    pub fn record(
        &self,
        signal: Signal,
        source: Source,
        window: Option<(f64, u64)>,
        now: Instant,
        may_eject: impl FnOnce() -> bool,
    ) -> Option<TransitionEvent> {
        let mut inner = self.lock();
        match (inner.state, signal) {
            (BreakerState::Unknown | BreakerState::Closed, Signal::Healthy) => {
                inner.consecutive_failures = 0;
                (inner.state == BreakerState::Unknown).then(|| {
                    let reason = match source {
                        Source::Passive => TransitionReason::FirstSuccess,
                        Source::Probe => TransitionReason::ProbeOk,
                    };
                    self.transition(&mut inner, BreakerState::Closed, reason, now)
                })
            }
            (BreakerState::Unknown | BreakerState::Closed, Signal::Failed) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                let reason = if inner.consecutive_failures >= self.config.failure_threshold.max(1) {
                    match source {
                        Source::Passive => TransitionReason::ThresholdReached,
                        Source::Probe => TransitionReason::ProbeFailed,
                    }
                } else if self.window_below_threshold(window) {
                    TransitionReason::WindowBelowThreshold
                } else {
                    return None;
                };
                if source == Source::Passive && !may_eject() {
                    return None;
                }
                let open_for = self.open(&mut inner, now);
                Some(self.opened(&mut inner, reason, now, open_for))
            }
            (BreakerState::HalfOpen, Signal::Healthy) => {
                inner.consecutive_failures = 0;
                inner.nominal_interval = self.config.recovery_interval;
                inner.trials.clear();
                let reason = match source {
                    Source::Passive => TransitionReason::TrialOk,
                    Source::Probe => TransitionReason::ProbeOk,
                };
                Some(self.transition(&mut inner, BreakerState::Closed, reason, now))
            }
            (BreakerState::HalfOpen, Signal::Failed) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                inner.trials.clear();
                let doubled = inner.nominal_interval.saturating_mul(2);
                inner.nominal_interval = doubled.min(self.config.max_recovery_interval);
                let reason = match source {
                    Source::Passive => TransitionReason::TrialFailed,
                    Source::Probe => TransitionReason::ProbeFailed,
                };
                let open_for = self.open(&mut inner, now);
                Some(self.opened(&mut inner, reason, now, open_for))
            }
            (BreakerState::Open, Signal::Healthy) if source == Source::Probe => {
                inner.consecutive_failures = 0;
                inner.nominal_interval = self.config.recovery_interval;
                Some(self.transition(
                    &mut inner,
                    BreakerState::Closed,
                    TransitionReason::ProbeOk,
                    now,
                ))
            }
            // A late outcome of an attempt admitted before the breaker
            // opened says nothing about the backend now.
            (BreakerState::Open, Signal::Healthy) => None,
            (BreakerState::Open, Signal::Failed) => {
                inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
                None
            }
        }
    }

    fn window_below_threshold(&self, window: Option<(f64, u64)>) -> bool {
        match (self.config.window_threshold, window) {
            (Some(threshold), Some((rate, volume))) => {
                volume >= self.config.window_min_volume && rate < threshold
            }
            _ => false,
        }
    }

    /// Sets the open deadline from the nominal interval plus jitter.
    fn open(&self, inner: &mut Inner, now: Instant) -> Duration {
        let jitter = self.config.jitter.clamp(0.0, 1.0);
        let factor = if jitter > 0.0 {
            1.0 + inner.rng.random_range(-jitter..=jitter)
        } else {
            1.0
        };
        let open_for = inner.nominal_interval.mul_f64(factor);
        inner.open_until = now + open_for;
        open_for
    }

    fn opened(
        &self,
        inner: &mut Inner,
        reason: TransitionReason,
        now: Instant,
        open_for: Duration,
    ) -> TransitionEvent {
        let mut event = self.transition(inner, BreakerState::Open, reason, now);
        event.open_for = Some(open_for);
        if let Some(last) = inner.history.back_mut() {
            last.open_for = Some(open_for);
        }
        event
    }

    /// Forces a state (operator action); `Open` uses the current interval.
    pub fn force(&self, to: BreakerState, now: Instant) -> Option<TransitionEvent> {
        let mut inner = self.lock();
        if inner.state == to {
            return None;
        }
        inner.trials.clear();
        if to == BreakerState::Open {
            let open_for = self.open(&mut inner, now);
            return Some(self.opened(&mut inner, TransitionReason::Manual, now, open_for));
        }
        if to == BreakerState::Closed {
            inner.consecutive_failures = 0;
            inner.nominal_interval = self.config.recovery_interval;
        }
        Some(self.transition(&mut inner, to, TransitionReason::Manual, now))
    }

    fn transition(
        &self,
        inner: &mut Inner,
        to: BreakerState,
        reason: TransitionReason,
        now: Instant,
    ) -> TransitionEvent {
        let event = TransitionEvent {
            from: inner.state,
            to,
            reason,
            at: now,
            open_for: None,
        };
        inner.state = to;
        inner.changed_at = now;
        if inner.history.len() == HISTORY_LEN {
            inner.history.pop_front();
        }
        inner.history.push_back(event);
        self.fast_state.store(to.to_u8(), Ordering::Release);
        event
    }

    /// A copy for status pages.
    #[must_use]
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.lock();
        BreakerSnapshot {
            state: inner.state,
            consecutive_failures: inner.consecutive_failures,
            since_change: now.saturating_duration_since(inner.changed_at),
            reopens_in: (inner.state == BreakerState::Open)
                .then(|| inner.open_until.saturating_duration_since(now)),
            history: inner.history.iter().copied().collect(),
        }
    }

    /// Backend-fault failures in a row.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive_failures
    }
}

#[cfg(test)]
#[path = "breaker_tests.rs"]
mod tests;
