//! When a backend needs an active probe. Pure: takes the breaker state and
//! timestamps, never reads the clock.
//!
//! Backends that carried real traffic recently are judged by that traffic
//! alone (passive monitoring); probes go to backends whose health is unknown,
//! whose breaker is half-open (the probe is the trial), or that were idle.

use std::time::{Duration, Instant};

use crate::backend::BreakerState;

/// Why a probe is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeReason {
    /// No outcome recorded yet.
    Unknown,
    /// The breaker's recovery interval elapsed: the probe is its trial.
    HalfOpen,
    /// Closed, but no real traffic in the last interval to judge it by.
    Idle,
}

/// What the schedule needs to know of one backend.
#[derive(Clone, Copy, Debug)]
pub struct ProbeView {
    pub state: BreakerState,
    /// Last attempt by a real client connection.
    pub last_traffic: Option<Instant>,
    /// Last probe started.
    pub last_probe: Option<Instant>,
    /// A probe of this backend is running.
    pub in_flight: bool,
}

/// Decides whether to probe now.
pub fn probe_due(
    view: ProbeView,
    now: Instant,
    interval: Duration,
    passive: bool,
) -> Option<ProbeReason> {
    if view.in_flight {
        return None;
    }
    let elapsed = |at: Option<Instant>| at.map(|at| now.saturating_duration_since(at));
    let probed_within_interval = elapsed(view.last_probe).is_some_and(|e| e < interval);
    match view.state {
        // Open waits for its recovery interval; the breaker turns half-open.
        BreakerState::Open => None,
        // The trial must not wait a whole interval: recovery is scheduled by
        // the breaker's own backoff.
        BreakerState::HalfOpen => Some(ProbeReason::HalfOpen),
        BreakerState::Unknown => (!probed_within_interval).then_some(ProbeReason::Unknown),
        BreakerState::Closed => {
            let recent_traffic = elapsed(view.last_traffic).is_some_and(|e| e < interval);
            if (passive && recent_traffic) || probed_within_interval {
                None
            } else {
                Some(ProbeReason::Idle)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock as _;

    const INTERVAL: Duration = Duration::from_secs(30);

    fn view(state: BreakerState) -> ProbeView {
        ProbeView {
            state,
            last_traffic: None,
            last_probe: None,
            in_flight: false,
        }
    }

    #[test]
    fn an_unknown_backend_is_probed_at_once_then_once_per_interval() {
        let now = crate::clock::ManualClock::new().now();
        assert_eq!(
            probe_due(view(BreakerState::Unknown), now, INTERVAL, true),
            Some(ProbeReason::Unknown)
        );
        let probed = ProbeView {
            last_probe: Some(now),
            ..view(BreakerState::Unknown)
        };
        assert_eq!(
            probe_due(probed, now + Duration::from_secs(29), INTERVAL, true),
            None
        );
        assert_eq!(
            probe_due(probed, now + INTERVAL, INTERVAL, true),
            Some(ProbeReason::Unknown)
        );
    }

    #[test]
    fn a_closed_backend_with_recent_traffic_is_not_probed_in_passive_mode() {
        let now = crate::clock::ManualClock::new().now();
        let busy = ProbeView {
            last_traffic: Some(now),
            ..view(BreakerState::Closed)
        };
        assert_eq!(
            probe_due(busy, now + Duration::from_secs(1), INTERVAL, true),
            None
        );
        assert_eq!(
            probe_due(busy, now + Duration::from_secs(1), INTERVAL, false),
            Some(ProbeReason::Idle)
        );
        assert_eq!(
            probe_due(busy, now + INTERVAL, INTERVAL, true),
            Some(ProbeReason::Idle)
        );
    }

    #[test]
    fn an_open_backend_waits_and_a_half_open_one_is_probed_immediately() {
        let now = crate::clock::ManualClock::new().now();
        let just_probed = Some(now);
        assert_eq!(
            probe_due(view(BreakerState::Open), now, INTERVAL, true),
            None
        );
        let half = ProbeView {
            last_probe: just_probed,
            ..view(BreakerState::HalfOpen)
        };
        assert_eq!(
            probe_due(half, now, INTERVAL, true),
            Some(ProbeReason::HalfOpen)
        );
    }

    #[test]
    fn a_backend_with_a_probe_in_flight_is_not_probed_twice() {
        let now = crate::clock::ManualClock::new().now();
        let busy = ProbeView {
            in_flight: true,
            ..view(BreakerState::HalfOpen)
        };
        assert_eq!(probe_due(busy, now, INTERVAL, true), None);
    }
}
