//! Daemon-wide counters: connections accepted, client handshakes failed by
//! reason, retries, and connections for which every attempt failed.
//! Per-backend figures live with the backend (`backend`) and the engines.
//!
//! - [`snapshot`]: the status `balancer stats` shows (pure data, serde).
//! - [`source`]: takes snapshots (shared by the status file and `/metrics`).
//! - [`status_file`]: that status as a file in the instance's run directory.
//! - [`writer`]: the daemon task that rewrites the file every second.

pub mod snapshot;
pub mod source;
pub mod status_file;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::socks5::ServerError;

/// Why a client's side of the handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within `handshake_timeout` (including a silent client).
    Timeout,
    /// Bytes that are not SOCKS5 (bad version, bad address type, ...).
    Malformed,
    /// No method the listener accepts.
    NoAcceptableMethod,
    /// Wrong username or password.
    AuthFailed,
    /// BIND or UDP ASSOCIATE (answered with 0x07).
    CommandNotSupported,
    /// The client closed or reset mid-handshake.
    ClientClosed,
    /// `SO_ORIGINAL_DST` unavailable on a redirected connection.
    NoOriginalDestination,
}

impl HandshakeFailure {
    pub const ALL: [Self; 7] = [
        Self::Timeout,
        Self::Malformed,
        Self::NoAcceptableMethod,
        Self::AuthFailed,
        Self::CommandNotSupported,
        Self::ClientClosed,
        Self::NoOriginalDestination,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Malformed => "malformed",
            Self::NoAcceptableMethod => "no_acceptable_method",
            Self::AuthFailed => "auth_failed",
            Self::CommandNotSupported => "command_not_supported",
            Self::ClientClosed => "client_closed",
            Self::NoOriginalDestination => "no_original_destination",
        }
    }
}

impl From<&ServerError> for HandshakeFailure {
    fn from(error: &ServerError) -> Self {
        match error {
            ServerError::Io(_) => Self::ClientClosed,
            ServerError::Codec(_) | ServerError::BadRequest(_) => Self::Malformed,
            ServerError::NoAcceptableMethod { .. } => Self::NoAcceptableMethod,
            ServerError::AuthFailed { .. } => Self::AuthFailed,
            ServerError::CommandNotSupported(_) => Self::CommandNotSupported,
        }
    }
}

/// Daemon-wide counters; cheap atomics on the accept path.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub retries: AtomicU64,
    pub exhausted: AtomicU64,
    handshake_failed: [AtomicU64; HandshakeFailure::ALL.len()],
}

impl Counters {
    pub fn handshake_failed(&self, failure: HandshakeFailure) {
        self.handshake_failed[failure as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_failures(&self, failure: HandshakeFailure) -> u64 {
        self.handshake_failed[failure as usize].load(Ordering::Relaxed)
    }

    /// Zeroes every counter (control API `reset`).
    pub fn reset(&self) {
        for counter in [&self.accepted, &self.retries, &self.exhausted]
            .into_iter()
            .chain(self.handshake_failed.iter())
        {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
