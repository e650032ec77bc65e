//! `balancer`: load-balances TCP connections over a pool of upstream SOCKS5
//! proxies and splices the two sockets of each connection in the kernel.
//!
//! # Layout
//!
//! In the order a connection travels:
//!
//! - [`config`]: the YAML file, validated before anything binds or loads.
//! - [`socks5`]: the SOCKS5 codec (sans-I/O, exact) and its async drivers.
//! - [`backend`]: the backend registry, outcome window, latency, breaker.
//! - [`select`]: filters and strategies that order candidate backends.
//! - [`forward`]: the engines that move bytes once both sockets are up.
//! - [`bpf`]: the BPF object (the only module that imports aya).
//! - [`sys`]: the only module with `libc` and `unsafe`.
//! - [`iptables`]: the rules for `redirect`/`tproxy` listeners.
//! - [`clock`]: the only place that reads time.
//! - [`cli`], [`cmd`]: the command line and one module per subcommand.

pub mod backend;
pub mod bpf;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod forward;
pub mod iptables;
pub mod select;
pub mod socks5;
pub mod sys;
