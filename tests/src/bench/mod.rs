//! The comparison benchmark of issue 6 (`bench_compare`): `balancer` beside
//! no proxy, one SOCKS5 backend alone, HAProxy and redsocks, with the same
//! client workloads, on two topologies reported apart: four namespaces
//! joined by veth pairs, and one namespace where every hop is over `lo`.
//!
//! - [`cleanup`] — what a signal must undo; the signal thread.
//! - [`topology`] — veth (client / lb / backend / target namespaces and
//!   routes) or loopback (one namespace, an address of `lo` per role).
//! - [`process`] — child processes in a namespace, own group, raised nofile.
//! - [`target`] — the Rust target: CRC-checked upload/download, echo.
//! - [`subjects`] — what is compared and how each is started (configs).
//! - [`redirect`] — the transparent rows' REDIRECT rule, per topology, counted.
//! - [`workloads`] — bulk, ping-pong, connection rate, idle connections.
//! - [`cpu`] — `/proc/stat` and `/proc/<pid>/stat`, VmRSS.
//! - [`one_cpu`] — the run pinned to one CPU for the second ping-pong.
//! - [`stats`] — medians, spreads, per-run ratios (pure).
//! - [`report`] — Markdown, JSON and the targets.
//! - [`chart`] — the PNG of the main ratios (gnuplot).

pub mod chart;
pub mod cleanup;
pub mod cpu;
pub mod one_cpu;
pub mod process;
pub mod psock_trace;
pub mod redirect;
pub mod report;
pub mod stats;
pub mod subjects;
pub mod target;
pub mod topology;
pub mod workloads;
