//! `balancer_tests`: fixtures shared by every integration test and benchmark
//! of the workspace. Real sockets, real network namespaces, real Debian
//! binaries; every resource is owned by an RAII guard with a unique name whose
//! `Drop` removes it even when the test panics.
//!
//! # Layout
//!
//! - [`privilege`] — `require_root`, `require_command`, `raise_nofile_limit`:
//!   fail loudly (never skip) when the machine cannot run a test.
//! - [`wait`] — `eventually!` and `eventually_async!`, bounded polls.
//! - [`netns`] — [`NetNs`] (a throw-away network namespace; run code inside it)
//!   and [`Veth`] (a veth pair between two namespaces, addresses in the
//!   RFC 2544 benchmarking range 198.18.0.0/15, never routed anywhere).
//! - [`checksum`] — a seeded pseudo-random byte source and a sink, both
//!   returning length and SHA-256, so the two ends of a stream can be compared.
//! - [`topology`] — [`Topology`] (loopback, or client/server and proxy in two
//!   namespaces joined by veth) and [`PairSockets`], the four sockets of one
//!   proxied connection (`client <-> (accepted | connected) <-> server`) ready
//!   to hand to a forwarding `Engine`.
//! - [`microsocks`] — [`Microsocks`], Debian's `microsocks` on an ephemeral
//!   loopback port, killed on drop.
//! - [`daemon`] — [`daemon::balancer_binary`], the daemon binary the tests
//!   and benchmarks run (the shipped `release` build).
//! - [`bench`] — the comparison benchmark (`bench_compare`): topology,
//!   subjects, workloads, statistics, report and chart.

pub mod bench;
pub mod checksum;
pub mod daemon;
pub mod microsocks;
pub mod netns;
pub mod privilege;
pub mod topology;
pub mod wait;

pub use checksum::{Digest, RandomSource, sink, source};
pub use microsocks::Microsocks;
pub use netns::{NetNs, Veth};
pub use privilege::{raise_nofile_limit, require_command, require_root};
pub use topology::{PairSockets, Topology, TopologyKind};
