//! The one classification of a connection attempt: every failure is put in
//! a [`FailureCategory`] once, and that category alone drives the breaker,
//! the metric label, the failover decision and the client's reply code.

use std::time::Duration;

/// The result of one attempt through a backend: the connect plus handshake
/// latency on success, the category of failure otherwise.
pub type Outcome = Result<Duration, FailureCategory>;

/// Why an attempt through a backend failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCategory {
    /// The backend refused the TCP connection.
    ConnectRefused,
    /// The TCP connect to the backend did not finish in time.
    ConnectTimeout,
    /// The SOCKS5 handshake failed: garbage, EOF or reset, or it timed out.
    Handshake,
    /// The backend rejected our credentials or offered no method we accept.
    Auth,
    /// The backend answered the CONNECT with this non-zero SOCKS5 reply code.
    BackendReply(u8),
    /// The connection was reset after a successful handshake, before any byte.
    PostHandshake,
}

/// Every metric label a [`FailureCategory`] can produce, indexed by
/// [`FailureCategory::index`]; a bounded set so label cardinality stays fixed.
pub const FAILURE_LABELS: [&str; 14] = [
    "connect_refused",
    "connect_timeout",
    "handshake",
    "auth",
    "post_handshake",
    "reply_general_failure",
    "reply_not_allowed",
    "reply_network_unreachable",
    "reply_host_unreachable",
    "reply_connection_refused",
    "reply_ttl_expired",
    "reply_command_not_supported",
    "reply_address_type_not_supported",
    "reply_unknown",
];

/// SOCKS5 reply code "general SOCKS server failure" (RFC 1928).
const REPLY_GENERAL_FAILURE: u8 = 0x01;

impl FailureCategory {
    /// The metric label, one of [`FAILURE_LABELS`].
    #[must_use]
    pub fn label(&self) -> &'static str {
        FAILURE_LABELS[self.index()]
    }

    /// Position of [`Self::label`] in [`FAILURE_LABELS`], for counter arrays.
    #[must_use]
    pub fn index(&self) -> usize {
        match self {
            Self::ConnectRefused => 0,
            Self::ConnectTimeout => 1,
            Self::Handshake => 2,
            Self::Auth => 3,
            Self::PostHandshake => 4,
            Self::BackendReply(code @ 1..=8) => 4 + usize::from(*code),
            Self::BackendReply(_) => 13,
        }
    }

    /// Whether the attempt should fail over to the next candidate: every
    /// failure before the client's reply does, so the client sees an error
    /// only when no backend could take it. After the handshake the reply is
    /// written: never fail over.
    ///
    /// Every failure also counts against the backend's breaker, reply codes
    /// included: a proxy answering "refused" or "unreachable" for targets
    /// other proxies reach is the broken part. A target down for every proxy
    /// fails them all; the last-backend guard and panic mode keep the pool
    /// serving, and probes of `probe.target` close the breakers again.
    #[must_use]
    pub fn retry_elsewhere(&self) -> bool {
        !matches!(self, Self::PostHandshake)
    }

    /// The SOCKS5 reply code to send the client when this is the last
    /// failure: a backend's own reply code is passed through (it describes
    /// the target), anything about the proxy itself is "general failure".
    #[must_use]
    pub fn client_reply(&self) -> u8 {
        match self {
            Self::BackendReply(code @ 0x01..=0x08) => *code,
            _ => REPLY_GENERAL_FAILURE,
        }
    }
}

impl std::fmt::Display for FailureCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BackendReply(code) => write!(f, "{} (0x{code:02x})", self.label()),
            _ => f.write_str(self.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_category_has_a_distinct_label_in_the_label_table() {
        let mut seen = std::collections::BTreeSet::new();
        let mut all = vec![
            FailureCategory::ConnectRefused,
            FailureCategory::ConnectTimeout,
            FailureCategory::Handshake,
            FailureCategory::Auth,
            FailureCategory::PostHandshake,
        ];
        all.extend((1..=9).map(FailureCategory::BackendReply));
        for category in all {
            assert_eq!(FAILURE_LABELS[category.index()], category.label());
            seen.insert(category.label());
        }
        assert_eq!(seen.len(), FAILURE_LABELS.len());
    }

    #[test]
    fn unknown_reply_codes_share_one_label() {
        assert_eq!(FailureCategory::BackendReply(0x09).label(), "reply_unknown");
        assert_eq!(FailureCategory::BackendReply(0xff).label(), "reply_unknown");
    }

    #[test]
    fn a_backend_reply_fails_over_and_is_passed_to_the_client_when_last() {
        let category = FailureCategory::BackendReply(0x05);
        assert!(category.retry_elsewhere());
        assert_eq!(category.client_reply(), 0x05);
    }

    #[test]
    fn proxy_failures_fail_over_and_answer_general_failure() {
        for category in [
            FailureCategory::ConnectRefused,
            FailureCategory::Handshake,
            FailureCategory::Auth,
        ] {
            assert!(category.retry_elsewhere());
            assert_eq!(category.client_reply(), 0x01);
        }
        assert!(!FailureCategory::PostHandshake.retry_elsewhere());
    }
}
