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
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            ..BreakerConfig::default()
        }
    }

    fn fail(breaker: &Breaker, now: Instant) -> Option<TransitionEvent> {
        breaker.record(Signal::Failed, Source::Passive, None, now, || true)
    }

    fn ok(breaker: &Breaker, now: Instant) -> Option<TransitionEvent> {
        breaker.record(Signal::Healthy, Source::Passive, None, now, || true)
    }

    #[test]
    fn a_new_breaker_is_unknown_and_admits() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        assert_eq!(breaker.state(), BreakerState::Unknown);
        assert_eq!(breaker.allows(now), Admission::Allowed);
    }

    #[test]
    fn first_success_closes_an_unknown_breaker() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        let event = ok(&breaker, now).expect("transition");
        assert_eq!(
            (event.from, event.to, event.reason),
            (
                BreakerState::Unknown,
                BreakerState::Closed,
                TransitionReason::FirstSuccess
            )
        );
    }

    #[test]
    fn threshold_consecutive_failures_open_the_breaker_and_a_success_resets_the_count() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        assert!(fail(&breaker, now).is_none());
        assert!(fail(&breaker, now).is_none());
        assert!(ok(&breaker, now).is_some());
        assert!(fail(&breaker, now).is_none());
        assert!(fail(&breaker, now).is_none());
        let event = fail(&breaker, now).expect("opens on the third in a row");
        assert_eq!(event.to, BreakerState::Open);
        assert_eq!(event.reason, TransitionReason::ThresholdReached);
        assert_eq!(breaker.allows(now), Admission::Rejected);
    }

    #[test]
    fn a_low_window_success_rate_opens_with_enough_volume() {
        let now = crate::clock::now();
        let breaker = Breaker::new(
            BreakerConfig {
                failure_threshold: 100,
                window_threshold: Some(0.5),
                window_min_volume: 10,
                ..BreakerConfig::default()
            },
            now,
            1,
        );
        let record = |rate, volume| {
            breaker.record(
                Signal::Failed,
                Source::Passive,
                Some((rate, volume)),
                now,
                || true,
            )
        };
        assert!(record(0.2, 9).is_none(), "too little volume");
        assert!(record(0.6, 10).is_none(), "above the threshold");
        let event = record(0.4, 10).expect("opens");
        assert_eq!(event.reason, TransitionReason::WindowBelowThreshold);
    }

    #[test]
    fn the_pool_can_veto_ejecting_its_last_backend() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        for _ in 0..10 {
            let event = breaker.record(Signal::Failed, Source::Passive, None, now, || false);
            assert!(event.is_none());
        }
        assert_eq!(breaker.allows(now), Admission::Allowed);
        assert_eq!(breaker.consecutive_failures(), 10);
    }

    #[test]
    fn recovery_elapsed_admits_one_trial_and_a_successful_trial_closes() {
        let t0 = crate::clock::now();
        let breaker = Breaker::new(config(), t0, 1);
        (0..3).for_each(|_| {
            fail(&breaker, t0);
        });
        let t1 = t0 + Duration::from_secs(12);
        assert_eq!(breaker.allows(t1), Admission::Trial);
        let (admission, event) = breaker.admit(t1);
        assert_eq!(admission, Admission::Trial);
        let event = event.expect("turns half-open");
        assert_eq!(event.reason, TransitionReason::RecoveryElapsed);
        assert_eq!(
            breaker.allows(t1),
            Admission::Rejected,
            "one trial at a time"
        );
        assert_eq!(breaker.admit(t1).0, Admission::Rejected);
        let event = ok(&breaker, t1).expect("closes");
        assert_eq!(
            (event.from, event.to, event.reason),
            (
                BreakerState::HalfOpen,
                BreakerState::Closed,
                TransitionReason::TrialOk
            )
        );
    }

    #[test]
    fn half_open_admits_the_configured_number_of_trials() {
        let t0 = crate::clock::now();
        let breaker = Breaker::new(
            BreakerConfig {
                half_open_trials: 2,
                ..config()
            },
            t0,
            1,
        );
        (0..3).for_each(|_| {
            fail(&breaker, t0);
        });
        let t1 = t0 + Duration::from_secs(20);
        assert_eq!(breaker.admit(t1).0, Admission::Trial);
        assert_eq!(breaker.admit(t1).0, Admission::Trial);
        assert_eq!(breaker.admit(t1).0, Admission::Rejected);
        let later = t1 + config().trial_timeout;
        assert_eq!(
            breaker.admit(later).0,
            Admission::Trial,
            "lost trials expire"
        );
    }

    #[test]
    fn failed_trials_back_off_ten_twenty_forty_sixty_sixty_within_jitter() {
        let mut now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 7);
        let mut intervals = Vec::new();
        let first = (0..3).filter_map(|_| fail(&breaker, now)).next_back();
        intervals.push(first.and_then(|e| e.open_for).expect("opened"));
        for _ in 0..4 {
            let snapshot = breaker.snapshot(now);
            now += snapshot.reopens_in.expect("open");
            let (admission, _) = breaker.admit(now);
            assert_eq!(admission, Admission::Trial);
            let event = fail(&breaker, now).expect("re-opens");
            assert_eq!(event.reason, TransitionReason::TrialFailed);
            intervals.push(event.open_for.expect("open interval"));
        }
        let nominal = [10.0, 20.0, 40.0, 60.0, 60.0];
        for (got, want) in intervals.iter().zip(nominal) {
            let got = got.as_secs_f64();
            assert!(
                (want * 0.9..=want * 1.1).contains(&got),
                "{got} not within 10 % of {want}"
            );
        }
        assert!(
            intervals
                .windows(2)
                .any(|w| w[0].as_secs_f64() * 2.0 != w[1].as_secs_f64()),
            "jitter is applied"
        );
    }

    #[test]
    fn a_successful_trial_resets_the_backoff_to_the_base_interval() {
        let mut now = crate::clock::now();
        let breaker = Breaker::new(
            BreakerConfig {
                jitter: 0.0,
                ..config()
            },
            now,
            1,
        );
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        now += Duration::from_secs(10);
        breaker.admit(now);
        let reopened = fail(&breaker, now).and_then(|e| e.open_for);
        assert_eq!(reopened, Some(Duration::from_secs(20)));
        now += Duration::from_secs(20);
        breaker.admit(now);
        assert!(ok(&breaker, now).is_some());
        let again = (0..3).filter_map(|_| fail(&breaker, now)).next_back();
        assert_eq!(
            again.and_then(|e| e.open_for),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn open_admits_nothing_before_the_interval_and_ignores_late_successes() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        let soon = now + Duration::from_secs(5);
        assert_eq!(breaker.admit(soon).0, Admission::Rejected);
        assert!(ok(&breaker, soon).is_none());
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn a_probe_success_closes_an_open_breaker() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        (0..3).for_each(|_| {
            fail(&breaker, now);
        });
        let event = breaker
            .record(Signal::Healthy, Source::Probe, None, now, || true)
            .expect("closes");
        assert_eq!(event.reason, TransitionReason::ProbeOk);
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn history_keeps_the_last_eight_transitions() {
        let now = crate::clock::now();
        let breaker = Breaker::new(config(), now, 1);
        for _ in 0..6 {
            breaker.force(BreakerState::Open, now);
            breaker.force(BreakerState::Closed, now);
        }
        let history = breaker.snapshot(now).history;
        assert_eq!(history.len(), HISTORY_LEN);
        assert!(history.iter().all(|e| e.reason == TransitionReason::Manual));
        assert_eq!(history.last().map(|e| e.to), Some(BreakerState::Closed));
    }
}
