//! The target every path ends at: one tokio server inside the target
//! namespace that speaks a tiny protocol, chosen by the first byte the
//! client sends:
//!
//! - `U` + u64 length: the client uploads that many bytes; the server
//!   answers the CRC-32 of what it read (4 bytes, big endian).
//! - `D` + u64 length: the server sends that many pattern bytes, then their
//!   CRC-32, so the client checks what arrived without recomputing.
//! - `E`: echo everything until EOF (64 B ping-pong, 1 KiB exchanges, idle
//!   connections).
//!
//! Lengths are framed, so no path needs to propagate a half-close (microsocks
//! closes both sides at the first EOF). CRC-32 (crc32fast, PCLMUL) instead of
//! SHA-256 keeps the checksum's CPU small beside what is measured.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

use anyhow::{Context, Result};
use rand::{RngCore, SeedableRng, rngs::SmallRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_util::sync::CancellationToken;

use crate::{bench::process::Process, netns::NetNs};

pub const UPLOAD: u8 = b'U';
pub const DOWNLOAD: u8 = b'D';
pub const ECHO: u8 = b'E';
/// Largest single write of bulk data.
pub const CHUNK: usize = 256 * 1024;
const POOL: usize = 1 << 20;

/// Pseudo-random bytes served in chunks from shifting offsets of a 1 MiB
/// pool: not periodic at chunk size, so loss or reordering changes the CRC.
/// Clones share the pool: the server hands one to every connection, and
/// copying 1 MiB per accept was once the connection-rate bottleneck of every
/// row, `direct` included.
#[derive(Debug, Clone)]
pub struct Pattern {
    pool: Arc<[u8]>,
}

impl Pattern {
    pub fn new(seed: u64) -> Self {
        let mut pool = vec![0; POOL];
        SmallRng::seed_from_u64(seed).fill_bytes(&mut pool);
        Self { pool: pool.into() }
    }

    /// Chunk number `index` of a stream, at most `len` bytes.
    pub fn chunk(&self, index: u64, len: usize) -> &[u8] {
        let len = len.min(CHUNK);
        let span = (POOL - CHUNK) as u64;
        let start = (index.wrapping_mul(7919 * 4099) % span) as usize;
        &self.pool[start..start + len]
    }
}

/// The target server in its own process (this executable again, with
/// `--serve-target`), so its sockets do not count against the client's
/// `RLIMIT_NOFILE`. Dropping it kills the process.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    _process: Process,
}

/// The flag that turns the benchmark executable into the target server.
pub const SERVE_FLAG: &str = "--serve-target";

impl Target {
    /// Starts `current_exe --serve-target IP:PORT` inside `ns` and waits until
    /// it accepts.
    pub fn start(ns: &NetNs, ip: Ipv4Addr, port: u16, log_dir: &Path) -> Result<Self> {
        let addr = SocketAddr::from((ip, port));
        let exe = std::env::current_exe().context("path of this executable")?;
        let mut process = Process::spawn(
            ns,
            "target",
            &exe,
            &[SERVE_FLAG, &addr.to_string()],
            &[],
            log_dir,
        )?;
        process.wait_accepting(ns, addr)?;
        Ok(Self {
            addr,
            _process: process,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Runs the server on `addr` until the process is killed.
pub fn serve_forever(addr: SocketAddr) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("target runtime")?;
    runtime.block_on(async move {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(16384)?;
        socket.set_nonblocking(true)?;
        let listener = TcpListener::from_std(socket.into())?;
        accept_loop(listener, Pattern::new(0x5eed), CancellationToken::new()).await;
        Ok(())
    })
}

async fn accept_loop(listener: TcpListener, pattern: Pattern, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let pattern = pattern.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        // Errors are the client's to report: it checks every
                        // byte and CRC it gets back.
                        _ = serve(stream, &pattern) => {}
                    }
                });
            }
            // Out of file descriptors or similar: let closes catch up.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

async fn serve(mut stream: TcpStream, pattern: &Pattern) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let op = match stream.read_u8().await {
        Ok(op) => op,
        // Health probes and readiness checks connect and close.
        Err(_) => return Ok(()),
    };
    match op {
        UPLOAD => {
            let len = stream.read_u64().await?;
            let mut crc = crc32fast::Hasher::new();
            let mut buf = vec![0; CHUNK];
            let mut left = len;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                crc.update(&buf[..n]);
                left -= n as u64;
            }
            stream.write_u32(crc.finalize()).await?;
        }
        DOWNLOAD => {
            let len = stream.read_u64().await?;
            let mut crc = crc32fast::Hasher::new();
            let (mut left, mut index) = (len, 0u64);
            while left > 0 {
                let chunk = pattern.chunk(index, usize::try_from(left).unwrap_or(CHUNK));
                crc.update(chunk);
                stream.write_all(chunk).await?;
                left -= chunk.len() as u64;
                index += 1;
            }
            stream.write_u32(crc.finalize()).await?;
        }
        ECHO => {
            let mut buf = vec![0; 16 * 1024];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                stream.write_all(&buf[..n]).await?;
            }
        }
        _ => {}
    }
    // Let the client close first, so TIME_WAIT stays on its side.
    let mut rest = [0u8; 64];
    while stream.read(&mut rest).await? > 0 {}
    Ok(())
}
