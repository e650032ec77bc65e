//! `splice(2)` and the pipes it moves pages through: a non-blocking pipe with
//! a tunable capacity, and the two moves the splice engine makes (socket into
//! pipe, pipe into socket). Thin typed wrappers over nix's safe calls; the
//! caller owns readiness (tokio) and accounting.

use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use nix::{
    errno::Errno,
    fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice},
    unistd::pipe2,
};

/// A non-blocking, close-on-exec pipe used as the kernel-side buffer between
/// two sockets.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    /// Opens a pipe and asks for `capacity` bytes (`F_SETPIPE_SZ`). The
    /// kernel rounds up to a power-of-two number of pages; when the request is
    /// refused (above `fs.pipe-max-size`, or the user is over
    /// `fs.pipe-user-pages-soft`) the pipe keeps the size it was given, which
    /// [`Pipe::capacity`] reports.
    pub fn new(capacity: usize) -> io::Result<Self> {
        let (read, write) = pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        let requested = i32::try_from(capacity).unwrap_or(i32::MAX);
        let granted = match fcntl(&write, FcntlArg::F_SETPIPE_SZ(requested)) {
            Ok(granted) => granted,
            // The pipe works at its default size; a smaller buffer only costs
            // throughput.
            Err(Errno::EPERM | Errno::EINVAL | Errno::EBUSY) => {
                fcntl(&write, FcntlArg::F_GETPIPE_SZ)?
            }
            Err(errno) => return Err(errno.into()),
        };
        Ok(Self {
            read,
            write,
            capacity: usize::try_from(granted).unwrap_or(0),
        })
    }

    /// Bytes the pipe can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Moves up to `len` bytes from the socket's receive queue into the pipe
    /// without copying them. `Ok(0)` is end of stream; `WouldBlock` means the
    /// socket has nothing queued (or the pipe is full).
    pub fn fill_from(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(socket, None, &self.write, None, len, flags())?)
    }

    /// Moves up to `len` bytes from the pipe into the socket's send queue.
    /// `WouldBlock` means the socket's send buffer is full.
    pub fn drain_into(&self, socket: impl AsFd, len: usize) -> io::Result<usize> {
        Ok(splice(&self.read, None, socket, None, len, flags())?)
    }
}

/// `SPLICE_F_MOVE` asks for page moves instead of copies where the kernel
/// can; `SPLICE_F_NONBLOCK` keeps the pipe end from blocking (the sockets are
/// already `O_NONBLOCK` under tokio).
fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[test]
    fn a_pipe_gets_at_least_the_default_capacity_and_honours_a_larger_request() {
        let small = Pipe::new(4096).expect("pipe");
        assert!(small.capacity() >= 4096);
        let large = Pipe::new(256 * 1024).expect("pipe");
        assert_eq!(large.capacity(), 256 * 1024);
    }

    #[test]
    fn bytes_move_from_one_socket_to_another_through_the_pipe_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (source, _) = listener.accept().expect("accept");
        let target = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (mut reader, _) = listener.accept().expect("accept");

        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&payload).expect("write");
        drop(writer);

        let pipe = Pipe::new(64 * 1024).expect("pipe");
        let mut moved = 0;
        for _ in 0..10_000 {
            let filled = pipe.fill_from(&source, pipe.capacity()).expect("fill");
            if filled == 0 {
                break;
            }
            let mut left = filled;
            while left > 0 {
                left -= pipe.drain_into(&target, left).expect("drain");
            }
            moved += filled;
        }
        drop(target);
        assert_eq!(moved, payload.len());
        let mut received = Vec::new();
        reader.read_to_end(&mut received).expect("read");
        assert_eq!(received, payload);
    }

    #[test]
    fn an_empty_non_blocking_socket_reports_would_block_not_end_of_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let _writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (source, _) = listener.accept().expect("accept");
        source.set_nonblocking(true).expect("nonblocking");
        let pipe = Pipe::new(64 * 1024).expect("pipe");
        let err = pipe.fill_from(&source, 1024).expect_err("nothing queued");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
