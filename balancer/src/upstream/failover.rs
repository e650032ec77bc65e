//! Failover: pull candidates in order until one backend completes the
//! handshake or `max_attempts` are spent. Runs entirely before the client
//! gets any reply, so a failure another backend can absorb is never seen.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpStream;

use super::dial::{DialError, DialOptions, dial};
use crate::{
    backend::{Backend, Outcome},
    clock,
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

/// Every attempt failed, or there was no candidate at all.
#[derive(Debug, thiserror::Error)]
#[error("{}", match .last { Some(last) => format!("all {} attempts failed, the last with: {last}", .attempts), None => "no backend available".to_owned() })]
pub struct Exhausted {
    pub attempts: u32,
    pub last: Option<DialError>,
}

impl Exhausted {
    /// The reply the client gets: the backend's own reply code when the last
    /// backend answered one, a general failure otherwise.
    pub fn reply_code(&self) -> ReplyCode {
        match &self.last {
            Some(DialError::Handshake {
                source: crate::socks5::ClientError::Reply(code),
                ..
            }) => *code,
            Some(DialError::Connect { .. } | DialError::ConnectTimeout { .. }) => {
                ReplyCode::GeneralFailure
            }
            _ => ReplyCode::GeneralFailure,
        }
    }
}

/// Tries `candidates` in order, at most `max_attempts` of them, recording
/// every attempt's outcome on its backend.
pub async fn connect_with_failover(
    candidates: impl IntoIterator<Item = Arc<Backend>>,
    max_attempts: u32,
    target: Option<&TargetAddr>,
    options: &DialOptions,
) -> Result<Connected, Exhausted> {
    let mut attempts = 0;
    let mut last = None;
    for backend in candidates.into_iter().take(max_attempts as usize) {
        attempts += 1;
        match dial(&backend, target, options).await {
            Ok((stream, latency)) => {
                record_outcome(&backend, Ok(latency));
                if attempts > 1 {
                    tracing::debug!(backend = %backend.name, attempts, "connected after failover");
                }
                return Ok(Connected {
                    backend,
                    stream,
                    attempts,
                    latency,
                });
            }
            Err(error) => {
                let category = error.category();
                tracing::debug!(backend = %backend.name, attempt = attempts, category = category.label(), %error, "attempt failed");
                record_outcome(&backend, Err(category));
                last = Some(error);
            }
        }
    }
    Err(Exhausted { attempts, last })
}

/// Records one outcome and logs the breaker transition it caused, if any.
pub fn record_outcome(backend: &Backend, outcome: Outcome) {
    if let Some(event) = backend.record(outcome, clock::now()) {
        tracing::info!(backend = %backend.name, from = ?event.from, to = ?event.to, reason = ?event.reason, "breaker state changed");
    }
}
