//! Daemon-wide counters: connections accepted, client handshakes failed by
//! reason, retries, and connections for which every attempt failed.
//! Per-backend figures live with the backend (`backend`) and the engines.
//!
//! - [`snapshot`]: the status `balancer stats` shows (pure data, serde).
//! - [`source`]: takes snapshots (shared by the status file and `/metrics`).
//! - [`status_file`]: that status as a file in the instance's run directory.
//! - [`writer`]: the daemon task that rewrites the file every second.
//! - [`shared`]: the memory every counter lives in (BPF maps or heap).
//! - [`identity`]: which backend owns which slot of the maps.
//! - [`pinned`]: a snapshot read straight from the pinned maps.
//!
//! The counters themselves sit in `DAEMON_STATS` (see [`shared`]): `stats`
//! reads them from the pins with no help from the daemon.

pub mod identity;
pub mod pinned;
pub mod shared;
pub mod snapshot;
pub mod source;
pub mod status_file;
pub mod writer;

use std::sync::atomic::{AtomicU64, Ordering};

use balancer_common::{CARRIERS, HANDSHAKE_REASONS, daemon_stat};

use shared::{DaemonWords, View};

use crate::{forward::EngineName, socks5::ServerError};

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

const _: () = assert!(HandshakeFailure::ALL.len() == HANDSHAKE_REASONS);

/// Daemon-wide counters; cheap atomics on the accept path, stored in the
/// `DAEMON_STATS` words (`balancer_common::daemon_stat` layout).
#[derive(Debug)]
pub struct Counters {
    pub accepted: View<AtomicU64>,
    pub retries: View<AtomicU64>,
    pub exhausted: View<AtomicU64>,
    words: DaemonWords,
}

impl Default for Counters {
    /// Counters in process memory of their own.
    fn default() -> Self {
        Self::in_words(View::alone())
    }
}

impl Counters {
    /// Counters stored in `words` (the mapped `DAEMON_STATS` under sockmap).
    #[must_use]
    pub fn in_words(words: DaemonWords) -> Self {
        let word = |index| match words.word(index) {
            Some(word) => word,
            // Indices are below `daemon_stat::USED`, asserted in
            // balancer-common to fit the block.
            None => unreachable!("daemon_stat index {index} outside the block"),
        };
        Self {
            accepted: word(daemon_stat::ACCEPTED),
            retries: word(daemon_stat::RETRIES),
            exhausted: word(daemon_stat::EXHAUSTED),
            words,
        }
    }

    pub fn handshake_failed(&self, failure: HandshakeFailure) {
        self.words[daemon_stat::HANDSHAKE_FAILED_0 + failure as usize]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn handshake_failures(&self, failure: HandshakeFailure) -> u64 {
        self.words[daemon_stat::HANDSHAKE_FAILED_0 + failure as usize].load(Ordering::Relaxed)
    }

    /// A pair ended; `carrier` took it to its end.
    pub fn pair_finished(&self, carrier: EngineName) {
        self.words[daemon_stat::PAIRS_FINISHED_0 + carrier.carrier_index()]
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn pairs_finished(&self, carrier: EngineName) -> u64 {
        self.words[daemon_stat::PAIRS_FINISHED_0 + carrier.carrier_index()].load(Ordering::Relaxed)
    }

    /// What the sockmap engine's queue checks wrote into these words (it
    /// shares them under sockmap).
    pub fn kernel_queue(&self) -> snapshot::KernelQueue {
        snapshot::KernelQueue::from_words(|index| self.words[index].load(Ordering::Relaxed))
    }

    /// Records who writes the block and since when (`unix_ms` is the wall
    /// time of the backend store's epoch), so a reader of the pins can tell
    /// a live daemon from stale pins and date the timestamps.
    pub fn stamp_owner(&self, pid: u32, unix_ms: u64) {
        self.words[daemon_stat::PID].store(u64::from(pid), Ordering::Relaxed);
        self.words[daemon_stat::EPOCH_UNIX_MS].store(unix_ms, Ordering::Relaxed);
    }

    /// Zeroes every counter (control API `reset`); owner and epoch stay.
    pub fn reset(&self) {
        for counter in [&*self.accepted, &*self.retries, &*self.exhausted]
            .into_iter()
            .chain(self.words[daemon_stat::HANDSHAKE_FAILED_0..][..HANDSHAKE_REASONS].iter())
            .chain(self.words[daemon_stat::PAIRS_FINISHED_0..][..CARRIERS].iter())
            .chain(self.words[daemon_stat::KERNEL_QUEUE_CHECKS..daemon_stat::USED].iter())
        {
            counter.store(0, Ordering::Relaxed);
        }
    }
}
