//! Socket options and ioctls that the sockmap engine needs on spliced TCP
//! sockets and that `std`/`socket2` do not offer: `SO_RCVLOWAT`, `SIOCINQ`,
//! `SIOCOUTQ`, and the byte counters of `TCP_INFO`. Plus safe re-exports of
//! the `socket2` calls the engine uses, so that callers need no raw fds.

use std::{
    io, mem,
    os::fd::{AsFd, AsRawFd},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use socket2::SockRef;

/// `SO_COOKIE`: the kernel's 64-bit id of the socket (the sockhash key).
pub fn cookie(fd: impl AsFd) -> io::Result<u64> {
    SockRef::from(&fd).cookie()
}

/// Sets `SO_RCVLOWAT`. For TCP the kernel caps the value at half the receive
/// buffer and, when lowering it, immediately re-evaluates readiness
/// (`tcp_set_rcvlowat` calls `tcp_data_ready`).
pub fn set_rcvlowat(fd: impl AsFd, bytes: i32) -> io::Result<()> {
    set_int(fd, libc::SOL_SOCKET, libc::SO_RCVLOWAT, bytes)
}

/// `SO_SNDBUF` and `SO_RCVBUF` (the kernel doubles them and stops autotuning).
///
/// The `FORCE` variants come first: plain `SO_RCVBUF` is silently capped at
/// `net.core.rmem_max` (208 KiB on a stock kernel), and a capped buffer is
/// slower than autotuning (see the engine benchmark). Without CAP_NET_ADMIN
/// the plain options are the fallback, capped as the host's limits say.
pub fn set_buffers(fd: impl AsFd, bytes: usize) -> io::Result<()> {
    // Privilege does not change while the daemon runs: after one EPERM, go
    // straight to the plain options instead of failing a syscall per socket.
    static FORCE_DENIED: AtomicBool = AtomicBool::new(false);
    let value = i32::try_from(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket buffer larger than 2 GiB",
        )
    })?;
    let fd = fd.as_fd();
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        if !FORCE_DENIED.load(Ordering::Relaxed) {
            match set_int(fd, libc::SOL_SOCKET, force, value) {
                Ok(()) => continue,
                Err(error) if error.raw_os_error() == Some(libc::EPERM) => {
                    FORCE_DENIED.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        set_int(fd, libc::SOL_SOCKET, plain, value)?;
    }
    Ok(())
}

/// `SIOCINQ`: bytes in the receive queue not yet consumed (by `recv` or, for
/// a spliced socket, by the verdict program).
pub fn inq(fd: impl AsFd) -> io::Result<u64> {
    ioctl_int(fd, libc::FIONREAD)
}

/// `SIOCOUTQ`: bytes written to the socket and not yet acknowledged.
pub fn outq(fd: impl AsFd) -> io::Result<u64> {
    ioctl_int(fd, libc::TIOCOUTQ)
}

/// The cumulative byte counters of `TCP_INFO` (Linux >= 4.1 for both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpBytes {
    /// `tcpi_bytes_acked`: bytes the peer acknowledged.
    pub acked: u64,
    /// `tcpi_bytes_received`: payload bytes received in order.
    pub received: u64,
}

/// Offsets of `tcpi_bytes_acked` and `tcpi_bytes_received` in the uapi
/// `struct tcp_info` (8 bytes of u8 fields, 24 u32, two u64 pacing rates).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

/// Reads the byte counters from `TCP_INFO`.
pub fn tcp_bytes(fd: impl AsFd) -> io::Result<TcpBytes> {
    let mut info = [0u8; 256];
    let mut len = libc::socklen_t::try_from(info.len()).map_err(io::Error::other)?;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the
    // call, and `len` is a valid in/out length.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let end = usize::try_from(len).map_err(io::Error::other)?;
    let field = |offset: usize| -> io::Result<u64> {
        info.get(offset..offset + 8)
            .filter(|_| offset + 8 <= end)
            .and_then(|bytes| bytes.try_into().ok())
            .map(u64::from_ne_bytes)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TCP_INFO too short for byte counters",
                )
            })
    };
    Ok(TcpBytes {
        acked: field(TCPI_BYTES_ACKED)?,
        received: field(TCPI_BYTES_RECEIVED)?,
    })
}

/// Bytes written to the socket since it was created (acknowledged plus still
/// queued), read so that concurrent ACKs cannot make it too large: the
/// result never exceeds the true count at the moment of the `SIOCOUTQ` read,
/// and `exact` says whether no ACK raced the reads (then it is the true
/// count).
pub fn bytes_written(fd: impl AsFd) -> io::Result<Written> {
    let fd = fd.as_fd();
    let before = tcp_bytes(fd)?.acked;
    let queued = outq(fd)?;
    let after = tcp_bytes(fd)?.acked;
    Ok(Written {
        bytes: before.saturating_add(queued),
        exact: before == after,
    })
}

/// See [`bytes_written`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Written {
    pub bytes: u64,
    pub exact: bool,
}

/// `SO_ERROR`: takes the pending socket error, if any.
pub fn take_error(fd: impl AsFd) -> io::Result<Option<io::Error>> {
    SockRef::from(&fd).take_error()
}

/// `SO_LINGER` 0: a later close sends RST and drops unsent data.
pub fn set_abortive_close(fd: impl AsFd) -> io::Result<()> {
    SockRef::from(&fd).set_linger(Some(Duration::ZERO))
}

/// `shutdown(SHUT_WR)`: sends FIN after the queued bytes.
pub fn shutdown_write(fd: impl AsFd) -> io::Result<()> {
    SockRef::from(&fd).shutdown(std::net::Shutdown::Write)
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock of the BPF helper
/// `bpf_ktime_get_ns`, so user space can compare its own time with the
/// `last_activity_ns` the verdict writes. (Lives here, beside the other
/// kernel interfaces of spliced sockets, because it needs `libc`.)
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail.
    let _rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    let secs = u64::try_from(now.tv_sec).unwrap_or_default();
    let nanos = u64::try_from(now.tv_nsec).unwrap_or_default();
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// An epoll instance owned by tokio's reactor, so that its readiness can be
/// awaited (the sockmap engine watches spliced sockets through it).
#[derive(Debug)]
pub struct RegisteredEpoll(nix::sys::epoll::Epoll);

impl RegisteredEpoll {
    /// The epoll itself, to add, delete and drain events.
    pub fn epoll(&self) -> &nix::sys::epoll::Epoll {
        &self.0
    }
}

impl AsRawFd for RegisteredEpoll {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.0.as_raw_fd()
    }
}

/// Creates an epoll instance and registers it with the current tokio runtime.
pub fn async_epoll() -> io::Result<tokio::io::unix::AsyncFd<RegisteredEpoll>> {
    let epoll = nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)?;
    // SAFETY: the `AsyncFd` owns the `Epoll`, whose `OwnedFd` stays open and
    // unchanged until the `AsyncFd` drops; `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register(RegisteredEpoll(epoll)) }.map_err(io::Error::from)
}

fn set_int(fd: impl AsFd, level: libc::c_int, name: libc::c_int, value: i32) -> io::Result<()> {
    let len = libc::socklen_t::try_from(mem::size_of::<i32>()).map_err(io::Error::other)?;
    // SAFETY: `value` is a readable int of `len` bytes for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn ioctl_int(fd: impl AsFd, request: libc::Ioctl) -> io::Result<u64> {
    let mut value: libc::c_int = 0;
    // SAFETY: both requests write one int through the pointer, which is valid
    // and writable for the whole call.
    let rc = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), request, &raw mut value) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    u64::try_from(value).map_err(io::Error::other)
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    fn loopback_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn queue_sizes_and_tcp_counters_follow_the_bytes_sent() {
        let (mut client, mut server) = loopback_pair();
        // tcpi_bytes_acked may or may not include the SYN depending on how
        // the handshake was acknowledged: only differences are meaningful,
        // which is how the sockmap engine uses it (a baseline at insertion).
        let baseline = bytes_written(&client).expect("written");
        assert!(baseline.exact && baseline.bytes <= 1);
        client.write_all(&[7u8; 1000]).expect("write");
        let deadline = crate::clock::now() + Duration::from_secs(5);
        while inq(&server).expect("inq") < 1000 {
            assert!(crate::clock::now() < deadline, "bytes never arrived");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(tcp_bytes(&server).expect("tcp_info").received, 1000);
        let mut buf = [0u8; 1000];
        server.read_exact(&mut buf).expect("read");
        assert_eq!(inq(&server).expect("inq"), 0);
        let written = bytes_written(&client).expect("written");
        assert_eq!(written.bytes - baseline.bytes, 1000);
        assert_eq!(outq(&server).expect("outq"), 0);
    }

    #[test]
    fn buffers_beyond_rmem_max_are_granted_with_cap_net_admin() {
        let (client, _server) = loopback_pair();
        let wanted = 64 << 20; // above any default net.core.rmem_max
        set_buffers(&client, wanted).expect("set buffers");
        let sock = SockRef::from(&client);
        let (snd, rcv) = (
            sock.send_buffer_size().expect("SO_SNDBUF"),
            sock.recv_buffer_size().expect("SO_RCVBUF"),
        );
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            // The kernel doubles what it was given, for its bookkeeping.
            assert_eq!((snd, rcv), (2 * wanted, 2 * wanted));
        } else {
            assert!(snd > 0 && rcv > 0);
        }
    }

    #[test]
    fn cookies_differ_between_sockets_and_are_stable() {
        let (client, server) = loopback_pair();
        let first = cookie(&client).expect("cookie");
        assert_eq!(first, cookie(&client).expect("cookie"));
        assert_ne!(first, cookie(&server).expect("cookie"));
    }

    #[test]
    fn rcvlowat_accepts_a_huge_value_and_one() {
        let (client, _server) = loopback_pair();
        set_rcvlowat(&client, i32::MAX).expect("huge");
        set_rcvlowat(&client, 1).expect("one");
    }
}
