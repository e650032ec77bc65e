//! The only module with `libc` calls and `unsafe`: thin, typed wrappers over
//! the socket options, ioctls and syscalls the engines and listeners need
//! that `std`, `socket2` and `nix` do not offer. Every `unsafe` block says why
//! it is sound.

pub mod limits;
pub mod memory;
pub mod socket;
pub mod splice;
