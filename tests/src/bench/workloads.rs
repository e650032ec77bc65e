//! The client side of every measurement, run on threads inside the client
//! namespace: bulk transfers, 64 B ping-pong, connection rate and idle
//! connections for RSS. Each one checks what came back (CRC-32 of bulk
//! data, echoed bytes compared) and fails the run on any mismatch. Every
//! loop is bounded by its count and every socket has a 30 s timeout. On
//! loopback every connection binds the client's own source address first
//! (see [`topology`](crate::bench::topology)), so transparent rules can tell
//! it from the backends' connections to the target.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Barrier,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, anyhow, ensure};
use nix::sys::socket::{setsockopt, sockopt};

use crate::{
    bench::{
        cpu::{GroupCpu, SystemCpu},
        subjects::Access,
        target::{CHUNK, DOWNLOAD, ECHO, Pattern, UPLOAD},
    },
    netns::NetNs,
};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the workloads run: the client's namespace, and the source address
/// its connections bind (`None`: the kernel's choice).
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    pub ns: &'a NetNs,
    pub source: Option<Ipv4Addr>,
}

/// Opens a connection to `target` through `access`, from `source` if given:
/// a plain connect, or a SOCKS5 no-auth CONNECT whose success reply is read
/// exactly.
pub fn connect(source: Option<Ipv4Addr>, access: Access, target: SocketAddr) -> Result<TcpStream> {
    let proxy = match access {
        Access::Plain => target,
        Access::Socks5(proxy) => proxy,
    };
    let mut stream = match source {
        None => TcpStream::connect_timeout(&proxy, IO_TIMEOUT),
        Some(source) => connect_from(source, proxy),
    }
    .with_context(|| format!("connect to {proxy}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    stream.set_nodelay(true)?;
    if let Access::Socks5(_) = access {
        socks5_connect(&mut stream, target).with_context(|| format!("SOCKS5 via {proxy}"))?;
    }
    Ok(stream)
}

/// Connects from `source` with the port left to `connect`
/// (`IP_BIND_ADDRESS_NO_PORT`): a plain `bind(source:0)` would reserve a
/// port per socket, TIME_WAIT included, and run out within one connection
/// rate phase, whereas `connect` may share a port between destinations.
fn connect_from(source: Ipv4Addr, peer: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    setsockopt(&socket, sockopt::IpBindAddressNoPort, &true)?;
    socket.bind(&SocketAddr::from((source, 0)).into())?;
    socket.connect_timeout(&peer.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}

fn socks5_connect(stream: &mut TcpStream, target: SocketAddr) -> Result<()> {
    let SocketAddr::V4(target) = target else {
        return Err(anyhow!("IPv4 targets only"));
    };
    // Greeting, then the request once the method is chosen, as curl does.
    let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
    hello.extend_from_slice(&target.ip().octets());
    hello.extend_from_slice(&target.port().to_be_bytes());
    stream.write_all(&hello[..3])?;
    let mut choice = [0; 2];
    stream.read_exact(&mut choice)?;
    ensure!(choice == [5, 0], "method reply {choice:?}");
    stream.write_all(&hello[3..])?;
    let mut head = [0; 4];
    stream.read_exact(&mut head)?;
    ensure!(head[0] == 5 && head[1] == 0, "CONNECT reply {head:?}");
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut len = [0; 1];
            stream.read_exact(&mut len)?;
            usize::from(len[0]) + 2
        }
        other => return Err(anyhow!("reply address type {other}")),
    };
    let mut addr = vec![0; rest];
    stream.read_exact(&mut addr)?;
    Ok(())
}

/// Direction of a bulk transfer, seen from the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

/// What a measured phase cost: wall time and CPU, system-wide and of the
/// daemon's process group.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    pub seconds: f64,
    pub system: SystemCpu,
    pub daemon: GroupCpu,
}

/// Snapshots taken at the start of a phase.
struct Meter {
    began: Instant,
    system: SystemCpu,
    daemon: Option<(i32, GroupCpu)>,
}

impl Meter {
    fn start(daemon: Option<i32>) -> Result<Self> {
        let daemon = daemon
            .map(|pid| GroupCpu::read(pid).map(|cpu| (pid, cpu)))
            .transpose()?;
        Ok(Self {
            began: Instant::now(),
            system: SystemCpu::read()?,
            daemon,
        })
    }

    fn stop(self) -> Result<Cost> {
        let seconds = self.began.elapsed().as_secs_f64();
        let system = SystemCpu::read()? - self.system;
        let daemon = match self.daemon {
            Some((pid, before)) => GroupCpu::read(pid)? - before,
            None => GroupCpu::default(),
        };
        Ok(Cost {
            seconds,
            system,
            daemon,
        })
    }
}

/// Moves `total` bytes over `streams` parallel connections in `direction`,
/// every stream's CRC checked. The clock runs from the moment every stream
/// is connected until the last CRC is in.
pub fn bulk(
    client: Client<'_>,
    access: Access,
    target: SocketAddr,
    direction: Direction,
    streams: usize,
    total: u64,
    daemon: Option<i32>,
) -> Result<Cost> {
    let per_stream = total / streams as u64;
    let source = client.source;
    client.ns.run(move || -> Result<Cost> {
        let barrier = Barrier::new(streams + 1);
        thread::scope(|scope| {
            let workers: Vec<_> = (0..streams)
                .map(|i| {
                    let barrier = &barrier;
                    scope.spawn(move || -> Result<()> {
                        let stream = connect(source, access, target);
                        barrier.wait();
                        let mut stream = stream?;
                        match direction {
                            Direction::Up => upload(&mut stream, per_stream, i as u64),
                            Direction::Down => download(&mut stream, per_stream),
                        }
                    })
                })
                .collect();
            let meter = Meter::start(daemon);
            barrier.wait();
            let meter = meter?;
            for worker in workers {
                worker
                    .join()
                    .map_err(|_| anyhow!("bulk stream panicked"))??;
            }
            meter.stop()
        })
    })?
}

fn upload(stream: &mut TcpStream, len: u64, seed: u64) -> Result<()> {
    let pattern = Pattern::new(seed);
    let mut header = vec![UPLOAD];
    header.extend_from_slice(&len.to_be_bytes());
    stream.write_all(&header)?;
    let mut crc = crc32fast::Hasher::new();
    let (mut left, mut index) = (len, 0u64);
    while left > 0 {
        let chunk = pattern.chunk(index, usize::try_from(left).unwrap_or(CHUNK));
        crc.update(chunk);
        stream.write_all(chunk)?;
        left -= chunk.len() as u64;
        index += 1;
    }
    let mut theirs = [0; 4];
    stream.read_exact(&mut theirs)?;
    let ours = crc.finalize();
    ensure!(
        u32::from_be_bytes(theirs) == ours,
        "upload of {len} bytes: target CRC {:08x}, sent {ours:08x}",
        u32::from_be_bytes(theirs)
    );
    Ok(())
}

fn download(stream: &mut TcpStream, len: u64) -> Result<()> {
    let mut header = vec![DOWNLOAD];
    header.extend_from_slice(&len.to_be_bytes());
    stream.write_all(&header)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(CHUNK).min(CHUNK);
        let n = stream.read(&mut buf[..want])?;
        ensure!(n > 0, "download: EOF with {left} of {len} bytes missing");
        crc.update(&buf[..n]);
        left -= n as u64;
    }
    let mut theirs = [0; 4];
    stream.read_exact(&mut theirs)?;
    let ours = crc.finalize();
    ensure!(
        u32::from_be_bytes(theirs) == ours,
        "download of {len} bytes: target CRC {:08x}, received {ours:08x}",
        u32::from_be_bytes(theirs)
    );
    Ok(())
}

/// Round trips of one ping-pong phase, in microseconds.
#[derive(Debug)]
pub struct RoundTrips {
    /// Through the subject.
    pub subject: Vec<f64>,
    /// Through the baseline, in blocks alternating with the subject's (empty
    /// when none was asked for).
    pub baseline: Vec<f64>,
}

/// Round trips of a block before the ping-pong switches connection: long
/// enough that the switch itself (the other connection's first echo after
/// a pause) is a small part of the block, short enough that both
/// connections see the same minutes of the machine.
const PING_PONG_BLOCK: usize = 200;

/// `rounds` 64-byte echoes through `access` after `warmup` unrecorded ones;
/// `after_warmup` runs between the two (to start a trace of the measured
/// rounds only). With a `baseline`, a second connection through it is held
/// open too and gets as many rounds, the two taking turns in blocks of
/// [`PING_PONG_BLOCK`]: what the subject adds is then measured against the
/// baseline of the same seconds, not of a phase minutes earlier.
pub fn ping_pong(
    client: Client<'_>,
    (access, baseline): (Access, Option<Access>),
    target: SocketAddr,
    (warmup, rounds): (usize, usize),
    after_warmup: impl FnOnce() -> Result<()> + Send,
) -> Result<RoundTrips> {
    let source = client.source;
    client.ns.run(move || -> Result<RoundTrips> {
        let mut subject = Echo::open(source, access, target)?;
        let mut other = baseline
            .map(|baseline| Echo::open(source, baseline, target))
            .transpose()?;
        subject.rounds(warmup, None)?;
        if let Some(other) = &mut other {
            other.rounds(warmup, None)?;
        }
        after_warmup()?;
        let mut times = RoundTrips {
            subject: Vec::with_capacity(rounds),
            baseline: Vec::with_capacity(if other.is_some() { rounds } else { 0 }),
        };
        let mut left = rounds;
        while left > 0 {
            let block = left.min(PING_PONG_BLOCK);
            subject.rounds(block, Some(&mut times.subject))?;
            if let Some(other) = &mut other {
                other.rounds(block, Some(&mut times.baseline))?;
            }
            left -= block;
        }
        Ok(times)
    })?
}

/// One ping-pong connection and the count of its echoes so far.
struct Echo {
    stream: TcpStream,
    sent: usize,
}

impl Echo {
    fn open(source: Option<Ipv4Addr>, access: Access, target: SocketAddr) -> Result<Self> {
        let mut stream = connect(source, access, target)?;
        stream.write_all(&[ECHO])?;
        Ok(Self { stream, sent: 0 })
    }

    /// `count` echoes, each timed into `times` if given, each checked.
    fn rounds(&mut self, count: usize, mut times: Option<&mut Vec<f64>>) -> Result<()> {
        let mut back = [0u8; 64];
        for _ in 0..count {
            let i = self.sent;
            self.sent += 1;
            let message = [(i % 251) as u8; 64];
            let began = Instant::now();
            self.stream.write_all(&message)?;
            self.stream.read_exact(&mut back)?;
            let took = began.elapsed();
            ensure!(back == message, "echo {i} came back altered");
            if let Some(times) = times.as_deref_mut() {
                times.push(took.as_secs_f64() * 1e6);
            }
        }
        Ok(())
    }
}

/// Bytes the client sends in the connection-rate exchange, its op byte
/// included; the target echoes all but that byte.
///
/// Not one byte more: microsocks relays through a 1 KiB buffer on sockets
/// without `TCP_NODELAY`, so a 1,025-byte message leaves it as 1,024 + 1
/// and Nagle holds the last byte until the receiver's delayed ACK, 40 ms
/// later. With 1,025 bytes every echo through microsocks alone stalled
/// 43 ms (50 of 50, loopback) and one client at a time made 295 conn/s
/// through it (veth), so the rate measured those stalls rather than the
/// proxies; with 1,024 no echo stalled (0 of 50) and it made 4,911 conn/s.
pub const EXCHANGE: usize = 1024;

/// Result of [`connection_rate`].
#[derive(Debug)]
pub struct Rate {
    pub per_second: f64,
    /// Connect (+ SOCKS5 handshake) until the stream is usable, µs.
    pub setup_us: Vec<f64>,
    /// CPU of the proxy's process group (`daemon`) over the whole phase.
    pub daemon: GroupCpu,
    /// CPU of the whole machine over the whole phase.
    pub system: SystemCpu,
}

/// `total` connections at `concurrency`: connect (+ SOCKS5 CONNECT), send
/// 1 KiB, read its echo, compare, close. `daemon`: the process group whose
/// CPU the phase costs.
pub fn connection_rate(
    client: Client<'_>,
    access: Access,
    target: SocketAddr,
    concurrency: usize,
    total: usize,
    daemon: Option<i32>,
) -> Result<Rate> {
    let source = client.source;
    client.ns.run(move || -> Result<Rate> {
        let next = AtomicUsize::new(0);
        let meter = Meter::start(daemon)?;
        let began = Instant::now();
        let setup_us = thread::scope(|scope| -> Result<Vec<f64>> {
            let workers: Vec<_> = (0..concurrency)
                .map(|_| {
                    let next = &next;
                    scope.spawn(move || -> Result<Vec<f64>> {
                        let mut times = Vec::new();
                        let mut payload = vec![ECHO];
                        payload.extend((0..EXCHANGE - 1).map(|i| (i % 253) as u8));
                        let mut back = vec![0u8; EXCHANGE - 1];
                        while next.fetch_add(1, Ordering::Relaxed) < total {
                            let started = Instant::now();
                            let mut stream = connect(source, access, target)?;
                            times.push(started.elapsed().as_secs_f64() * 1e6);
                            stream.write_all(&payload)?;
                            stream.read_exact(&mut back)?;
                            ensure!(back == payload[1..], "1 KiB exchange came back altered");
                        }
                        Ok(times)
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(total);
            for worker in workers {
                all.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow!("connection worker panicked"))??,
                );
            }
            Ok(all)
        })?;
        let seconds = began.elapsed().as_secs_f64();
        let cost = meter.stop()?;
        Ok(Rate {
            per_second: setup_us.len() as f64 / seconds,
            setup_us,
            daemon: cost.daemon,
            system: cost.system,
        })
    })?
}

/// Resident memory of the daemon, MiB: before, and with `count` idle
/// proxied connections open (every 100th checked with a 64 B echo first).
#[derive(Debug)]
pub struct Rss {
    pub idle_mib: f64,
    pub loaded_mib: f64,
}

pub fn rss_with_idle_connections(
    client: Client<'_>,
    access: Access,
    target: SocketAddr,
    count: usize,
    pid: i32,
) -> Result<Rss> {
    let idle_mib = crate::bench::cpu::rss_mib(pid)?;
    let source = client.source;
    let streams = client.ns.run(move || -> Result<Vec<TcpStream>> {
        let threads = 8;
        thread::scope(|scope| -> Result<Vec<TcpStream>> {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    scope.spawn(move || -> Result<Vec<TcpStream>> {
                        let mut mine = Vec::new();
                        for i in (t..count).step_by(threads) {
                            let mut stream = connect(source, access, target)
                                .with_context(|| format!("idle connection {i}"))?;
                            stream.write_all(&[ECHO])?;
                            if i % 100 == 0 {
                                let message = [7u8; 64];
                                let mut back = [0u8; 64];
                                stream.write_all(&message)?;
                                stream.read_exact(&mut back)?;
                                ensure!(back == message, "echo on idle connection {i} altered");
                            }
                            mine.push(stream);
                        }
                        Ok(mine)
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(count);
            for worker in workers {
                all.extend(
                    worker
                        .join()
                        .map_err(|_| anyhow!("idle-connection worker panicked"))??,
                );
            }
            Ok(all)
        })
    })??;
    // Let the daemon finish its bookkeeping for the last connections.
    thread::sleep(Duration::from_millis(500));
    let loaded_mib = crate::bench::cpu::rss_mib(pid)?;
    drop(streams);
    Ok(Rss {
        idle_mib,
        loaded_mib,
    })
}
