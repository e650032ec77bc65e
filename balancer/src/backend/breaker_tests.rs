//! Breaker transitions and backoff, with hand-driven instants.

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
