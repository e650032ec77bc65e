//! The in-kernel half of the sockmap engine.
//!
//! Owns the `stream_verdict` program and the maps named in
//! `balancer_common::map`. Minimum kernel: Linux 5.15 (`stream_verdict`
//! without a stream parser reads skbs through `tcp_read_skb`/`read_sock`;
//! `bpf_get_socket_cookie` for `sk_skb` since 4.12 (in 5.15 certainly);
//! 64-bit atomic add on map values since 5.12 for the `BPF_FETCH` form LLVM
//! may emit). Verified on 6.18.
//!
//! Log lines (aya-log) say what the verdict did with an unusual skb, and at
//! trace level with every skb. The loader sets `AYA_LOG_LEVEL` to 0 unless
//! `forwarding.bpf_log` is on; the global is read-only, so the verifier
//! removes every log statement and the verdict pays nothing for them.
#![no_std]
#![no_main]
// `core::sync::atomic` has no read-modify-write ops for the BPF target; the
// intrinsic lowers to the BPF atomic add instruction.
#![expect(
    internal_features,
    reason = "atomic_xadd is the only 64-bit atomic add on bpfel"
)]
#![feature(core_intrinsics)]

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    EbpfContext as _,
    bindings::sk_action,
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    macros::{map, stream_verdict},
    maps::{Array, HashMap, PerCpuArray, RingBuf, SockHash},
    programs::SkBuffContext,
};
use aya_log_ebpf::{debug, trace, warn};
use balancer_common::{
    BPF_F_MMAPABLE, BackendBytes, BackendStats, DaemonStats, Global, MAX_BACKENDS, MAX_SOCKETS,
    PeerInfo, QUEUE_CHECK_SHIFT, QUEUE_CHECKS_BYTES, direction,
};

#[map(name = "SOCKETS")]
static SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKETS, 0);

// Where the verdict redirects: the same sockets, but with no program
// attached, so a socket is a destination before its own verdict runs.
#[map(name = "TARGETS")]
static TARGETS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKETS, 0);

#[map(name = "PEERS")]
static PEERS: HashMap<u64, PeerInfo> = HashMap::with_max_entries(MAX_SOCKETS, 0);

#[map(name = "BACKEND_BYTES")]
static BACKEND_BYTES: PerCpuArray<BackendBytes> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "GLOBAL")]
static GLOBAL: PerCpuArray<Global> = PerCpuArray::with_max_entries(1, 0);

// The daemon's own counters: the program never touches them, the object
// only creates them so that they are pinned beside the kernel's counters and
// `balancer stats` reads one place. User space maps them (BPF_F_MMAPABLE).
#[map(name = "BACKEND_STATS")]
static BACKEND_STATS: Array<BackendStats> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);

#[map(name = "DAEMON_STATS")]
static DAEMON_STATS: Array<DaemonStats> = Array::with_max_entries(1, BPF_F_MMAPABLE);

#[map(name = "QUEUE_CHECKS")]
static QUEUE_CHECKS: RingBuf = RingBuf::with_byte_size(QUEUE_CHECKS_BYTES, 0);

/// Redirects every skb received on a spliced socket to its peer's egress.
#[stream_verdict]
pub fn balancer_verdict(ctx: SkBuffContext) -> u32 {
    match try_verdict(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_verdict(ctx: &SkBuffContext) -> Result<u32, u32> {
    // SAFETY: the helper only reads the socket behind the skb the kernel
    // handed to this program.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(peer) = PEERS.get_ptr_mut(cookie) else {
        debug!(
            ctx,
            "socket {}: no peer entry, skb passed to the socket", cookie
        );
        count_global(|global| global.no_peer = global.no_peer.wrapping_add(1));
        return Ok(sk_action::SK_PASS);
    };
    let len = u64::from(ctx.len());
    if len == 0 {
        // A pure FIN arrives as a 0-byte skb. Redirected, the peer's psock
        // worker sends 0 bytes, takes that for a hard error and breaks the
        // peer with EPIPE (sk_psock_backlog); passed, it can land in the same
        // worker queue. Dropping it loses nothing: the FIN was already
        // processed, and user space propagates it with shutdown().
        trace!(ctx, "socket {}: 0-byte skb (FIN) dropped", cookie);
        return Ok(sk_action::SK_DROP);
    }
    // SAFETY: `peer` points into the PEERS value of this cookie; the kernel
    // keeps it alive for the duration of the program (RCU).
    let (peer_cookie, slot, dir) =
        unsafe { ((*peer).peer_cookie, (*peer).slot, (*peer).direction) };
    let verdict = TARGETS.redirect_skb(ctx, peer_cookie, 0);
    let Ok(verdict) = u32::try_from(verdict) else {
        return Err(sk_action::SK_DROP);
    };
    if verdict != sk_action::SK_PASS {
        warn!(
            ctx,
            "socket {}: redirect of {} bytes to socket {} failed", cookie, len, peer_cookie
        );
        // SAFETY: as above; the field is only ever updated atomically.
        atomic_add(unsafe { &raw mut (*peer).dropped_bytes }, len);
        count_global(|global| global.redirect_failed = global.redirect_failed.wrapping_add(1));
        return Err(verdict);
    }
    trace!(
        ctx,
        "socket {}: {} bytes redirected to socket {}", cookie, len, peer_cookie
    );
    // A plain read, then the add: the add's fetch form needs a newer BPF ISA
    // than `generic`. Only this socket's verdict adds here, under its
    // socket's lock; were two to race, a check would come a step late or
    // twice, either harmless.
    // SAFETY: as above.
    let before = unsafe { core::ptr::read_volatile(&raw const (*peer).redirected_bytes) };
    // SAFETY: as above.
    atomic_add(unsafe { &raw mut (*peer).redirected_bytes }, len);
    if before >> QUEUE_CHECK_SHIFT != before.wrapping_add(len) >> QUEUE_CHECK_SHIFT
        && QUEUE_CHECKS.output::<u64>(cookie, 0).is_err()
    {
        count_global(|global| global.queue_checks_lost = global.queue_checks_lost.wrapping_add(1));
    }
    // SAFETY: as above; a racing writer can only store another timestamp.
    unsafe { (*peer).last_activity_ns = bpf_ktime_get_ns() };
    if let Some(bytes) = BACKEND_BYTES.get_ptr_mut(slot) {
        // SAFETY: a per-CPU value of this CPU; the program runs with
        // preemption disabled, so nobody else writes it meanwhile.
        unsafe {
            if dir == direction::UP {
                (*bytes).up = (*bytes).up.wrapping_add(len);
                (*bytes).up_skbs = (*bytes).up_skbs.wrapping_add(1);
            } else {
                (*bytes).down = (*bytes).down.wrapping_add(len);
                (*bytes).down_skbs = (*bytes).down_skbs.wrapping_add(1);
            }
        }
    }
    count_global(|global| global.redirected_skbs = global.redirected_skbs.wrapping_add(1));
    Ok(verdict)
}

/// Adds to a `u64` in a shared (not per-CPU) map value, which several CPUs
/// may update at once.
#[inline(always)]
fn atomic_add(target: *mut u64, value: u64) {
    // SAFETY: `target` is an aligned u64 inside a live map value; every
    // concurrent writer uses atomics too.
    let _previous: u64 =
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(target, value) };
}

#[inline(always)]
fn count_global(update: impl FnOnce(&mut Global)) {
    if let Some(global) = GLOBAL.get_ptr_mut(0) {
        // SAFETY: this CPU's value; preemption is off while the program runs.
        update(unsafe { &mut *global });
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
