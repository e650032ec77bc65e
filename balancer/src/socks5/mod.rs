//! SOCKS5 (RFC 1928) with username/password authentication (RFC 1929):
//! the wire format and the two handshakes the daemon runs, as the server its
//! clients talk to ([`server`]) and as a client of its backends ([`client`]).
//!
//! # Why hand-written
//!
//! Right after the handshake the kernel (sockmap) or the splice engine takes
//! over both sockets, so every byte the handshake code read beyond the last
//! handshake byte would be data that user space has to forward by itself,
//! before the splice, in order. General-purpose SOCKS crates read through
//! buffered readers and may read ahead. Here the sans-I/O [`codec`] says how
//! many bytes it needs at least, and the drivers `read_exact` exactly that
//! many: greeting (2 bytes, then `NMETHODS`), RFC 1929 request (2, then
//! `ULEN + 1`, then `PLEN`), request and reply (4-byte header, then the
//! length the address type implies). A client's first payload or a target's
//! banner that arrives in the same segment as the handshake stays in the
//! socket.
//!
//! The codec never does I/O and never resolves names: a domain target is
//! passed to the backend as it came.

pub mod client;
pub mod codec;
mod io;
pub mod server;

pub use client::{ClientError, connect};
pub use codec::{
    AuthRequest, AuthResponse, CodecError, Command, Credentials, Decoded, Greeting, Method,
    MethodSelection, Password, Reply, ReplyCode, Request, TargetAddr,
};
pub use server::{ServerAuth, ServerError, accept, reply};
