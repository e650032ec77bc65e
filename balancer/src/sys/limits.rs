//! The process's file descriptor limit: every forwarded connection holds two
//! sockets (plus two pipes with the splice engine), so the soft limit's
//! usual 1,024 would cap the daemon near 500 connections.

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The descriptor limits before and after [`raise_nofile`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NofileLimit {
    /// The soft limit the process started with.
    pub was: u64,
    /// The soft limit now (the hard limit, unless raising it failed).
    pub now: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, which needs no
/// privilege; the hard limit itself is the operator's (systemd's
/// `LimitNOFILE=`, or `ulimit -Hn`).
///
/// # Errors
/// The `getrlimit`/`setrlimit` error.
pub fn raise_nofile() -> nix::Result<NofileLimit> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(NofileLimit {
        was: soft,
        now: soft.max(hard),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let limit = raise_nofile().expect("rlimit calls");
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
        assert_eq!(soft, hard);
        assert_eq!(limit.now, hard);
        assert!(limit.was <= limit.now);
    }
}
