//! Waiting on a BPF ring buffer from tokio: the ring's map fd turns
//! readable when the program has written records. The program's log
//! ([`super::kernel_log`]) and the sockmap verdict's queue checks both read
//! their rings this way.

use std::{io, os::fd::AsRawFd};

use tokio::io::{Interest, unix::AsyncFd};

/// Calls `drain` on `ring` each time its fd turns readable, until the task
/// is aborted; `drain` takes every record there is. Returns the error that
/// stopped the watch (the fd could not be registered, or its readiness
/// failed).
pub async fn drain_when_readable<R: AsRawFd>(ring: R, mut drain: impl FnMut(&mut R)) -> io::Error {
    // SAFETY: the `AsyncFd` owns `ring`, whose map fd stays open and
    // unchanged until the `AsyncFd` drops; `as_raw_fd` always returns it.
    let registered = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) };
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(error) => return error.into_parts().1,
    };
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(error) => return error,
        };
        drain(ready.get_inner_mut());
        // Clears only the readiness seen before `drain` read: a record
        // written meanwhile raises it again.
        ready.clear_ready();
    }
}
