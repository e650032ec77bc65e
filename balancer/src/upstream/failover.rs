//! Failover: try the candidates selection ordered, one after another, until
//! one backend completes the handshake or the candidates (the failover
//! budget, `max_attempts`) run out. Runs entirely before the client gets any
//! reply, so a failure another backend can absorb is never seen. The first
//! candidate may have been opened early, while the client was still sending
//! its request ([`Early`]); it then counts as the first attempt.

use std::{sync::Arc, time::Instant};

use super::dial::{DialError, DialOptions, Dialled, Opened, open};
use crate::{
    backend::{Admission, Backend, Outcome, TransitionEvent},
    clock,
    select::Candidates,
    socks5::{ReplyCode, TargetAddr},
};

/// A backend that completed the handshake.
#[derive(Debug)]
pub struct Connected {
    pub backend: Arc<Backend>,
    /// Attempts spent, this one included.
    pub attempts: u32,
    /// The successful attempt: its stream, latency and bound address.
    pub dialled: Dialled,
}

/// Every attempt failed, or no candidate was admitted at all.
#[derive(Debug)]
pub struct Exhausted {
    pub attempts: u32,
    pub last: Option<DialError>,
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.last {
            Some(last) => write!(
                f,
                "all {} attempts failed, the last with: {last}",
                self.attempts
            ),
            None => f.write_str("no backend available"),
        }
    }
}

impl std::error::Error for Exhausted {}

impl Exhausted {
    /// The reply the client gets: the last backend's own reply code when it
    /// answered one, a general failure otherwise.
    pub fn reply_code(&self) -> ReplyCode {
        self.last
            .as_ref()
            .map_or(ReplyCode::GeneralFailure, |last| {
                ReplyCode::from(last.category().client_reply())
            })
    }
}

/// The first candidate, opened while the client was still sending its
/// request, and how that went.
#[derive(Debug)]
pub struct Early {
    pub backend: Arc<Backend>,
    pub opened: Result<Opened, DialError>,
}

/// The candidate worth opening before the target is known: the first one,
/// when its breaker admits it as an ordinary attempt. A half-open trial (or
/// panic mode) goes the ordinary way, after the client's request, because
/// a client that fails its own handshake would leave the trial's place
/// taken without an outcome.
pub fn first_to_open_early(candidates: &Candidates, now: Instant) -> Option<Arc<Backend>> {
    if candidates.panic() {
        return None;
    }
    let first = candidates.iter().next()?;
    (first.allows(now) == Admission::Allowed).then(|| first.clone())
}

/// Tries `candidates` in order, recording every attempt's outcome on its
/// backend. A candidate whose breaker no longer admits it (its half-open
/// trial was taken meanwhile) is skipped without costing an attempt.
/// `early` is the first candidate's attempt when it was already opened.
pub async fn connect_with_failover(
    candidates: &Candidates,
    target: Option<&TargetAddr>,
    options: &DialOptions,
    mut early: Option<Early>,
) -> Result<Connected, Exhausted> {
    let panic = candidates.panic();
    if panic {
        tracing::warn!("every backend's breaker is open: panic mode admits them as if half-open");
    }
    let mut attempts = 0;
    let mut last = None;
    for backend in candidates.iter() {
        let opened = match early.take_if(|early| Arc::ptr_eq(&early.backend, backend)) {
            // Admitted as an ordinary attempt, which claims nothing.
            Some(early) => early.opened,
            None => {
                let (admission, event) = backend.admit(clock::now(), panic);
                log_transition(backend, event);
                if !admission.admitted() {
                    continue;
                }
                open(backend, target.is_some(), options).await
            }
        };
        attempts += 1;
        let dialled = match opened {
            Ok(opened) => opened.request(target, options).await,
            Err(error) => Err(error),
        };
        match dialled {
            Ok(dialled) => {
                record_outcome(backend, Ok(dialled.latency));
                if attempts > 1 {
                    backend.record_retry();
                }
                return Ok(Connected {
                    backend: backend.clone(),
                    attempts,
                    dialled,
                });
            }
            Err(error) => {
                let category = error.category();
                tracing::debug!(backend = backend.name(), attempt = attempts, category = category.label(), %error, "attempt failed");
                record_outcome(backend, Err(category));
                let retry = category.retry_elsewhere();
                last = Some(error);
                if !retry {
                    break;
                }
            }
        }
    }
    Err(Exhausted { attempts, last })
}

/// Records one client outcome and logs the breaker transition it caused.
pub fn record_outcome(backend: &Backend, outcome: Outcome) {
    log_transition(backend, backend.record(outcome, clock::now()));
}

/// Logs a breaker state change: operators grep for these.
pub fn log_transition(backend: &Backend, event: Option<TransitionEvent>) {
    if let Some(event) = event {
        tracing::info!(
            backend = backend.name(),
            from = event.from.label(),
            to = event.to.label(),
            reason = ?event.reason,
            open_for = ?event.open_for,
            "breaker state changed"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, time::Duration};

    use rand::{SeedableRng, rngs::StdRng};

    use super::*;
    use crate::{
        backend::{BackendSpec, BreakerState, HealthConfig, Origin, Registry},
        select::{SelectionConfig, Selector},
    };

    fn first_early(registry: &Registry, now: Instant) -> (bool, Option<String>) {
        let candidates = Selector::new(SelectionConfig::default()).candidates(
            &registry.pool(),
            Ipv4Addr::LOCALHOST.into(),
            now,
            &mut StdRng::seed_from_u64(7),
        );
        let early = first_to_open_early(&candidates, now).map(|b| b.name().to_owned());
        (candidates.panic(), early)
    }

    #[test]
    fn only_an_ordinary_attempt_is_opened_before_the_target_is_known() {
        let now = clock::now();
        let registry = Registry::new(HealthConfig::default());
        registry
            .register(BackendSpec::new("b0", "b0.test:1080"), Origin::Config, now)
            .expect("registers");
        assert_eq!(first_early(&registry, now), (false, Some("b0".to_owned())));

        let backend = registry.pool().backends()[0].clone();
        backend.force(BreakerState::Open, now);
        // Still open: offered in panic mode only, which waits for the target.
        assert_eq!(first_early(&registry, now), (true, None));
        // Open long enough for a half-open trial: that waits too, so that a
        // client failing its handshake cannot leave the trial unresolved.
        let later = now + Duration::from_secs(3600);
        assert_eq!(backend.allows(later), Admission::Trial);
        assert_eq!(first_early(&registry, later), (false, None));
    }
}
