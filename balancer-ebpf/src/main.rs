//! The in-kernel half of the sockmap engine (Linux >= 5.15 for
//! `stream_verdict` without a parser and `tcp_read_skb`).
//!
//! Owns the verdict program and the maps named in `balancer_common::map`.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::sk_action,
    macros::{map, stream_verdict},
    maps::{HashMap, PerCpuArray, SockHash},
    programs::SkBuffContext,
};
use balancer_common::{BackendBytes, Global, MAX_BACKENDS, MAX_SOCKETS, PeerInfo, direction};

#[map(name = "SOCKETS")]
static SOCKETS: SockHash<u64> = SockHash::with_max_entries(MAX_SOCKETS, 0);

#[map(name = "PEERS")]
static PEERS: HashMap<u64, PeerInfo> = HashMap::with_max_entries(MAX_SOCKETS, 0);

#[map(name = "BACKEND_BYTES")]
static BACKEND_BYTES: PerCpuArray<BackendBytes> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "GLOBAL")]
static GLOBAL: PerCpuArray<Global> = PerCpuArray::with_max_entries(1, 0);

#[stream_verdict]
pub fn balancer_verdict(ctx: SkBuffContext) -> u32 {
    match try_verdict(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

fn try_verdict(_ctx: &SkBuffContext) -> Result<u32, u32> {
    Ok(sk_action::SK_PASS)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
