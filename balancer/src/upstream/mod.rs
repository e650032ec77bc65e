//! Ways out: connecting to a backend, the SOCKS5 handshake with it, and
//! failover across the ordered candidates selection produced. Every failed
//! attempt is classified once into a [`FailureCategory`] that drives the
//! breaker, the metric label, the failover decision and the client's reply.

mod dial;
mod failover;

pub use dial::{DialError, DialOptions, Dialled, Opened, dial, open};
pub use failover::{
    Connected, Early, Exhausted, connect_with_failover, first_to_open_early, log_transition,
    record_outcome,
};
