//! The settings sections of the file (`balancing`, `health`, `forwarding`,
//! `transparent`, `metrics`), each with its one `Default` impl; fields say
//! their default and meaning.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
};

use serde::Deserialize;

use super::{DurationValue, Host, HostPort, Secret};
use crate::forward::{EngineKind, ForwardOptions, relay::RelayBudget};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    LowestLatency,
    WeightedRandom,
    ConsistentHash,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::LowestLatency => "lowest_latency",
            Self::WeightedRandom => "weighted_random",
            Self::ConsistentHash => "consistent_hash",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BalancingConfig {
    /// `least_connections`.
    pub strategy: Strategy,
    /// Backends tried per client connection before giving up; at least 1.
    /// Default 3.
    pub max_attempts: u32,
    /// Only the best N healthy backends take traffic; 0 (default) = all.
    pub max_active_backends: usize,
    /// Skip backends whose latency exceeds this (ms); 0 (default) = no filter.
    pub max_latency_ms: u64,
    pub sticky_sessions: StickyConfig,
}

impl Default for BalancingConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::LeastConnections,
            max_attempts: 3,
            max_active_backends: 0,
            max_latency_ms: 0,
            sticky_sessions: StickyConfig::default(),
        }
    }
}

/// Keeps a client IP on the same backend while it stays healthy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StickyConfig {
    /// Default false.
    pub enabled: bool,
    /// How long a client's choice is remembered after its last connection.
    /// Default 10m; must be non-zero when enabled.
    pub ttl: DurationValue,
}

impl Default for StickyConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ttl: DurationValue::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Consecutive failures that open a backend's circuit; at least 1.
    /// Default 3.
    pub circuit_threshold: u32,
    /// First wait before an open circuit lets a trial through; doubles up to
    /// `max_recovery_interval`. Default 10s.
    pub recovery_interval: DurationValue,
    /// Default 60s; must be >= `recovery_interval`.
    pub max_recovery_interval: DurationValue,
    /// Outcomes remembered per backend for success rate and latency; at
    /// least 1. Default 10.
    pub metrics_window_size: usize,
    /// Count real connections' outcomes, not only probes. Default true.
    pub passive_monitoring: bool,
    /// When every circuit is open, try all backends instead of failing every
    /// client. Default true.
    pub panic_mode: bool,
    /// Backends registered through the control API that saw no connection
    /// for this long (and have none open) are removed. Default 10m.
    pub runtime_idle_timeout: DurationValue,
    pub probe: ProbeConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            circuit_threshold: 3,
            recovery_interval: DurationValue::from_secs(10),
            max_recovery_interval: DurationValue::from_secs(60),
            metrics_window_size: 10,
            passive_monitoring: true,
            panic_mode: true,
            runtime_idle_timeout: DurationValue::from_secs(600),
            probe: ProbeConfig::default(),
        }
    }
}

/// Active health checks: a CONNECT through each backend to `target`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Default true.
    pub enabled: bool,
    /// Where probes ask each backend to connect. Default `example.com:80`.
    pub target: HostPort,
    /// Between probes of one backend; non-zero. Default 30s.
    pub interval: DurationValue,
    /// Per probe; non-zero and at most `interval`. Default 5s.
    pub timeout: DurationValue,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            target: HostPort {
                host: Host::Name("example.com".to_owned()),
                port: 80,
            },
            interval: DurationValue::from_secs(30),
            timeout: DurationValue::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Auto,
    Sockmap,
    Splice,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Sockmap => "sockmap",
            Self::Splice => "splice",
        })
    }
}

impl From<Engine> for EngineKind {
    fn from(engine: Engine) -> Self {
        match engine {
            Engine::Auto => Self::Auto,
            Engine::Sockmap => Self::Sockmap,
            Engine::Splice => Self::Splice,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardingConfig {
    /// `auto`: sockmap if it loads and passes its self-test, else splice.
    pub engine: Engine,
    /// TCP connect to a backend; non-zero. Default 5s.
    pub connect_timeout: DurationValue,
    /// The whole SOCKS5 exchange with a backend (and with a client);
    /// non-zero. Default 10s.
    pub handshake_timeout: DurationValue,
    /// Close a connection idle this long in both directions; 0s (default) =
    /// never.
    pub idle_timeout: DurationValue,
    /// SO_SNDBUF/SO_RCVBUF in bytes for both sockets; 0 = kernel
    /// autotuning. Default 16 MiB: a spliced socket is never read by user
    /// space, so receive autotuning never grows its window, and the sockmap
    /// engine measured 0.8 GB/s with autotuning, 2.2 with 8 MiB and 2.5 with
    /// 16 MiB or more (`cargo xtask bench --only engine`). A limit, not an
    /// allocation: memory is used only by bytes in flight.
    pub socket_buffer: usize,
    /// SO_MARK on backend connections, 0 (default) = none. The iptables
    /// rules skip packets with this mark, so it is required by `redirect`
    /// listeners: the daemon's own connections pass nat OUTPUT too, and
    /// backends given by host name cannot be excluded by address.
    pub mark: u32,
    /// On SIGTERM/SIGINT, how long open connections may go on before the
    /// daemon closes them; new ones are refused from the signal on.
    /// Default 10s; 0s closes at once.
    pub drain_timeout: DurationValue,
    /// The BPF verdict's own log lines (aya-log) in the daemon's log under
    /// target `balancer::bpf::kernel`: redirect failures at warn, skbs
    /// without a peer at debug, every skb at trace (filter with
    /// `RUST_LOG`). Default false: the verifier then removes every log
    /// statement, so the verdict pays nothing. For debugging only: at trace
    /// level each forwarded skb costs a ring buffer record.
    pub bpf_log: bool,
    /// User space copies each connection's first bytes and hands the
    /// connection to the engine once it has moved this many bytes (both
    /// directions together) or lived `offload_after_time`, whichever comes
    /// first. Connections that end sooner never pay the engine's per-pair
    /// set-up (sockmap: 14 `bpf` calls and ~30 other syscalls; splice: two
    /// pipes). Default 64 KiB; 0 = the engine from the first byte.
    pub offload_after_bytes: u64,
    /// See `offload_after_bytes`. Default 100ms; 0s = the engine from the
    /// first byte.
    pub offload_after_time: DurationValue,
    /// Under sockmap: reset a connection once more than this many bytes of
    /// one direction wait in the kernel for a receiver slower than its
    /// sender. The kernel sets no limit there and the engine cannot hold the
    /// sender back (see `forward::sockmap`), so this trades the connection
    /// for the host's memory. 0 (default) = never; else at least
    /// [`MIN_KERNEL_QUEUE_LIMIT`]. The warning at that size comes either way.
    pub kernel_queue_limit: u64,
}

/// The smallest non-zero [`ForwardingConfig::kernel_queue_limit`]: the
/// engine's warning mark; bulk transfers to a receiver that keeps up queue a
/// few MiB there in passing.
pub const MIN_KERNEL_QUEUE_LIMIT: u64 = crate::forward::sockmap::QUEUE_WARN_ABOVE;

/// See [`ForwardingConfig::socket_buffer`].
pub const DEFAULT_SOCKET_BUFFER: usize = 16 << 20;
/// See [`ForwardingConfig::offload_after_bytes`].
pub const DEFAULT_OFFLOAD_AFTER_BYTES: u64 = 64 << 10;

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            engine: Engine::Auto,
            connect_timeout: DurationValue::from_secs(5),
            handshake_timeout: DurationValue::from_secs(10),
            idle_timeout: DurationValue::from_secs(0),
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            mark: 0,
            drain_timeout: DurationValue::from_secs(10),
            bpf_log: false,
            offload_after_bytes: DEFAULT_OFFLOAD_AFTER_BYTES,
            offload_after_time: DurationValue::from_millis(100),
            kernel_queue_limit: 0,
        }
    }
}

impl ForwardingConfig {
    /// The engine tuning this section describes; `pin_dir` comes from the
    /// instance name (see [`super::Config::pin_dir`]).
    #[must_use]
    pub fn forward_options(&self, pin_dir: Option<PathBuf>) -> ForwardOptions {
        ForwardOptions {
            socket_buffer: (self.socket_buffer != 0).then_some(self.socket_buffer),
            idle_timeout: self.idle_timeout.non_zero(),
            pin_dir,
            bpf_log: self.bpf_log,
            relay: self
                .offload_after_time
                .non_zero()
                .filter(|_| self.offload_after_bytes != 0)
                .map(|time| RelayBudget {
                    bytes: self.offload_after_bytes,
                    time,
                }),
            kernel_queue_limit: (self.kernel_queue_limit != 0).then_some(self.kernel_queue_limit),
        }
    }
}

/// The rules that bring traffic to `redirect` and `tproxy` listeners, and
/// the policy routing of `tproxy` (see [`crate::iptables`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransparentConfig {
    /// The daemon applies the rules `balancer iptables apply` would when it
    /// starts, and removes them when it stops (also after a failed start),
    /// so traffic is diverted only while a listener takes it. Default
    /// false: rules are the operator's (`balancer iptables apply|remove`).
    pub manage_rules: bool,
    /// Firewall mark TPROXY puts on diverted packets, routed by `ip rule`
    /// to `route_table`; non-zero and different from `forwarding.mark`.
    /// Default 1.
    pub tproxy_mark: u32,
    /// Routing table holding `local default dev lo`; 1-252 (the kernel
    /// reserves 253-255). Default 100.
    pub route_table: u32,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        Self {
            manage_rules: false,
            tproxy_mark: 1,
            route_table: 100,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` and the stats API; `null` disables.
    /// Default `127.0.0.1:9898`.
    pub listen: Option<SocketAddr>,
    /// Bearer token the control API (`POST`/`DELETE` under `/api/v1`)
    /// requires. Default none: control calls are refused.
    pub token: Option<Secret>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9898))),
            token: None,
        }
    }
}
