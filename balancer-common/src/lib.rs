//! The kernel/user contract of `balancer`: every map name, capacity and value
//! layout shared by the BPF programs (`balancer-ebpf`) and the daemon.
//!
//! Each type here is defined once, `#[repr(C)]` with explicit padding, derives
//! bytemuck `Pod`, and has a `const` size assertion so that a layout change
//! breaks the build instead of the data. No `bool`, `Option` or Rust `enum`
//! crosses the boundary: such values travel as `u32` with `TryFrom` on the user
//! side.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// Map names as they appear in the BPF object (and as pin file names).
pub mod map {
    /// `SOCKHASH`: socket cookie (`u64`) -> socket. The verdict redirects into it.
    pub const SOCKETS: &str = "SOCKETS";
    /// `HASH`: socket cookie (`u64`) -> [`crate::PeerInfo`].
    pub const PEERS: &str = "PEERS";
    /// `PERCPU_ARRAY`: backend slot (`u32`) -> [`crate::BackendBytes`].
    pub const BACKEND_BYTES: &str = "BACKEND_BYTES";
    /// `PERCPU_ARRAY`: [`crate::Global`] counters, index 0.
    pub const GLOBAL: &str = "GLOBAL";
    /// Every map above (tests check that the object defines each).
    pub const ALL: [&str; 4] = [SOCKETS, PEERS, BACKEND_BYTES, GLOBAL];
}

/// Program names as they appear in the BPF object.
pub mod prog {
    /// The `sk_skb/stream_verdict` program attached to [`crate::map::SOCKETS`].
    pub const VERDICT: &str = "balancer_verdict";
}

/// How many spliced sockets the maps hold (two per connection).
pub const MAX_SOCKETS: u32 = 1 << 17;
/// How many backend slots the per-backend counters have.
pub const MAX_BACKENDS: u32 = 16384;
/// A [`PeerInfo::slot`] outside the counters: the pair's bytes count in its
/// own [`PeerInfo`] and in [`Global`] only (the engine's self-test uses it).
pub const NO_SLOT: u32 = u32::MAX;

/// Direction of the bytes a socket receives, seen from the client.
pub mod direction {
    /// The socket is the client's: what it receives goes up to the backend.
    pub const UP: u32 = 0;
    /// The socket is the backend's: what it receives goes down to the client.
    pub const DOWN: u32 = 1;
}

/// Per-socket state, keyed by the socket's cookie in [`map::PEERS`].
///
/// User space writes `peer_cookie`, `slot`, `direction` and a starting
/// `last_activity_ns` before the socket joins [`map::SOCKETS`]; the verdict
/// program updates `redirected_bytes`, `dropped_bytes` and `last_activity_ns`
/// in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerInfo {
    /// Cookie of the socket this one's received bytes are redirected to.
    pub peer_cookie: u64,
    /// Bytes received on this socket that the verdict successfully redirected
    /// to the peer (used to know when the peer has sent them all).
    pub redirected_bytes: u64,
    /// `bpf_ktime_get_ns()` of the last redirected skb (idle timeout).
    pub last_activity_ns: u64,
    /// Backend slot whose counters this pair adds to.
    pub slot: u32,
    /// One of [`direction`].
    pub direction: u32,
    /// Bytes received on this socket whose redirect failed because the peer
    /// was not (or no longer) in [`map::SOCKETS`]: the kernel dropped them, so
    /// user space must reset the pair instead of ending it cleanly.
    pub dropped_bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PeerInfo>() == 40);

/// Bytes forwarded for one backend, per CPU (user space sums the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendBytes {
    /// Client -> backend.
    pub up: u64,
    /// Backend -> client.
    pub down: u64,
}
const _: () = assert!(core::mem::size_of::<BackendBytes>() == 16);

/// Global verdict counters, per CPU, at index 0 of [`map::GLOBAL`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Global {
    /// skbs redirected.
    pub redirected_skbs: u64,
    /// skbs whose socket had no [`PeerInfo`] entry (passed to the socket).
    pub no_peer: u64,
    /// skbs whose redirect failed (peer missing from the sockhash).
    pub redirect_failed: u64,
    /// Reserved; keeps the struct a multiple of 16 bytes.
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<Global>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: each type is #[repr(C)], has no padding (asserted by size above)
    // and is bytemuck::Pod, so every bit pattern is valid.
    unsafe impl aya::Pod for super::PeerInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::BackendBytes {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Global {}
}
