//! `balancer`: load-balances TCP connections over a pool of upstream SOCKS5
//! proxies and splices the two sockets of each connection in the kernel.
//!
//! # Layout
//!
//! In the order a connection travels:
//!
//! - [`config`]: the YAML file, validated before anything binds or loads.
//! - [`daemon`]: opens the engine, builds the registry, binds, drains.
//! - [`reload`]: what a SIGHUP changes live and what needs a restart.
//! - [`listener`]: ways in (socks5, passthrough, redirect, tproxy), accept loop.
//! - [`session`]: the path of one connection, and only that.
//! - [`socks5`]: the SOCKS5 codec (sans-I/O, exact) and its async drivers.
//! - [`select`]: filters and strategies that order candidate backends.
//! - [`upstream`]: connect, backend handshake, failover.
//! - [`backend`]: the backend registry, outcome window, latency, breaker.
//! - [`health`]: active probes and their schedule.
//! - [`forward`]: the engines that move bytes once both sockets are up.
//! - [`bpf`]: the BPF object (the only module that imports aya).
//! - [`sys`]: the only module with `libc` and `unsafe`.
//! - [`iptables`]: the rules for `redirect`/`tproxy` listeners.
//! - [`stats`]: daemon-wide counters and the status file `balancer stats` reads.
//! - [`api`]: HTTP on `metrics.listen`: `/metrics`, `/health`, read-only JSON.
//! - [`clock`]: the only place that reads time.
//! - [`cli`], [`cmd`]: the command line and one module per subcommand.

pub mod api;
pub mod backend;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod forward;
pub mod health;
pub mod iptables;
pub mod listener;
pub mod reload;
pub mod select;
pub mod session;
pub mod socks5;
pub mod stats;
pub mod sys;
pub mod upstream;
