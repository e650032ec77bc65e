//! Failover: try the candidates selection ordered, one after another, until
//! one backend completes the handshake or the candidates (the failover
//! budget, `max_attempts`) run out. Runs entirely before the client gets any
//! reply, so a failure another backend can absorb is never seen.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;

use super::dial::{DialError, DialOptions, dial};
use crate::{
    backend::{Backend, Outcome, TransitionEvent},
    clock,
    select::Candidates,
    socks5::{ReplyCode, TargetAddr},
};

/// A backend that completed the handshake.
#[derive(Debug)]
pub struct Connected {
    pub backend: Arc<Backend>,
    pub stream: TcpStream,
    /// Attempts spent, this one included.
    pub attempts: u32,
    /// Connect + handshake latency of the successful attempt.
    pub latency: Duration,
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

/// Tries `candidates` in order, recording every attempt's outcome on its
/// backend. A candidate whose breaker no longer admits it (its half-open
/// trial was taken meanwhile) is skipped without costing an attempt.
pub async fn connect_with_failover(
    candidates: &Candidates,
    target: Option<&TargetAddr>,
    options: &DialOptions,
) -> Result<Connected, Exhausted> {
    let panic = candidates.panic();
    if panic {
        tracing::warn!("every backend's breaker is open: panic mode admits them as if half-open");
    }
    let mut attempts = 0;
    let mut last = None;
    for backend in candidates.iter() {
        let (admission, event) = backend.admit(clock::now(), panic);
        log_transition(backend, event);
        if !admission.admitted() {
            continue;
        }
        attempts += 1;
        match dial(backend, target, options).await {
            Ok((stream, latency)) => {
                record_outcome(backend, Ok(latency));
                if attempts > 1 {
                    backend.record_retry();
                }
                return Ok(Connected {
                    backend: backend.clone(),
                    stream,
                    attempts,
                    latency,
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
